#if canImport(Glibc)
import Glibc
#endif
import CIBVerbs
import MemWallCore
import Transport

/// The zero-allocation fast path of the RDMA transport: one thread posts
/// prepared transfers into numbered slots of one connection and reaps
/// `(slot, result)` completions from its completion queue, the way perftest
/// drives a queue pair.
///
/// ``RDMATransport/post(_:notifyValue:)`` builds a ``TransferRequest`` per post
/// (status per descriptor, async waiters, cancellation, locks shared with a
/// completion thread). That is the right contract for a runtime moving KV
/// blocks from many tasks; for a loop of millions of small READs its objects
/// and locks cost as much as the NIC's work. Here the caller owns `depth`
/// slots instead (NIXL's reusable transfer handles are the same idea): a
/// slot's state is preallocated and indexed by the work request id, and one
/// thread drives the queue pair, so nothing is locked or allocated per post.
/// A slot's work requests are encoded once, when a transfer is first posted
/// into it, and reposting only flips the last one's signal flag — perftest
/// likewise builds its work requests before its timed loop.
///
/// What the transport's contract guarantees still holds: transfers are
/// prepared (registrations, remote bounds and rights) by
/// ``RDMATransport/prepare(_:_:)``; a slot keeps the last ``PreparedTransfer``
/// posted into it — and so its buffers — and marks its registrations in use,
/// so the transport refuses to deregister them while the queue lives (a
/// repost never carries a stale key); completions feed the transport's cost
/// estimate (one in ``estimateInterval``); errors are the transport's typed errors
/// (`.remoteAccess`, `.disconnected`, `.timedOut`), after which the
/// connection is closed and every slot in flight is reported failed; `deinit`
/// waits (bounded) for work in flight before the connection is handed back.
///
/// Selective signalling as on the general path: a slot's last work request
/// asks for a completion when the queue was idle or every `signalInterval`
/// work requests; RC completes in order, so one completion reports every slot
/// posted before it, and a stranded unsignalled tail is released by one
/// zero-length fence.
///
/// The connection must be caller-polled (``RemoteTransportOptions/completionThread``
/// off) and is claimed for the queue's lifetime: general posts on it are
/// refused meanwhile. Not `Sendable`: exactly one thread drives a queue.
public final class RDMADirectQueue {
    /// What one slot reported.
    public struct Completion: Sendable {
        /// The slot the transfer was posted into (free again now).
        public var slot: Int
        /// Bytes moved (the whole transfer), or the error.
        public var result: Result<Int, MemWallError>
        /// Monotonic nanoseconds from the post to the reap that saw it finished.
        public var nanoseconds: UInt64
    }

    /// A slot's per-post state: plain values only, so posting and reaping
    /// touch no reference counts and no exclusivity checks (under QEMU's TCG
    /// those runtime calls cost microseconds per READ).
    private struct SlotState {
        /// The bound transfer's work requests, encoded once at bind time and
        /// chained (`next`, `sg_list` point into this slot's own arrays); a post
        /// only sets the last one's signal flag.
        var wrs: UnsafeMutablePointer<ibv_send_wr>?
        var sges: UnsafeMutablePointer<ibv_sge>?
        var workRequests = 0
        /// Identity of the bound ``PreparedTransfer`` (kept alive by `bindings`).
        var bound: ObjectIdentifier?
        var busy = false
        var bytes = 0
        var postedAt: UInt64 = 0
        var targetKind: LocationKind?
        var operation: TransferOperation = .read
        var descriptorCount = 0
    }

    /// What a bound slot holds on to: the transfer (its buffers) and its
    /// operations (registrations marked in use; the last one names the
    /// failing descriptor in errors). Touched when binding, on errors and in deinit.
    private struct Binding {
        let prepared: PreparedTransfer
        let templates: [RDMAConnection.Operation]
    }

