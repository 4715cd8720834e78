#if canImport(Glibc)
import Glibc
#endif
import CIBVerbs
import CRDMACM
import MemWallCore
import Synchronization
import Transport

/// The connecting side of one RDMA connection: posts one-sided READ/WRITE
/// work requests on an established RC queue pair and turns completions into
/// descriptor results.
///
/// Posting is bounded by the send-queue depth; descriptors beyond it wait in
/// a software backlog and go out as completions free slots.
///
/// Selective signalling: RC completes in order, so one signalled completion
/// retires every unsignalled work request before it. A work request asks for a
/// completion when it is the `signalInterval`-th since the last one that did,
/// or when it ends a post onto an empty send queue (a lone request, as in a
/// latency loop, completes by itself). A post that ends unsignalled behind
/// others is retired by a later signalled one; if none follows — every
/// signalled request retired, the caller posts nothing more — the poller posts
/// one signalled zero-length fence behind it. A stream of one-message posts
/// thus costs one completion per `signalInterval` messages, as perftest's
/// `--cq-mod` does, instead of one each.
final class RDMAConnection: RemoteConnectionHandle {
    /// One work request: a descriptor, or a notification (`request == nil`).
    struct Operation: Sendable {
        let request: TransferRequest?
        let index: Int
        let opcode: Kind
        let localAddress: UInt64
        let lkey: UInt32
        let length: Int
        let remoteAddress: UInt64
        let rkey: UInt32
        let immediate: UInt32
        let registration: LocalRegistration?

        enum Kind: Sendable { case read, write, notify }

        func finish(_ r: Result<Int, MemWallError>) {
            guard let request else { return }
            request.complete(descriptor: index, r, releasing: registration?.use)
        }

        /// Writes this operation as work request `k` of the list at `wrs` (its
        /// scatter entry at `sges[k]`), linked to entry `k + 1` when `chained`.
        func encode(into wrs: UnsafeMutablePointer<ibv_send_wr>, _ sges: UnsafeMutablePointer<ibv_sge>, at k: Int,
                    id: UInt64, signal: Bool, chained: Bool) {
            sges[k] = ibv_sge(addr: localAddress, length: UInt32(length), lkey: lkey)
            var wr = ibv_send_wr()
            wr.wr_id = id
            wr.next = chained ? wrs + (k + 1) : nil
            wr.sg_list = length > 0 ? sges + k : nil
            wr.num_sge = length > 0 ? 1 : 0
            switch opcode {
            case .read: wr.opcode = IBV_WR_RDMA_READ
            case .write: wr.opcode = IBV_WR_RDMA_WRITE
            case .notify:
                wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM
                wr.imm_data = immediate.bigEndian
            }
            wr.send_flags = signal ? IBV_SEND_SIGNALED.rawValue : 0
            wr.wr.rdma.remote_addr = remoteAddress
            wr.wr.rdma.rkey = rkey
            wrs[k] = wr
        }

        /// A signalled zero-length operation of the same kind at the same remote
        /// address and key as `self` (so it needs no rights `self` did not):
        /// its completion retires everything posted before it.
        var fence: Operation {
            Operation(request: nil, index: 0, opcode: opcode == .read ? .read : .write, localAddress: 0, lkey: 0, length: 0,
                      remoteAddress: remoteAddress, rkey: rkey, immediate: 0, registration: nil)
        }

        /// This prepared operation, posted for `request` (counts as in flight on its registration).
        func bound(to request: TransferRequest) -> Operation {
            registration?.retain()
            return Operation(request: request, index: index, opcode: opcode, localAddress: localAddress, lkey: lkey, length: length,
                             remoteAddress: remoteAddress, rkey: rkey, immediate: immediate, registration: registration)
        }
    }

    private struct Posted: Sendable {
        let seq: UInt64
        let operation: Operation
        let postedAt: UInt64
    }

    /// A notification to post after a request's work: WRITE_WITH_IMM of `value` at `address`/`key`.
    struct Notification: Sendable {
        let address: UInt64
        let key: UInt32
        let value: UInt32
    }

