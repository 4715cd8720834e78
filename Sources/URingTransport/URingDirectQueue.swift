#if canImport(Glibc)
import Glibc
#endif
import CURing
import MemWallCore
import Transport

/// The zero-allocation fast path of the io_uring transport: one thread posts
/// prepared single-descriptor transfers into numbered slots of its own ring
/// and reaps `(slot, result)` completions, the way fio drives a ring.
///
/// ``URingTransport/post(_:)`` builds a ``TransferRequest`` per post (status
/// per descriptor, async waiters, cancellation, locks shared with a
/// completion thread). That is the right contract for a caller with a few
/// large transfers; for millions of 4 KiB I/Os its per-I/O objects and locks
/// cost as much as the I/O itself. Here the caller owns `depth` slots instead:
/// a slot's state is preallocated and indexed by the CQE's `user_data`, the
/// ring is used by one thread only (so nothing is locked), and SQEs go to the
/// kernel together with the wait for completions (`io_uring_submit_and_wait`:
/// one system call per batch).
///
/// What the transport's contract guarantees still holds: descriptors are
/// prepared (bounds, O_DIRECT alignment) by ``URingTransport/prepare(_:_:)``;
/// short transfers are resumed and EAGAIN/EINTR retried before a slot
/// completes; every CQE result passes through the transport's
/// ``SyscallFunnel``; each completion feeds the transport's cost estimate; and
/// no buffer is released while the kernel may write it — a slot keeps its
/// ``PreparedTransfer`` until its CQE, the queue marks its regions in use for
/// its whole life (so the transport refuses to deregister them), and `deinit`
/// waits for every I/O in flight before the ring goes away.
///
/// Not `Sendable`: exactly one thread drives a queue. Use several queues for
/// several threads.
public final class URingDirectQueue {
    /// What one slot reported.
    public struct Completion: Sendable {
        /// The slot the transfer was posted into (free again now).
        public var slot: Int
        /// Bytes moved (the whole descriptor), or the error.
        public var result: Result<Int, MemWallError>
        /// Monotonic nanoseconds from the post to the CQE that finished it.
        public var nanoseconds: UInt64
    }

    private struct Slot {
        var prepared: PreparedTransfer?
        var io = URingIO(file: -1, fixedFile: false, bufferAddress: 0, bufferIndex: -1, length: 0, offset: 0, isRead: true)
        var postedAt: UInt64 = 0
    }

    /// Slots (and ring entries) of this queue.
    public let depth: Int
    /// Whether the queue's regions are fixed buffers of its ring (the kernel
    /// may refuse, e.g. under a memlock limit; plain reads/writes are used then).
    public let fixedBuffers: Bool
    /// Whether files are registered with the ring as they are first posted
    /// (no per-I/O file lookup in the kernel); false when the kernel refused the table.
    public let fixedFiles: Bool
    /// Setup flags the kernel accepted for this queue's ring.
    public let setupFlags: String
    /// Whether the ring is bound to the one thread that first drives it
    /// (SINGLE_ISSUER|DEFER_TASKRUN, as fio sets them); see ``init(transport:regions:depth:fixedBuffers:fixedFiles:singleIssuer:)``.
    public let isSingleIssuer: Bool
    /// Transfers posted and not yet reported.
    public private(set) var inFlight = 0

    private let queue: URingQueue
    private let transport: URingTransport
    private let funnel: SyscallFunnel
    private let regions: [MemoryRegion]
    private let regionUses: [RegionUse]
    private var slots: ContiguousArray<Slot>
    /// Targets registered as fixed files of this queue's ring.
    private var files = URingFileTable(slots: URingDirectQueue.fileSlots)
    private static let fileSlots = 16
    /// Slots whose SQE could not be had yet (the SQ was full of unsubmitted entries).
    private var deferred: ContiguousArray<Int>
    /// CQEs copied out of the ring and not yet reported (a throwing handler stops midway).
    private let taken: UnsafeMutableBufferPointer<(UInt64, Int32)>
    private var takenHead = 0
    private var takenCount = 0
    /// SQEs filled since the last submit.
    private var unsubmitted = 0
    /// A single-issuer ring starts disabled; the first thread to drive it enables it.
    private var enabled: Bool
    private var issuer: pthread_t?