    /// Counters of the queue, behind a pointer for the same reason as `SlotState`.
    private struct Counters {
        var inFlight = 0
        /// Index in `order` of the oldest slot in flight.
        var orderHead = 0
        /// Work requests on the send queue (a slot's transfer may take several).
        var workRequests = 0
        var sinceSignal = 0
        /// Signalled work requests (slot ends and fences) whose completion has not
        /// been seen: at zero with slots in flight, those slots are stranded.
        var signalledOutstanding = 0
        var idlePasses = 0
        /// Completions since one last fed the cost estimate.
        var sinceEstimate = 0
        var isClosed = false
    }

    /// Slots of this queue (at most the connection's send-queue depth).
    public let depth: Int
    /// Slots posted and not yet reported.
    public var inFlight: Int { counters.pointee.inFlight }

    private let transport: RDMATransport
    private let connection: RDMAConnection
    private let core: RDMAConnection.Core
    // The verbs objects, read once: the connection (held above) keeps them alive.
    private let qp: UnsafeMutablePointer<ibv_qp>
    private let cq: UnsafeMutablePointer<ibv_cq>
    private let completionQueue: CompletionQueue
    private let sendQueueDepth: Int
    private let signalInterval: Int
    private let slots: UnsafeMutablePointer<SlotState>
    /// Slots in the order they were posted (a ring of `depth` entries): RC
    /// completes in this order.
    private let order: UnsafeMutablePointer<Int>
    private let counters: UnsafeMutablePointer<Counters>
    private var bindings: [Binding?]
    private var closed: MemWallError?
    /// Times a reap slept on the completion channel (tests check the path ran).
    private(set) var sleeps = 0
    /// One fence work request and its (empty) scatter entry.
    private let fenceWR: UnsafeMutablePointer<ibv_send_wr>
    private let fenceSGE: UnsafeMutablePointer<ibv_sge>
    /// Completions polled in one pass.
    private let completions: UnsafeMutablePointer<ibv_wc>

    /// wr_id of a fence: above every slot number.
    private static let fenceID = UInt64.max
    /// Completions per batch polled from the completion queue.
    private static let pollBatch = 16
    /// One completion in this many feeds the transport's cost estimate: an
    /// exponentially weighted average needs samples, not every READ of a
    /// million-READ loop, and each sample takes the estimator's lock.
    public static let estimateInterval = 16

    /// Claims `peer`'s connection for a direct queue of `depth` slots.
    /// - Throws: `invalidArgument` for a peer of another transport, a depth out
    ///   of 1...send-queue depth, a connection with a completion thread, or one
    ///   with work in flight or already claimed; `disconnected` for a closed one.
    public init(transport: RDMATransport, peer: RemotePeer, depth: Int) throws(MemWallError) {
        guard let connection = peer.connection as? RDMAConnection else {
            throw MemWallError(.invalidArgument, "\(peer) was not connected by '\(transport.name)'")
        }
        guard connection.hasCompletionThread == false else {
            throw MemWallError(.invalidArgument,
                "a direct queue polls the completion queue itself; connect with RemoteTransportOptions(completionThread: false)")
        }
        let core = connection.core
        guard (1 ... core.depth).contains(depth) else {
            throw .invalid("direct queue depth", depth, expected: "1...\(core.depth) (the connection's send-queue depth)")
        }
        try core.claimExclusive()
        self.transport = transport
        self.connection = connection
        self.core = core
        self.qp = core.queuePair.qp
        self.cq = core.queuePair.completionQueue.cq
        self.completionQueue = core.queuePair.completionQueue
        self.sendQueueDepth = core.depth
        self.signalInterval = core.signalInterval
        self.depth = depth
        self.slots = .allocate(capacity: depth)
        slots.initialize(repeating: SlotState(), count: depth)
        self.order = .allocate(capacity: depth)
        order.initialize(repeating: -1, count: depth)
        self.counters = .allocate(capacity: 1)
        counters.initialize(to: Counters())
        self.bindings = Array(repeating: nil, count: depth)
        self.fenceWR = .allocate(capacity: 1)
        self.fenceSGE = .allocate(capacity: 1)
        self.completions = .allocate(capacity: Self.pollBatch)
    }