    private struct State: Sendable {
        var backlog: [Operation] = []
        var backlogHead = 0
        var fifo: [Posted] = []
        var fifoHead = 0
        var nextSeq: UInt64 = 1
        /// Sequence number of the newest signalled work request (0: none yet).
        var lastSignalled: UInt64 = 0
        /// Fences posted so far (for tests and reports).
        var fences = 0
        /// A direct queue drives the queue pair; general posts are refused.
        var claimedByDirectQueue = false
        var closed: MemWallError?
        var closedAt: UInt64 = 0
        var sinceSignal = 0
        /// Never-posted operations failed by a close, finished once the lock is dropped.
        var orphans: [Operation] = []

        var outstanding: Int { fifo.count - fifoHead }
        var backlogCount: Int { backlog.count - backlogHead }
    }

    /// How the connection learns that the peer went away.
    enum Control: Sendable {
        /// librdmacm events (DISCONNECTED) on this channel.
        case connectionManager(CMEventChannel)
        /// End of stream on the socket the queue pairs were exchanged over.
        case socket(Int32)
    }

    final class Core: Sendable {
        let queuePair: QueuePair
        let control: Control
        let peerName: String
        let depth: Int
        let signalInterval: Int
        let timeout: UInt64
        let busyPoll: Bool
        private let state = Mutex(State())
        // Scratch work requests, used only while `state` is locked.
        nonisolated(unsafe) private let wrs: UnsafeMutablePointer<ibv_send_wr>
        nonisolated(unsafe) private let sges: UnsafeMutablePointer<ibv_sge>
        private let disconnectIssued = Atomic<Bool>(false)
        /// True while the newest posted work request is unsignalled: only then can
        /// work be stranded, so an idle poll checks this instead of taking the lock.
        private let newestUnsignalled = Atomic<Bool>(false)
        /// Mirrors `claimedByDirectQueue` for the poller: the direct queue reaps
        /// this completion queue itself, so general polling must not take its entries.
        private let directQueueOwnsCompletions = Atomic<Bool>(false)

        init(queuePair: QueuePair, control: Control, peerName: String, options: RemoteTransportOptions) {
            self.queuePair = queuePair
            self.control = control
            self.peerName = peerName
            self.depth = options.sendQueueDepth
            self.signalInterval = min(options.signalInterval, options.sendQueueDepth)
            self.timeout = options.operationTimeout.nanosecondsClamped
            self.busyPoll = options.busyPoll
            wrs = .allocate(capacity: depth)
            sges = .allocate(capacity: depth)
        }

        deinit {
            wrs.deallocate()
            sges.deallocate()
            if case .socket(let fd) = control { Glibc.close(fd) }
        }

        var isOpen: Bool { state.withLock { $0.closed == nil } }
        /// Zero-length fences posted to retire stranded unsignalled work.
        var fenceCount: Int { state.withLock { $0.fences } }
        var isDrained: Bool { state.withLock { $0.closed != nil && $0.outstanding == 0 } }

        /// Queues `templates` bound to `request` (and the notification after
        /// them) and posts as many as the send queue takes.
        func submit(_ templates: [Operation], for request: TransferRequest, notification: Notification?) {
            let err = state.withLock { s -> MemWallError? in
                if let c = s.closed { return c }
                if s.claimedByDirectQueue {
                    return MemWallError(.invalidArgument,
                        "the connection to \(peerName) is driven by an RDMADirectQueue; post through it, or release it first")
                }
                for t in templates { s.backlog.append(t.bound(to: request)) }
                if let n = notification {
                    s.backlog.append(Operation(request: nil, index: 0, opcode: .notify, localAddress: 0, lkey: 0, length: 0,
                                               remoteAddress: n.address, rkey: n.key, immediate: n.value, registration: nil))
                }
                pump(&s)
                return nil
            }
            if let err {
                // Closed: nothing was queued; each descriptor fails with the reason.
                for t in templates { t.bound(to: request).finish(.failure(err)) }
            }
            finishOrphans()
        }

        /// Hands the queue pair to a direct queue: nothing may be in flight or queued.
        func claimExclusive() throws(MemWallError) {
            let problem = state.withLock { s -> MemWallError? in
                if let c = s.closed { return c }
                if s.claimedByDirectQueue {
                    return MemWallError(.invalidArgument, "the connection to \(peerName) already has a direct queue; release it first")
                }
                if s.outstanding > 0 || s.backlogCount > 0 {
                    return MemWallError(.invalidArgument,
                        "the connection to \(peerName) has \(s.outstanding + s.backlogCount) work requests in flight; wait for them before creating a direct queue")
                }
                s.claimedByDirectQueue = true
                directQueueOwnsCompletions.store(true, ordering: .releasing)
                return nil
            }
            if let problem { throw problem }
        }