    /// Creates a ring of `depth` entries for `transport`'s prepared transfers
    /// that use `regions` (each registered with `transport`).
    /// - Throws: `invalidArgument` for a depth outside 1...4096; `notFound` for
    ///   a region not registered with `transport`; `systemCall` when the kernel
    ///   refuses a ring.
    /// - Parameter singleIssuer: Bind the ring to the first thread that posts,
    ///   submits or reaps (the kernel then defers completion work to that
    ///   thread's waits instead of interrupting it, as fio's rings do). Every
    ///   later call — and the queue's release — must come from that thread;
    ///   a call from another thread throws, and a release on another thread
    ///   while I/O is in flight keeps the buffers alive for good rather than
    ///   free them under the kernel. The kernel may refuse the flags (before
    ///   6.1); then the ring is shared-issuer and ``isSingleIssuer`` is false.
    public init(transport: URingTransport, regions: [MemoryRegion], depth: Int,
                fixedBuffers: Bool = true, fixedFiles: Bool = true, singleIssuer: Bool = false) throws(MemWallError) {
        guard depth >= 1, depth <= 4096 else {
            throw .invalid("direct queue depth", depth, expected: "1...4096 (I/Os kept in flight at once)")
        }
        let queue = try URingQueue(entries: depth, funnel: transport.funnel,
                                   candidates: singleIssuer ? URingSetupFlags.singleIssuer : URingSetupFlags.sharedIssuer)
        let single = queue.flags & IORING_SETUP_SINGLE_ISSUER != 0
        let uses = try transport.markInUse(regions)
        let fixed = fixedBuffers && !regions.isEmpty && regions.allSatisfy({ $0.byteCount <= URingIO.maximumChunk })
            && queue.registerBuffers(regions)
        self.fixedFiles = fixedFiles && queue.registerFileTable(slots: URingDirectQueue.fileSlots)
        let entries = queue.entries
        self.setupFlags = queue.flagsLabel
        self.isSingleIssuer = single
        self.enabled = queue.flags & IORING_SETUP_R_DISABLED == 0
        self.depth = min(depth, entries)
        self.queue = queue
        self.transport = transport
        self.funnel = transport.funnel
        self.regions = regions
        self.regionUses = uses
        self.fixedBuffers = fixed
        self.slots = ContiguousArray(repeating: Slot(), count: self.depth)
        self.deferred = []
        self.deferred.reserveCapacity(self.depth)
        // The CQ ring holds twice the SQ entries.
        self.taken = .allocate(capacity: 2 * max(self.depth, entries))
    }

    deinit {
        // The kernel may still write buffers of slots in flight: wait for each
        // CQE (not for deferred slots, which never reached the kernel).
        let kernelOwned = inFlight - deferred.count
        if let issuer, pthread_equal(issuer, pthread_self()) == 0, kernelOwned > 0 {
            // Only the issuer may wait on this ring. Keep what the kernel may
            // still write alive for good rather than free it under the kernel.
            StandardError.write("memwall: a single-issuer URingDirectQueue was released on another thread with \(kernelOwned) I/O(s) in flight; their buffers are kept alive\n")
            _ = Unmanaged.passRetained(KeptAlive(slots.compactMap(\.prepared), regionUses))
            taken.deallocate()
            return
        }
        if unsubmitted > 0 { _ = queue.submit() }
        // Owed completions of a failed ring: io_uring_queue_exit still waits for the kernel's I/O.
        _ = queue.discardCompletions(kernelOwned)
        taken.deallocate()
        for use in regionUses { use.release() }
    }

    /// Enables a single-issuer ring on its first use (this thread becomes its
    /// issuer), and refuses use from any other thread.
    private func claim() throws(MemWallError) {
        if let issuer {
            guard pthread_equal(issuer, pthread_self()) != 0 else {
                throw MemWallError(.invalidArgument, "this single-issuer URingDirectQueue is driven by another thread; use one queue per thread")
            }
            return
        }
        guard isSingleIssuer else { return }
        if !enabled {
            try queue.enable()
            enabled = true
        }
        issuer = pthread_self()
    }