    deinit {
        // Nothing may be freed while the NIC can still touch a slot's buffers:
        // wait for what is in flight (bounded; a dead peer flushes quickly once
        // the queue pair is in the error state).
        let until = MonotonicClock.nanoseconds() &+ core.timeout &+ 2_000_000_000
        while inFlight > 0 && MonotonicClock.nanoseconds() < until {
            // Caller-polled: yield the CPU to the NIC's softirq, no thread to wait for.
            if takeCompletions(handler: { _ in }) == 0 { sched_yield() }
            if MonotonicClock.nanoseconds() > until &- 2_000_000_000 && closed == nil {
                fail(MemWallError(.timedOut, "a direct queue was released with work in flight that did not finish in time"))
            }
        }
        let c = counters.pointee
        if c.inFlight > 0 || c.signalledOutstanding > 0 {
            // The NIC did not report everything: the buffers stay with the slots'
            // transfers, which this queue no longer owns; the connection is closed.
            fail(MemWallError(.disconnected, "a direct queue was released with work still on the send queue"))
            StandardError.write("memwall: an RDMA direct queue to \(core.peerName) was released with \(c.inFlight) transfer(s) the NIC never reported; the connection is closed\n")
        }
        core.releaseExclusive()
        for binding in bindings { for op in binding?.templates ?? [] { op.registration?.release() } }
        for i in 0 ..< depth {
            slots[i].wrs?.deallocate()
            slots[i].sges?.deallocate()
        }
        slots.deinitialize(count: depth)
        slots.deallocate()
        order.deallocate()
        counters.deallocate()
        fenceWR.deallocate()
        fenceSGE.deallocate()
        completions.deallocate()
    }

    /// Whether `slot` holds a transfer not yet reported.
    public func isBusy(slot: Int) -> Bool {
        slot >= 0 && slot < depth && slots[slot].busy
    }

    /// Posts `prepared` (prepared by this queue's transport, every descriptor
    /// aimed at this queue's peer) into the free `slot`; its work requests go
    /// to the NIC now.
    /// - Throws: `invalidArgument` for a slot out of range or busy, or a transfer
    ///   to another peer; `misuse` for a transfer another transport instance
    ///   prepared; `outOfBounds` when the send queue has no room for it (reap
    ///   first); the closing error once the connection failed.
    public func post(_ prepared: PreparedTransfer, slot: Int) throws(MemWallError) {
        if counters.pointee.isClosed, let closed { throw closed }
        guard slot >= 0, slot < depth else {
            throw .invalid("slot", slot, expected: "0..<\(depth) (the queue's depth)")
        }
        let s = slots + slot
        guard !s.pointee.busy else {
            throw MemWallError(.invalidArgument, "slot \(slot) still holds a transfer in flight; post into a slot once its completion was reaped")
        }
        if s.pointee.bound != ObjectIdentifier(prepared) {
            try bind(prepared, to: slot)
        }
        let n = s.pointee.workRequests
        let c = counters
        guard c.pointee.workRequests + n + 1 <= sendQueueDepth else {
            throw MemWallError(.outOfBounds,
                "the send queue holds \(c.pointee.workRequests) work requests of \(sendQueueDepth); reap completions before posting \(n) more")
        }
        // Only the last work request may ask for a completion: when the queue
        // was idle (a lone request completes by itself) or every signalInterval.
        c.pointee.sinceSignal += n
        let signal = c.pointee.workRequests == 0 || c.pointee.sinceSignal >= signalInterval
        if signal { c.pointee.sinceSignal = 0 }
        guard let wrs = s.pointee.wrs, n > 0 else {
            // bind encodes at least one work request; never post nothing silently.
            throw MemWallError(.invalidArgument, "slot \(slot) holds no encoded work request; post a prepared transfer with descriptors")
        }
        wrs[n - 1].send_flags = signal ? IBV_SEND_SIGNALED.rawValue : 0
        s.pointee.busy = true
        s.pointee.postedAt = MonotonicClock.nanoseconds()
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        let rc = ibv_post_send(qp, wrs, &bad)
        guard rc == 0 else {
            s.pointee.busy = false
            let e = MemWallError(.disconnected, "posting to \(core.peerName) failed; connection closed",
                                 function: "ibv_post_send", errno: Errno(rawValue: rc))
            fail(e)
            throw e
        }
        if signal { c.pointee.signalledOutstanding += 1 }
        c.pointee.workRequests += n
        order[(c.pointee.orderHead + c.pointee.inFlight) % depth] = slot
        c.pointee.inFlight += 1
    }