        /// Gives the queue pair back to general posts.
        func releaseExclusive() {
            state.withLock { s in
                s.claimedByDirectQueue = false
                directQueueOwnsCompletions.store(false, ordering: .releasing)
            }
        }

        /// Removes not-yet-posted descriptors of `request`; they end as cancelled.
        func purge(_ request: TransferRequest) {
            let removed = state.withLock { s -> [Operation] in
                var kept: [Operation] = []
                var out: [Operation] = []
                for op in s.backlog[s.backlogHead...] {
                    if op.request === request { out.append(op) } else { kept.append(op) }
                }
                s.backlog = kept
                s.backlogHead = 0
                return out
            }
            for op in removed { op.finish(.failure(MemWallError(.cancelled, "cancelled before it was posted"))) }
        }

        /// Posts from the backlog while the send queue has room. Called with the lock held.
        private func pump(_ s: inout State) {
            while s.closed == nil && s.backlogCount > 0 && s.outstanding < depth {
                let n = min(depth - s.outstanding, s.backlogCount)
                let now = CoarseClock.nanoseconds()
                let queueWasEmpty = s.outstanding == 0
                for k in 0 ..< n {
                    let op = s.backlog[s.backlogHead + k]
                    let seq = s.nextSeq
                    s.nextSeq += 1
                    s.sinceSignal += 1
                    let isLast = k == n - 1
                    let signal = s.sinceSignal >= signalInterval || (isLast && queueWasEmpty)
                    if signal {
                        s.sinceSignal = 0
                        s.lastSignalled = seq
                    }
                    op.encode(into: wrs, sges, at: k, id: seq, signal: signal, chained: !isLast)
                    s.fifo.append(Posted(seq: seq, operation: op, postedAt: now))
                }
                s.backlogHead += n
                if s.backlogHead == s.backlog.count { s.backlog.removeAll(keepingCapacity: true); s.backlogHead = 0 }
                newestUnsignalled.store(s.lastSignalled != s.nextSeq - 1, ordering: .relaxed)
                var bad: UnsafeMutablePointer<ibv_send_wr>?
                let rc = ibv_post_send(queuePair.qp, wrs, &bad)
                if rc != 0 {
                    // Requests from `bad` on were not posted; everything after is refused, and the
                    // connection is closed because the queue pair's state is no longer known.
                    let e = MemWallError(.disconnected, "posting to \(peerName) failed; connection closed",
                                         function: "ibv_post_send", errno: Errno(rawValue: rc))
                    close(&s, e)
                    return
                }
            }
        }

        /// Marks the connection closed; what was never posted fails now, posted
        /// work fails as its flush completions arrive.
        private func close(_ s: inout State, _ error: MemWallError) {
            guard s.closed == nil else { return }
            s.closed = error
            s.closedAt = CoarseClock.nanoseconds()
            s.orphans.append(contentsOf: s.backlog[s.backlogHead...])
            s.backlog = []
            s.backlogHead = 0
        }

        /// Finishes what a close left behind; called without the lock, since
        /// finishing resumes waiters that may post again.
        private func finishOrphans() {
            let (ops, e) = state.withLock { s -> ([Operation], MemWallError?) in
                defer { s.orphans = [] }
                return (s.orphans, s.closed)
            }
            guard let e else { return }
            for op in ops { op.finish(.failure(e)) }
        }

        /// Closes from outside: stops new work and moves the queue pair to the error state.
        func fail(_ error: MemWallError) {
            state.withLock { close(&$0, error) }
            finishOrphans()
            if !disconnectIssued.exchange(true, ordering: .acquiringAndReleasing) {
                // The QP goes to the error state: the NIC stops, and posted work is flushed.
                queuePair.moveToError()
                if case .socket(let fd) = control { shutdown(fd, SocketIO.shutdownBoth) }
            }
        }