    /// Whether `slot` holds a transfer not yet reported.
    public func isBusy(slot: Int) -> Bool {
        slot >= 0 && slot < depth && slots[slot].prepared != nil
    }

    /// Puts `prepared` (one descriptor, prepared by this queue's transport,
    /// its buffer in one of the queue's regions) into the free `slot`. Its SQE
    /// goes to the kernel with the next ``submit()`` or ``reap(waitingFor:_:)``.
    /// - Throws: `invalidArgument` for a slot out of range or busy, a list of
    ///   other than one descriptor; `misuse` for a transfer another transport
    ///   instance prepared (its fixed-file slot is of another ring);
    ///   `notFound` when its region is not one of the queue's.
    public func post(_ prepared: PreparedTransfer, slot: Int) throws(MemWallError) {
        if isSingleIssuer { try claim() }
        guard slot >= 0, slot < depth else {
            throw .invalid("slot", slot, expected: "0..<\(depth) (the queue's depth)")
        }
        guard slots[slot].prepared == nil else {
            throw MemWallError(.invalidArgument, "slot \(slot) still holds a transfer in flight; post into a slot once its completion was reaped")
        }
        let ops = try transport.plan(of: prepared, as: [URingOp].self)
        guard ops.count == 1, let op = ops.first else {
            throw .invalid("descriptor count", ops.count, expected: "1 per slot (post longer lists through URingTransport.post)")
        }
        let local = prepared.descriptors[0].local
        var bufferIndex: Int32 = -1
        var found = false
        for (i, r) in regions.enumerated() where r === local {
            found = true
            bufferIndex = fixedBuffers ? Int32(i) : -1
            break
        }
        guard found else {
            throw MemWallError(.notFound, "\(local) is not one of this direct queue's regions; name it when creating the queue")
        }
        let (file, fixedFile) = fileSlot(for: op)
        slots[slot] = Slot(prepared: prepared,
                           io: URingIO(file: file, fixedFile: fixedFile, bufferAddress: op.bufferAddress,
                                       bufferIndex: bufferIndex, length: op.length, offset: op.offset,
                                       isRead: prepared.operation == .read),
                           postedAt: MonotonicClock.nanoseconds())
        inFlight += 1
        place(slot)
    }

    /// The fixed-file slot of `op`'s target (registering it on first use), or
    /// its plain descriptor when files are not fixed or the table is full.
    private func fileSlot(for op: URingOp) -> (Int32, Bool) {
        guard fixedFiles, let slot = files.slot(for: op.target, in: queue).slot else { return (op.fileDescriptor, false) }
        return (slot, true)
    }

    /// Hands every SQE filled since the last call to the kernel without waiting.
    /// - Returns: SQEs the kernel took (0 when it is short of resources; they go with the next call).
    /// - Throws: `invalidArgument` when a single-issuer queue is driven from another thread.
    @discardableResult
    public func submit() throws(MemWallError) -> Int {
        if isSingleIssuer { try claim() }
        placeDeferred()
        guard unsubmitted > 0 else { return 0 }
        let r = enter(wait: 0)
        return max(0, Int(r))
    }

    /// Submits what is filled, waits until at least `minimum` CQEs are there
    /// (0: do not wait), and reports every finished slot to `handler`, which
    /// may post into the slot it is given at once; those SQEs are handed to the
    /// kernel by the next ``reap(waitingFor:_:)`` or ``submit()``, in the same
    /// system call as that wait. A resumed short transfer or a retried EAGAIN
    /// does not finish its slot.
    ///
    /// When `handler` throws, the completions after it stay queued and are
    /// reported by the next call. On a single-issuer queue, a call from a
    /// thread other than its issuer reports nothing and returns 0.
    /// - Returns: Slots reported.
    @discardableResult
    public func reap<E: Error>(waitingFor minimum: Int = 1, spinMicroseconds: Int = 0,
                               _ handler: (Completion) throws(E) -> Void) throws(E) -> Int {
        // A single-issuer ring refuses other threads (the kernel too): nothing to report there.
        if isSingleIssuer { do { try claim() } catch { return 0 } }
        placeDeferred()
        if takenHead == takenCount {
            let kernelOwned = inFlight - deferred.count
            var wait = minimum > 0 && kernelOwned > 0 ? min(minimum, kernelOwned) : 0
            if wait > 0 && spinMicroseconds > 0 && spin(microseconds: spinMicroseconds) { wait = 0 }
            if unsubmitted > 0 || wait > 0 { _ = enter(wait: wait) }
            takeCompletions()
        }
        var reported = 0
        while takenHead < takenCount {
            let (tag, res) = taken[takenHead]
            takenHead += 1
            guard let completion = settle(slot: Int(tag), res: res) else { continue }
            reported += 1
            try handler(completion)
        }
        // What the handler posted goes to the kernel with the next call's wait:
        // one io_uring_enter per batch instead of a submit and then a wait.
        return reported
    }