    /// Resolves `prepared`'s work requests for `slot` once and encodes them
    /// into the slot's own list; a slot reposted with the same transfer
    /// reuses them.
    private func bind(_ prepared: PreparedTransfer, to slot: Int) throws(MemWallError) {
        let plan = try transport.plan(of: prepared, as: RDMATransport.Plan.self)
        guard plan.groups.count == 1, let group = plan.groups.first, group.connection === connection else {
            throw MemWallError(.invalidArgument,
                "a direct queue posts to one peer (\(core.peerName)); this transfer names \(plan.groups.count == 1 ? "another peer" : "\(plan.groups.count) peers")")
        }
        let n = group.templates.count
        guard n > 0 else {
            throw MemWallError(.invalidArgument, "a transfer with no descriptors has nothing to post")
        }
        guard n < sendQueueDepth else {
            throw .invalid("descriptor count", n, expected: "fewer than the send-queue depth \(sendQueueDepth)")
        }
        // A bound slot counts as a use of its registrations for as long as it
        // stays bound, so the transport refuses to deregister them meanwhile
        // and a repost never carries a stale lkey; no per-post bookkeeping.
        for op in group.templates { op.registration?.retain() }
        for op in bindings[slot]?.templates ?? [] { op.registration?.release() }
        let s = slots + slot
        if s.pointee.workRequests != n {
            s.pointee.wrs?.deallocate()
            s.pointee.sges?.deallocate()
            s.pointee.wrs = .allocate(capacity: n)
            s.pointee.sges = .allocate(capacity: n)
        }
        guard let wrs = s.pointee.wrs, let sges = s.pointee.sges else { return }
        for (k, op) in group.templates.enumerated() {
            op.encode(into: wrs, sges, at: k, id: UInt64(slot), signal: false, chained: k < n - 1)
        }
        s.pointee.workRequests = n
        s.pointee.bytes = prepared.totalBytes
        s.pointee.bound = ObjectIdentifier(prepared)
        s.pointee.targetKind = prepared.descriptors.first?.target.kind
        s.pointee.operation = prepared.operation
        s.pointee.descriptorCount = prepared.descriptors.count
        bindings[slot] = Binding(prepared: prepared, templates: group.templates)
    }

