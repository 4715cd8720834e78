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
///
/// What the transport's contract guarantees still holds: transfers are
/// prepared (registrations, remote bounds and rights) by
/// ``RDMATransport/prepare(_:_:)``; a slot keeps the last ``PreparedTransfer``
/// posted into it — and so its buffers — and marks its registrations in use,
/// so the transport refuses to deregister them while the queue lives (a
/// repost never carries a stale key); every completion feeds
/// the transport's cost estimate; errors are the transport's typed errors
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

    private struct Slot {
        /// The transfer in flight in this slot (nil when the slot is free).
        var prepared: PreparedTransfer?
        /// The transfer `templates` were resolved for: reposting it skips the resolution.
        var bound: PreparedTransfer?
        var templates: [RDMAConnection.Operation] = []
        var postedAt: UInt64 = 0
        var bytes = 0
    }

    /// Slots of this queue (at most the connection's send-queue depth).
    public let depth: Int
    /// Slots posted and not yet reported.
    public private(set) var inFlight = 0

    private let transport: RDMATransport
    private let connection: RDMAConnection
    private let core: RDMAConnection.Core
    private var slots: ContiguousArray<Slot>
    /// Slots in the order they were posted (a ring of `depth` entries): RC
    /// completes in this order.
    private var order: ContiguousArray<Int>
    private var orderHead = 0
    /// Work requests on the send queue (a slot's transfer may take several).
    private var workRequests = 0
    private var sinceSignal = 0
    /// Signalled work requests (slot ends and fences) whose completion has not
    /// been seen: at zero with slots in flight, those slots are stranded.
    private var signalledOutstanding = 0
    private var idlePasses = 0
    private var closed: MemWallError?
    private let wrs: UnsafeMutablePointer<ibv_send_wr>
    private let sges: UnsafeMutablePointer<ibv_sge>

    /// wr_id of a fence: above every slot number.
    private static let fenceID = UInt64.max

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
        self.depth = depth
        self.slots = ContiguousArray(repeating: Slot(), count: depth)
        self.order = ContiguousArray(repeating: -1, count: depth)
        self.wrs = .allocate(capacity: core.depth)
        self.sges = .allocate(capacity: core.depth)
    }

    deinit {
        // Nothing may be freed while the NIC can still touch a slot's buffers:
        // wait for what is in flight (bounded; a dead peer flushes quickly once
        // the queue pair is in the error state).
        let until = MonotonicClock.nanoseconds() &+ core.timeout &+ 2_000_000_000
        while inFlight > 0 && MonotonicClock.nanoseconds() < until {
            if takeCompletions(handler: { _ in }) == 0 { sched_yield() }
            if MonotonicClock.nanoseconds() > until &- 2_000_000_000 && closed == nil {
                fail(MemWallError(.timedOut, "a direct queue was released with work in flight that did not finish in time"))
            }
        }
        if inFlight > 0 || signalledOutstanding > 0 {
            // The NIC did not report everything: the buffers stay with the slots'
            // transfers, which this queue no longer owns; the connection is closed.
            fail(MemWallError(.disconnected, "a direct queue was released with work still on the send queue"))
        }
        core.releaseExclusive()
        for slot in slots { for op in slot.templates { op.registration?.release() } }
        wrs.deallocate()
        sges.deallocate()
    }

    /// Whether `slot` holds a transfer not yet reported.
    public func isBusy(slot: Int) -> Bool {
        slot >= 0 && slot < depth && slots[slot].prepared != nil
    }

    /// Posts `prepared` (prepared by this queue's transport, every descriptor
    /// aimed at this queue's peer) into the free `slot`; its work requests go
    /// to the NIC now.
    /// - Throws: `invalidArgument` for a slot out of range or busy, or a transfer
    ///   of another transport or peer; `outOfBounds` when the send queue has no
    ///   room for it (reap first); the closing error once the connection failed.
    public func post(_ prepared: PreparedTransfer, slot: Int) throws(MemWallError) {
        if let closed { throw closed }
        guard slot >= 0, slot < depth else {
            throw .invalid("slot", slot, expected: "0..<\(depth) (the queue's depth)")
        }
        guard slots[slot].prepared == nil else {
            throw MemWallError(.invalidArgument, "slot \(slot) still holds a transfer in flight; post into a slot once its completion was reaped")
        }
        if slots[slot].bound !== prepared {
            try bind(prepared, to: slot)
        }
        let n = slots[slot].templates.count
        guard workRequests + n + 1 <= core.depth else {
            throw MemWallError(.outOfBounds,
                "the send queue holds \(workRequests) work requests of \(core.depth); reap completions before posting \(n) more")
        }
        let queueWasIdle = workRequests == 0
        for k in 0 ..< n {
            let op = slots[slot].templates[k]
            sinceSignal += 1
            let isLast = k == n - 1
            let signal = isLast && (queueWasIdle || sinceSignal >= core.signalInterval)
            if signal { sinceSignal = 0 }
            op.encode(into: wrs, sges, at: k, id: UInt64(slot), signal: signal, chained: !isLast)
        }
        slots[slot].prepared = prepared
        slots[slot].postedAt = MonotonicClock.nanoseconds()
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        let rc = ibv_post_send(core.queuePair.qp, wrs, &bad)
        guard rc == 0 else {
            slots[slot].prepared = nil
            let e = MemWallError(.disconnected, "posting to \(core.peerName) failed; connection closed",
                                 function: "ibv_post_send", errno: Errno(rawValue: rc))
            fail(e)
            throw e
        }
        if sinceSignal == 0 { signalledOutstanding += 1 }
        workRequests += n
        order[(orderHead + inFlight) % depth] = slot
        inFlight += 1
    }

    /// Resolves `prepared`'s work requests for `slot` once; a slot reposted with
    /// the same transfer reuses them.
    private func bind(_ prepared: PreparedTransfer, to slot: Int) throws(MemWallError) {
        try transport.checkOwnership(prepared)
        guard let plan = prepared.plan as? RDMATransport.Plan else {
            throw MemWallError(.invalidArgument, "transfer was not prepared by '\(transport.name)'")
        }
        guard plan.groups.count == 1, let group = plan.groups.first, group.connection === connection else {
            throw MemWallError(.invalidArgument,
                "a direct queue posts to one peer (\(core.peerName)); this transfer names \(plan.groups.count == 1 ? "another peer" : "\(plan.groups.count) peers")")
        }
        guard group.templates.count < core.depth else {
            throw .invalid("descriptor count", group.templates.count, expected: "fewer than the send-queue depth \(core.depth)")
        }
        // A bound slot counts as a use of its registrations for as long as it
        // stays bound, so the transport refuses to deregister them meanwhile
        // and a repost never carries a stale lkey; no per-post bookkeeping.
        for op in group.templates { op.registration?.retain() }
        for op in slots[slot].templates { op.registration?.release() }
        slots[slot].templates = group.templates
        slots[slot].bytes = prepared.totalBytes
        slots[slot].bound = prepared
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
    /// slice ends (measured in the lab: a median READ latency of 41 µs yielding
    /// every 8 passes, 67 µs every 64, 107 µs never). When nothing else wants
    /// the CPU the yield returns at once. 0 never yields, for a core dedicated
    /// to polling a hardware NIC.
    /// - Returns: Slots reported.
    @discardableResult
    public func reap<E: Error>(waitingFor minimum: Int = 1, yieldEvery: Int = 8,
                               _ handler: (Completion) throws(E) -> Void) throws(E) -> Int {
        var reported = 0
        var empty = 0
        while true {
            let n = try takeCompletions(handler: handler)
            reported += n
            if reported >= minimum || inFlight == 0 { return reported }
            idlePasses &+= 1
            if idlePasses & 1023 == 0 { watch() }
            if n == 0 {
                empty += 1
                if yieldEvery > 0 && empty % yieldEvery == 0 { sched_yield() }
            }
        }
    }

    /// Looks at the peer (disconnect events) and the oldest slot's age.
    private func watch() {
        core.watchEvents()
        if closed == nil, !core.isOpen {
            fail(MemWallError(.disconnected, "the connection to \(core.peerName) closed"))
        }
        guard closed == nil, inFlight > 0 else { return }
        let oldest = slots[order[orderHead]].postedAt
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
        if closed == nil { closed = error }
        core.fail(error)
    }

    /// One pass over the completion queue.
    private func takeCompletions<E: Error>(handler: (Completion) throws(E) -> Void) throws(E) -> Int {
        let cap = 16  // 768 bytes: a plain stack allocation (see RDMAConnection.Core.pollOnce)
        return try withUnsafeTemporaryAllocation(of: ibv_wc.self, capacity: cap) { buf throws(E) -> Int in
            guard let base = buf.baseAddress else { return 0 }
            let n = Int(ibv_poll_cq(core.queuePair.completionQueue.cq, Int32(cap), base))
            var reported = 0
            if n > 0 {
                let now = MonotonicClock.nanoseconds()
                for i in 0 ..< n {
                    let wc = base[i]
                    let ok = wc.status == IBV_WC_SUCCESS
                    // A successful completion is always that of a signalled request;
                    // after an error every request is flushed, signalled or not.
                    if ok { signalledOutstanding -= 1 }
                    if wc.wr_id == Self.fenceID {
                        workRequests -= 1
                        reported += try retire(through: nil, lastError: ok ? nil : error(of: wc, slot: nil), now: now, handler: handler)
                        continue
                    }
                    let slot = Int(wc.wr_id)
                    // Another flushed request of a slot already reported.
                    guard slot < depth, slots[slot].prepared != nil else { continue }
                    reported += try retire(through: slot, lastError: ok ? nil : error(of: wc, slot: slot), now: now, handler: handler)
                }
            }
            releaseStrandedTail()
            return reported
        }
    }

    /// The typed error of a failed completion (the closing error once closed).
    private func error(of wc: ibv_wc, slot: Int?) -> MemWallError {
        if let closed { return closed }
        guard let slot, let op = slots[slot].templates.last else {
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
        var failure = closed
        while inFlight > 0 {
            let slot = order[orderHead]
            let isLast = slot == last
            let s = slots[slot]
            guard let prepared = s.prepared else { break }
            orderHead = (orderHead + 1) % depth
            inFlight -= 1
            workRequests -= s.templates.count
            slots[slot].prepared = nil
            if isLast || last == nil, let lastError, failure == nil {
                failure = lastError
                fail(lastError)
            }
            let elapsed = now > s.postedAt ? now - s.postedAt : 0
            let result: Result<Int, MemWallError>
            if let failure {
                result = .failure(failure)
            } else {
                result = .success(s.bytes)
                if let kind = prepared.descriptors.first?.target.kind {
                    transport.costEstimator.record(target: kind, operation: prepared.operation,
                        report: TransferReport(bytes: s.bytes, descriptorCount: prepared.descriptors.count,
                                               postedAt: s.postedAt, completedAt: now))
                }
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
        guard closed == nil, inFlight > 0, signalledOutstanding == 0, workRequests < core.depth else { return }
        let slot = order[(orderHead + inFlight - 1) % depth]
        guard let op = slots[slot].templates.last else { return }
        op.fence.encode(into: wrs, sges, at: 0, id: Self.fenceID, signal: true, chained: false)
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        let rc = ibv_post_send(core.queuePair.qp, wrs, &bad)
        guard rc == 0 else {
            fail(MemWallError(.disconnected, "posting to \(core.peerName) failed; connection closed",
                              function: "ibv_post_send", errno: Errno(rawValue: rc)))
            return
        }
        signalledOutstanding += 1
        workRequests += 1
    }
}