    /// Submits, then asks the kernel for completions without sleeping until one
    /// is there or the time is up. On a loaded machine a thread that sleeps for
    /// each completion waits behind other runnable threads when it is woken;
    /// one that stays on the CPU a few microseconds does not.
    /// - Returns: Whether a completion is ready.
    private func spin(microseconds: Int) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(microseconds) * 1000
        repeat {
            // Also runs deferred completion work (DEFER_TASKRUN) without waiting.
            let r = queue.submitAndGetEvents()
            if r >= 0 { unsubmitted = max(0, unsubmitted - Int(r)) }
            if queue.readyCompletions > 0 { return true }
        } while MonotonicClock.nanoseconds() < deadline
        return false
    }

    /// Submits and waits for `wait` completions (0: none).
    private func enter(wait: Int) -> Int32 {
        let r = queue.submit(waitingFor: wait)
        if r >= 0 {
            unsubmitted = max(0, unsubmitted - Int(r))
        }
        // -EAGAIN/-EBUSY: short of resources or the CQ is full; the SQEs stay
        // in the ring and go with the next enter, after this reap.
        return r
    }

    private func takeCompletions() {
        takenHead = 0
        takenCount = queue.takeCompletions(into: taken)
    }

    /// Decides what a CQE means for its slot: a completion, or nothing yet
    /// (the rest of a short transfer, or a retry, was placed).
    private func settle(slot: Int, res raw: Int32) -> Completion? {
        guard slot >= 0, slot < depth, let prepared = slots[slot].prepared else { return nil }
        let outcome: Result<Int, MemWallError>
        switch slots[slot].io.settle(raw, funnel: funnel, path: Self.path(of: prepared)) {
        case .again:
            place(slot)
            return nil
        case .finished(let r):
            outcome = r
        }
        let now = MonotonicClock.nanoseconds()
        let postedAt = slots[slot].postedAt
        if case .success(let n) = outcome {
            transport.costEstimator.record(target: .storage, operation: prepared.operation,
                                           report: TransferReport(bytes: n, descriptorCount: 1, postedAt: postedAt, completedAt: now))
        }
        slots[slot].prepared = nil
        inFlight -= 1
        return Completion(slot: slot, result: outcome, nanoseconds: now &- postedAt)
    }

    private static func path(of prepared: PreparedTransfer) -> String {
        if case .storage(let t) = prepared.descriptors.first?.target { return t.path }
        return "?"
    }

    /// Pushes the SQE of `slot` (from where its transfer stands), or defers it
    /// when the SQ has no free entry even after a submit.
    private func place(_ slot: Int) {
        if !queue.push(slots[slot].io, tag: UInt64(slot)) {
            _ = enter(wait: 0)
            guard queue.push(slots[slot].io, tag: UInt64(slot)) else { deferred.append(slot); return }
        }
        unsubmitted += 1
    }

    private func placeDeferred() {
        guard !deferred.isEmpty else { return }
        let waiting = deferred
        deferred.removeAll(keepingCapacity: true)
        for slot in waiting { place(slot) }
    }
}

/// What a single-issuer queue released on the wrong thread keeps alive forever:
/// the transfers (and so the buffers) the kernel may still write, and the
/// regions' in-use marks (so they are never deregistered and unpinned).
private final class KeptAlive {
    let transfers: [PreparedTransfer]
    let uses: [RegionUse]
    init(_ transfers: [PreparedTransfer], _ uses: [RegionUse]) {
        self.transfers = transfers
        self.uses = uses
    }
}