    /// Reports finished slots to `handler`, polling until at least `minimum`
    /// were reported (or nothing is in flight). Waits at most the transport's
    /// operation timeout for the oldest slot; then the connection is closed
    /// and every slot in flight is reported `.timedOut`.
    ///
    /// The wait spins on the completion queue and gives the CPU away
    /// (`sched_yield`) every `yieldEvery` empty passes: where the NIC's work is
    /// done by the kernel on this CPU (soft-RoCE runs its responder as a
    /// softirq), a poller that never yields delays that work until its time
    /// slice ends. When nothing else wants the CPU the yield returns at once.
    /// 0 never yields, for a core dedicated to polling a hardware NIC.
    ///
    /// After `sleepAfter` empty passes in a row the poller stops spinning: it
    /// arms the completion queue, polls once more (a completion may have landed
    /// meanwhile) and sleeps on the queue's completion channel until the next
    /// completion. Why: Linux's scheduler shares a CPU fairly between a
    /// spinning poller and the softirq thread doing soft-RoCE's work, so once
    /// that thread has run more than the poller, a yield no longer hands it the
    /// CPU and the poller spins for as long as the work takes (measured in the
    /// lab: ksoftirqd waiting in the run queue about as long as it ran for a
    /// 4 KiB READ). A sleeping poller competes with nothing. `nil` never sleeps.
    /// - Returns: Slots reported.
    @discardableResult
    public func reap<E: Error>(waitingFor minimum: Int = 1, yieldEvery: Int = 8, sleepAfter: Int? = nil,
                               _ handler: (Completion) throws(E) -> Void) throws(E) -> Int {
        var reported = 0
        var empty = 0
        let c = counters
        while true {
            let n = try takeCompletions(handler: handler)
            reported += n
            if reported >= minimum || c.pointee.inFlight == 0 { return reported }
            c.pointee.idlePasses &+= 1
            if c.pointee.idlePasses & 1023 == 0 { watch() }
            guard n == 0 else { empty = 0; continue }
            empty += 1
            if let sleepAfter, empty >= sleepAfter, !c.pointee.isClosed {
                empty = 0
                completionQueue.arm()
                let m = try takeCompletions(handler: handler)
                reported += m
                if reported >= minimum || c.pointee.inFlight == 0 { return reported }
                // Bounded, so a peer that never answers still meets the timeout.
                if m == 0, !sleepOnChannel(milliseconds: 100) { watch() }
            } else if yieldEvery > 0 && empty % yieldEvery == 0 {
                // Deliberate: yields to the NIC's softirq (soft-RoCE) on the
                // caller's polling thread; there is no thread to park for.
                sched_yield()
            }
        }
    }

    /// Sleeps on the armed completion channel until it fires or `milliseconds` pass.
    /// - Returns: Whether it fired.
    func sleepOnChannel(milliseconds: Int32) -> Bool {
        sleeps &+= 1
        return completionQueue.sleep(milliseconds: milliseconds)
    }

    /// Arms the completion queue and sleeps on its channel (tests: the idle case).
    func armAndSleep(milliseconds: Int32) -> Bool {
        completionQueue.arm()
        return sleepOnChannel(milliseconds: milliseconds)
    }

    /// Looks at the peer (disconnect events) and the oldest slot's age.
    private func watch() {
        core.watchEvents()
        if closed == nil, !core.isOpen {
            fail(MemWallError(.disconnected, "the connection to \(core.peerName) closed"))
        }
        guard closed == nil, inFlight > 0 else { return }
        let oldest = slots[order[counters.pointee.orderHead]].postedAt
        let now = MonotonicClock.nanoseconds()
        if now > oldest && now - oldest > core.timeout {
            fail(MemWallError(.timedOut,
                "\(core.peerName) did not complete a posted transfer within \(Duration.nanoseconds(Int64(core.timeout))); connection closed",
                errno: .timedOut))
        }
    }

    /// Closes the connection: the queue pair goes to the error state, so the
    /// NIC flushes (and reports) everything posted.
    private func fail(_ error: MemWallError) {
        if closed == nil {
            closed = error
            counters.pointee.isClosed = true
        }
        core.fail(error)
    }

    /// One pass over the completion queue.
    private func takeCompletions<E: Error>(handler: (Completion) throws(E) -> Void) throws(E) -> Int {
        let base = completions
        let n = Int(ibv_poll_cq(cq, Int32(Self.pollBatch), base))
        var reported = 0
        if n > 0 {
            let now = MonotonicClock.nanoseconds()
            for i in 0 ..< n {
                let ok = base[i].status == IBV_WC_SUCCESS
                let id = base[i].wr_id
                // A successful completion is always that of a signalled request;
                // after an error every request is flushed, signalled or not.
                if ok { counters.pointee.signalledOutstanding -= 1 }
                if id == Self.fenceID {
                    counters.pointee.workRequests -= 1
                    reported += try retire(through: nil, lastError: ok ? nil : error(of: base[i], slot: nil), now: now, handler: handler)
                    continue
                }
                let slot = Int(truncatingIfNeeded: id)
                // Another flushed request of a slot already reported.
                guard slot >= 0, slot < depth, slots[slot].busy else { continue }
                reported += try retire(through: slot, lastError: ok ? nil : error(of: base[i], slot: slot), now: now, handler: handler)
            }
        }
        releaseStrandedTail()
        return reported
    }