        /// Polls the completion queue once; returns the number of completions handled.
        ///
        /// Retired operations are finished under the connection's lock: finishing
        /// only records the result in the request and resumes its waiters (which
        /// run elsewhere), so no lock is taken that could lead back here, and the
        /// hot path allocates nothing.
        @discardableResult
        func pollOnce() -> Int {
            // 16 completions (768 bytes) stay under the standard library's 1 KiB
            // limit for a plain stack allocation; above it every call pays a
            // runtime check of the stack bounds.
            let cap = 16
            if directQueueOwnsCompletions.load(ordering: .acquiring) { return 0 }
            return withUnsafeTemporaryAllocation(of: ibv_wc.self, capacity: cap) { buf -> Int in
                guard let base = buf.baseAddress else { return 0 }
                let n = Int(ibv_poll_cq(queuePair.completionQueue.cq, Int32(cap), base))
                if n < 0 { return 0 }
                if n == 0 && !newestUnsignalled.load(ordering: .relaxed) { return 0 }
                state.withLock { s in
                    for i in 0 ..< n {
                        let wc = base[i]
                        retire(&s, upTo: wc.wr_id, status: wc.status, vendor: wc.vendor_err)
                    }
                    if n > 0 { pump(&s) }
                    fenceIfStranded(&s)
                }
                finishOrphans()
                return n
            }
        }

        /// Posts a signalled fence when the send queue holds only unsignalled work
        /// that nothing will ever retire (see the type's comment). Lock held.
        private func fenceIfStranded(_ s: inout State) {
            guard s.closed == nil, s.backlogCount == 0, s.outstanding > 0, s.outstanding < depth,
                  s.lastSignalled < s.fifo[s.fifoHead].seq, let last = s.fifo.last else { return }
            s.backlog.append(last.operation.fence)
            s.fences += 1
            s.sinceSignal = signalInterval
            pump(&s)
        }

        private func retire(_ s: inout State, upTo seq: UInt64, status: ibv_wc_status, vendor: UInt32) {
            while s.fifoHead < s.fifo.count && s.fifo[s.fifoHead].seq <= seq {
                let p = s.fifo[s.fifoHead]
                s.fifoHead += 1
                if p.seq == seq && status != IBV_WC_SUCCESS {
                    let e = Self.error(status, vendor: vendor, op: p.operation, peer: peerName)
                    p.operation.finish(.failure(s.closed ?? e))
                    if s.closed == nil { close(&s, e) }
                } else if let c = s.closed {
                    p.operation.finish(.failure(c))
                } else {
                    p.operation.finish(.success(p.operation.length))
                }
            }
            // Retired entries still hold their requests and registrations: drop
            // them all once drained, so a finished request is not kept alive by the
            // connection, and compact under steady load.
            if s.fifoHead == s.fifo.count {
                s.fifo.removeAll(keepingCapacity: true)
                s.fifoHead = 0
            } else if s.fifoHead > 256 && s.fifoHead * 2 > s.fifo.count {
                s.fifo.removeFirst(s.fifoHead)
                s.fifoHead = 0
            }
        }

        static func error(_ status: ibv_wc_status, vendor: UInt32, op: Operation, peer: String) -> MemWallError {
            let what = "RDMA \(op.opcode) of \(op.length) bytes at remote address 0x\(String(op.remoteAddress, radix: 16)) (rkey 0x\(String(op.rkey, radix: 16)))"
            let why = String(cString: ibv_wc_status_str(status))
            switch status {
            case IBV_WC_REM_ACCESS_ERR, IBV_WC_REM_INV_REQ_ERR, IBV_WC_REM_OP_ERR:
                return MemWallError(.remoteAccess,
                    "\(peer) refused the \(what): \(why) — a bad rkey, a range outside the exported region, or access it was not exported for; the connection is closed (the queue pair is in the error state)")
            case IBV_WC_RETRY_EXC_ERR, IBV_WC_RNR_RETRY_EXC_ERR:
                return MemWallError(.disconnected, "\(peer) stopped answering the \(what) (\(why)); the peer went away or is unreachable")
            case IBV_WC_WR_FLUSH_ERR:
                return MemWallError(.disconnected, "the \(what) was flushed: the connection to \(peer) is closed")
            case IBV_WC_LOC_PROT_ERR, IBV_WC_LOC_LEN_ERR:
                return MemWallError(.invalidArgument, "the local side of the \(what) is not covered by its registration (\(why))")
            default:
                return MemWallError(.systemCall, "the \(what) failed: \(why) (vendor error \(vendor))")
            }
        }

        /// Fails everything when the oldest posted request is older than the timeout.
        func checkTimeout() {
            let late = state.withLock { s -> Bool in
                guard s.closed == nil, s.fifoHead < s.fifo.count else { return false }
                // Read the clock under the lock: an entry posted meanwhile must not look older than now.
                let posted = s.fifo[s.fifoHead].postedAt
                let now = CoarseClock.nanoseconds()
                return now > posted && now - posted > timeout
            }
            if late {
                fail(MemWallError(.timedOut,
                    "\(peerName) did not complete a posted request within \(Duration.nanoseconds(Int64(timeout))); connection closed",
                    errno: .timedOut))
            }
        }

        /// After a close, posted work that the NIC never flushed is failed after a grace period.
        func abandonIfStale(grace: UInt64) -> Bool {
            let left = state.withLock { s -> [Operation]? in
                let now = CoarseClock.nanoseconds()
                guard let c = s.closed, now >= s.closedAt, now - s.closedAt >= grace else { return nil }
                let ops = s.fifo[s.fifoHead...].map(\.operation)
                s.fifo = []
                s.fifoHead = 0
                _ = c
                return ops
            }
            guard let left else { return false }
            let e = state.withLock { $0.closed } ?? MemWallError(.disconnected, "closed")
            for op in left { op.finish(.failure(e)) }
            return true
        }

        /// The completion thread: polls, sleeps on the channel when idle, and
        /// watches the connection manager for the peer's disconnect.
        func runCompletions() {
            let cq = queuePair.completionQueue
            var idle = 0
            while true {
                if pollOnce() > 0 { idle = 0; continue }
                idle += 1
                if busyPoll && idle % 4096 != 0 { continue }
                // Waiting on the NIC, not on a thread: yield the CPU (soft-RoCE's
                // softirq may need it) a few times before sleeping on the channel.
                if !busyPoll && idle < 200 { sched_yield(); continue }
                watchEvents()
                checkTimeout()
                if isDrained || abandonIfStale(grace: 2_000_000_000) {
                    if !isOpen { return }
                }
                if busyPoll { continue }
                cq.arm()
                if pollOnce() > 0 { idle = 0; continue }
                cq.sleep(milliseconds: 20)
            }
        }