    /// The typed error of a failed completion (the closing error once closed).
    private func error(of wc: ibv_wc, slot: Int?) -> MemWallError {
        if let closed { return closed }
        guard let slot, let op = bindings[slot]?.templates.last else {
            return MemWallError(.disconnected, "the connection to \(core.peerName) failed: \(String(cString: ibv_wc_status_str(wc.status)))")
        }
        return RDMAConnection.Core.error(wc.status, vendor: wc.vendor_err, op: op, peer: core.peerName)
    }

    /// Reports slots in posting order up to and including `last` (every slot
    /// when `last` is nil: a fence's completion retires all before it). RC
    /// completes in order, so the slots before `last` succeeded unless the
    /// connection had already failed; `last` carries `lastError`.
    private func retire<E: Error>(through last: Int?, lastError: MemWallError?, now: UInt64,
                                  handler: (Completion) throws(E) -> Void) throws(E) -> Int {
        var reported = 0
        var failure = counters.pointee.isClosed ? closed : nil
        let c = counters
        while c.pointee.inFlight > 0 {
            let slot = order[c.pointee.orderHead]
            let s = slots + slot
            guard s.pointee.busy else { break }
            let isLast = slot == last
            c.pointee.orderHead = (c.pointee.orderHead + 1) % depth
            c.pointee.inFlight -= 1
            c.pointee.workRequests -= s.pointee.workRequests
            s.pointee.busy = false
            if isLast || last == nil, let lastError, failure == nil {
                failure = lastError
                fail(lastError)
            }
            let postedAt = s.pointee.postedAt
            let elapsed = now > postedAt ? now - postedAt : 0
            let result: Result<Int, MemWallError>
            if let failure {
                result = .failure(failure)
            } else {
                result = .success(s.pointee.bytes)
                if c.pointee.sinceEstimate == 0, let kind = s.pointee.targetKind {
                    transport.costEstimator.record(target: kind, operation: s.pointee.operation,
                        report: TransferReport(bytes: s.pointee.bytes, descriptorCount: s.pointee.descriptorCount,
                                               postedAt: postedAt, completedAt: now))
                }
                c.pointee.sinceEstimate = (c.pointee.sinceEstimate + 1) % Self.estimateInterval
            }
            reported += 1
            try handler(Completion(slot: slot, result: result, nanoseconds: elapsed))
            if isLast { break }
        }
        if last == nil, let lastError, failure == nil { fail(lastError) }
        return reported
    }

    /// Posts a signalled zero-length fence when slots are in flight but no
    /// signalled request is left to retire them.
    private func releaseStrandedTail() {
        let c = counters
        guard !c.pointee.isClosed, c.pointee.inFlight > 0, c.pointee.signalledOutstanding == 0,
              c.pointee.workRequests < sendQueueDepth else { return }
        let slot = order[(c.pointee.orderHead + c.pointee.inFlight - 1) % depth]
        guard let op = bindings[slot]?.templates.last else { return }
        op.fence.encode(into: fenceWR, fenceSGE, at: 0, id: Self.fenceID, signal: true, chained: false)
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        let rc = ibv_post_send(qp, fenceWR, &bad)
        guard rc == 0 else {
            fail(MemWallError(.disconnected, "posting to \(core.peerName) failed; connection closed",
                              function: "ibv_post_send", errno: Errno(rawValue: rc)))
            return
        }
        c.pointee.signalledOutstanding += 1
        c.pointee.workRequests += 1
    }
}