        func watchEvents() {
            switch control {
            case .connectionManager(let events):
                while let ev = events.next(milliseconds: 0) {
                    if ev.kind == RDMA_CM_EVENT_DISCONNECTED || ev.kind == RDMA_CM_EVENT_DEVICE_REMOVAL {
                        fail(MemWallError(.disconnected, "\(peerName) closed the connection (\(ev.name))"))
                    }
                }
            case .socket(let fd):
                guard isOpen else { return }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 0) > 0 else { return }
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, 0)
                if n == 0 || (n < 0 && Errno.current != .wouldBlock && Errno.current != .interrupted) {
                    fail(MemWallError(.disconnected, "\(peerName) closed the connection (its control socket ended)"))
                }
            }
        }
    }

    let core: Core
    private let thread: WorkerThread?
    /// `"rxe0/127.0.0.1:18515"`.
    let peerName: String
    /// The export table the peer sent.
    let exports: [ExportedRegionInfo]

    /// Connects (with librdmacm, or by exchanging queue-pair endpoints over a
    /// socket), receives the export table and starts polling.
    init(address: String, port: UInt16, timeout: Duration, device: VerbsDevice, domain: ProtectionDomain,
         maxReadDepth: Int, options: RemoteTransportOptions, manager: RDMAConnectionManager) throws(MemWallError) {
        let sa = try SocketAddress.ipv4(address, port: port)
        let name = "\(device.name)/\(SocketAddress.describe(sa))"
        let (qp, control, exports) = switch manager {
        case .rdmacm:
            try Self.connectWithConnectionManager(sa, name: name, timeout: timeout, device: device, domain: domain,
                                                  maxReadDepth: maxReadDepth, depth: options.sendQueueDepth)
        case .socketExchange:
            try Self.connectWithSocketExchange(sa, name: name, timeout: timeout, device: device, domain: domain,
                                               maxReadDepth: maxReadDepth, depth: options.sendQueueDepth)
        }
        self.exports = exports
        self.peerName = name
        let core = Core(queuePair: qp, control: control, peerName: name, options: options)
        self.core = core
        if options.completionThread {
            self.thread = try WorkerThread(name: "mw-rdma-cq") { core.runCompletions() }
        } else {
            self.thread = nil
        }
    }

    private static func connectWithConnectionManager(_ sa: sockaddr_in, name: String, timeout: Duration, device: VerbsDevice,
                                                     domain: ProtectionDomain, maxReadDepth: Int, depth: Int)
        throws(MemWallError) -> (QueuePair, Control, [ExportedRegionInfo]) {
        var sa = sa
        let deadline = MonotonicClock.nanoseconds() &+ timeout.nanosecondsClamped
        let ms = Int32(clamping: max(timeout.nanosecondsClamped / 1_000_000, 1))
        let channel = try CMEventChannel()
        let id = try CMIdentifier(channel: channel)
        // For a loopback destination, bind the source to loopback as well, so the
        // connection manager picks the device bound to lo.
        let isLoopback = UInt32(bigEndian: sa.sin_addr.s_addr) >> 24 == 127
        var src = sa
        src.sin_port = 0
        _ = try withUnsafeMutablePointer(to: &sa) { p throws(MemWallError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp throws(MemWallError) in
                try withUnsafeMutablePointer(to: &src) { q throws(MemWallError) in
                    try q.withMemoryRebound(to: sockaddr.self, capacity: 1) { srcp throws(MemWallError) in
                        try CCall.minusOne(rdma_resolve_addr(id.id, isLoopback ? srcp : nil, sp, ms), "rdma_resolve_addr",
                                           "cannot resolve \(name) to an RDMA device: connect to an address of the interface an RDMA device is bound to (see `rdma link`)")
                    }
                }
            }
        }
        try channel.expect(RDMA_CM_EVENT_ADDR_RESOLVED, on: id.key, deadline: deadline, step: "address resolution", peer: name)
        guard id.deviceName == device.name else {
            throw MemWallError(.invalidArgument,
                "\(name) is reached through RDMA device '\(id.deviceName ?? "none")', not '\(device.name)'; use that device or another address")
        }
        try CCall.minusOne(rdma_resolve_route(id.id, ms), "rdma_resolve_route",
                           "cannot resolve a route to \(name); a device bound to lo has none — bind it to an interface with a routable address (`rdma link add rxe0 type rxe netdev IFACE`), or use the socket exchange (--cm socket)")
        try channel.expect(RDMA_CM_EVENT_ROUTE_RESOLVED, on: id.key, deadline: deadline, step: "route resolution", peer: name)

        let cq = try CompletionQueue(device: device, entries: depth + 8)
        let qp = try QueuePair(identifier: id, domain: domain, completionQueue: cq, sendDepth: depth, receiveDepth: 4)
        // The export table arrives as the first SEND; its buffer is posted before connecting.
        let tableRegion = try MemoryRegion.allocate(byteCount: ExportTableCodec.maximumBytes)
        let tableMR = try VerbsMemoryRegistration(domain: domain, region: tableRegion, remoteAccess: [])
        try qp.postReceive(id: 0, address: tableRegion.baseAddress, length: tableRegion.byteCount, lkey: tableMR.lkey)

        var param = rdma_conn_param()
        param.initiator_depth = UInt8(clamping: maxReadDepth)
        param.responder_resources = UInt8(clamping: maxReadDepth)
        param.retry_count = 7
        param.rnr_retry_count = 7
        try CCall.minusOne(rdma_connect(id.id, &param), "rdma_connect", "cannot connect to \(name)")
        try channel.expect(RDMA_CM_EVENT_ESTABLISHED, on: id.key, deadline: deadline, step: "connection", peer: name)

        // The queue pair is usable from here on; first, wait for the table.
        var wc = ibv_wc()
        var got = false
        while MonotonicClock.nanoseconds() < deadline {
            let n = ibv_poll_cq(cq.cq, 1, &wc)
            if n > 0 { got = true; break }
            if n < 0 { break }
            // The NIC delivers the table; no thread of ours could wake us, and
            // this runs once per connect: poll the CQ at a gentle pace.
            usleep(50)
        }
        guard got else {
            qp.moveToError()
            throw MemWallError(.timedOut, "\(name) accepted but sent no export table within \(timeout); is it a MemWall peer?")
        }
        guard wc.status == IBV_WC_SUCCESS else {
            qp.moveToError()
            throw MemWallError(.disconnected, "receiving the export table from \(name) failed: \(String(cString: ibv_wc_status_str(wc.status)))")
        }
        let exports = try ExportTableCodec.decode(UnsafeRawBufferPointer(start: tableRegion.baseAddress, count: Int(wc.byte_len)), peer: name)
        return (qp, .connectionManager(channel), exports)
    }

    private static func connectWithSocketExchange(_ sa: sockaddr_in, name: String, timeout: Duration, device: VerbsDevice,
                                                  domain: ProtectionDomain, maxReadDepth: Int, depth: Int)
        throws(MemWallError) -> (QueuePair, Control, [ExportedRegionInfo]) {
        let mtu = try device.activeMTU()
        let fd = try SocketIO.makeStreamSocket()
        do throws(MemWallError) {
            try SocketIO.connect(fd, to: sa, timeout: timeout)
            // The local GID is the one of the address this socket left from (lo for
            // 127.0.0.1, the NIC's address towards another host).
            let local = SocketAddress.local(fd)
            guard let (gidIndex, gid) = device.gidIndex(for: local.sin_addr) else {
                throw MemWallError(.unsupported,
                    "\(device.name) has no GID for \(SocketAddress.describe(local)), the local address towards \(SocketAddress.describe(sa)); use the RDMA device bound to that interface")
            }
            SocketIO.setReceiveTimeout(fd, timeout)
            let cq = try CompletionQueue(device: device, entries: depth + 8)
            let qp = try QueuePair(domain: domain, completionQueue: cq, sendDepth: depth, receiveDepth: 4)
            let psn = UInt32.random(in: 0 ..< (1 << 24))
            let mine = qp.endpoint(psn: psn, gid: gid)
            try RDMAExchange.sendHello(fd, mine, peer: name)
            let (remote, exports) = try RDMAExchange.receiveReply(fd, peer: name, timeout: timeout)
            try qp.connect(to: remote, localPSN: psn, gidIndex: gidIndex, mtu: mtu, readDepth: maxReadDepth)
            SocketIO.setReceiveTimeout(fd, nil)
            return (qp, .socket(fd), exports)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    deinit {
        core.fail(MemWallError(.disconnected, "the connection to \(peerName) was released"))
        thread?.join()
        if thread == nil { drainWithoutThread() }
    }

    var isConnected: Bool { core.isOpen }

    /// Whether a thread polls this connection's completions (else the caller does).
    var hasCompletionThread: Bool { thread != nil }

    func disconnect() {
        core.fail(MemWallError(.disconnected, "the connection to \(peerName) was closed by this side"))
        thread?.join()
        if thread == nil { drainWithoutThread() }
    }

    /// Caller-polled mode: one pass over the CQ; every 1024th empty pass also
    /// looks at the connection events and the timeout, so that a spinning caller
    /// makes no system call per pass (perftest's loop makes none either).
    @discardableResult
    func progress() -> Int {
        let n = core.pollOnce()
        if n == 0 && idlePasses.add(1, ordering: .relaxed).newValue & 1023 == 0 {
            core.watchEvents()
            core.checkTimeout()
        }
        return n
    }

    private let idlePasses = Atomic<Int>(0)

    private func drainWithoutThread() {
        let until = MonotonicClock.nanoseconds() &+ 2_500_000_000
        while !core.isDrained && MonotonicClock.nanoseconds() < until {
            // Draining what the NIC still owes at close: a CQ poll, not a thread wait.
            if core.pollOnce() == 0 { usleep(100) }
        }
        _ = core.abandonIfStale(grace: 0)
    }

    func submit(_ templates: [Operation], for request: TransferRequest, notification: Notification?) {
        core.submit(templates, for: request, notification: notification)
    }
    func purge(_ request: TransferRequest) { core.purge(request) }
}

/// The kernel's coarse monotonic clock (tick resolution, read from the vDSO
/// without touching a clock device): enough for second-scale timeouts, and
/// cheap on every post even where the precise clock is an emulated device.
enum CoarseClock {
    @inline(__always)
    static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
