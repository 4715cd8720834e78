#if canImport(Glibc)
import Glibc
#endif
import CIBVerbs
import CRDMACM
import MemWallCore
import Synchronization
import Transport

/// The listening side of RDMA connections.
///
/// A thread accepts connection requests, gives each connection its own
/// completion queue and RC queue pair with receive slots for notifications,
/// and sends the export table as the first message once the connection is
/// established. The data path needs nothing from this side: peers READ and
/// WRITE the exported memory directly, and only WRITE_WITH_IMM notifications
/// reach software — after the data before them has landed.
final class RDMAListener: Sendable {
    /// One accepted connection.
    final class Accepted: Sendable {
        let queuePair: QueuePair
        /// The registered buffer the export table is sent from (rdmacm only).
        let table: VerbsMemoryRegistration?
        let peer: String
        let receiveSlots: Int
        let disconnected = Atomic<Bool>(false)

        init(queuePair: QueuePair, table: VerbsMemoryRegistration?, peer: String, receiveSlots: Int) {
            self.queuePair = queuePair
            self.table = table
            self.peer = peer
            self.receiveSlots = receiveSlots
        }

        func sendTable(length: Int) throws(MemWallError) {
            guard let table else { return }
            var sge = ibv_sge(addr: UInt64(UInt(bitPattern: table.region.baseAddress)), length: UInt32(length), lkey: table.lkey)
            var wr = ibv_send_wr()
            wr.wr_id = UInt64.max
            wr.opcode = IBV_WR_SEND
            wr.send_flags = IBV_SEND_SIGNALED.rawValue
            var bad: UnsafeMutablePointer<ibv_send_wr>?
            let rc = withUnsafeMutablePointer(to: &sge) { s -> Int32 in
                wr.sg_list = s
                wr.num_sge = 1
                return ibv_post_send(queuePair.qp, &wr, &bad)
            }
            try CCall.returnsErrno(rc, "ibv_post_send", "cannot send the export table to \(peer)")
        }

        /// Handles this connection's completions: notifications are delivered and their receive slot reposted.
        func poll(into notifications: NotificationQueue) -> Int {
            withUnsafeTemporaryAllocation(of: ibv_wc.self, capacity: 16) { buf -> Int in
                guard let wcs = buf.baseAddress else { return 0 }
                let n = Int(ibv_poll_cq(queuePair.completionQueue.cq, 16, wcs))
                guard n > 0 else { return 0 }
                for wc in UnsafeBufferPointer(start: wcs, count: n)
                where wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM && wc.status == IBV_WC_SUCCESS {
                    // A peer flooding notifications nobody takes is disconnected, not buffered without end.
                    guard notifications.push(RemoteNotification(peer: peer, value: UInt32(bigEndian: wc.imm_data))) else {
                        queuePair.moveToError()
                        return n
                    }
                    try? queuePair.postReceive(id: 1, address: nil, length: 0, lkey: 0)
                }
                return n
            }
        }
    }

    private final class Core: Sendable {
        let served: ListenerContext
        let channel: CMEventChannel
        let listenID: CMIdentifier
        let accepted = Mutex<[UInt: Accepted]>([:])

        init(served: ListenerContext, channel: CMEventChannel, listenID: CMIdentifier) {
            self.served = served
            self.channel = channel
            self.listenID = listenID
        }

        /// One look at the connection manager's events.
        func pass(eager: Bool) -> (busy: Bool, sources: [Int32]) {
            guard let ev = channel.next(milliseconds: eager ? 0 : 5) else { return (false, [channel.eventDescriptor]) }
            handle(ev)
            return (true, [channel.eventDescriptor])
        }

        /// Closing: disconnect every peer, then let the objects go (QP before its identifier).
        func teardown() {
            let conns = accepted.withLock { a -> [Accepted] in defer { a = [:] }; return Array(a.values) }
            for c in conns { c.queuePair.moveToError() }
        }

        private func handle(_ ev: CMEvent) {
            switch ev.kind {
            case RDMA_CM_EVENT_CONNECT_REQUEST:
                guard let raw = UnsafeMutablePointer<rdma_cm_id>(bitPattern: ev.id) else { return }
                let id = CMIdentifier(adopting: raw, channel: channel)
                do throws(MemWallError) {
                    let conn = try accept(id)
                    accepted.withLock { $0[ev.id] = conn }
                } catch {
                    _ = rdma_reject(raw, nil, 0)
                }
            case RDMA_CM_EVENT_ESTABLISHED:
                let (conn, table) = (accepted.withLock { $0[ev.id] }, ExportTableCodec.encode(served.exports.snapshot))
                guard let conn, let buffer = conn.table else { return }
                let n = min(table.count, buffer.region.byteCount)
                buffer.region.withUnsafeMutableBytes(offset: 0, length: n) { dst in
                    table.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0 ..< n])) }
                }
                if (try? conn.sendTable(length: max(n, 4))) == nil { conn.queuePair.moveToError() }
            case RDMA_CM_EVENT_DISCONNECTED, RDMA_CM_EVENT_TIMEWAIT_EXIT:
                if let conn = accepted.withLock({ $0.removeValue(forKey: ev.id) }) {
                    if !conn.disconnected.exchange(true, ordering: .relaxed) { conn.queuePair.moveToError() }
                }
            default:
                break
            }
        }

        private func accept(_ id: CMIdentifier) throws(MemWallError) -> Accepted {
            let qp = try served.acceptedQueuePair(on: id)
            let tableRegion = try MemoryRegion.allocate(byteCount: ExportTableCodec.maximumBytes)
            let table = try VerbsMemoryRegistration(domain: served.domain, region: tableRegion, remoteAccess: [])
            var peer = "peer"
            if let sa = rdma_get_peer_addr(id.id), sa.pointee.sa_family == sa_family_t(AF_INET) {
                peer = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress.describe($0.pointee) }
            }
            var param = rdma_conn_param()
            param.responder_resources = UInt8(clamping: served.maxReadDepth)
            param.initiator_depth = UInt8(clamping: served.maxReadDepth)
            param.rnr_retry_count = 7
            try CCall.minusOne(rdma_accept(id.id, &param), "rdma_accept", "cannot accept the connection from \(peer)")
            return Accepted(queuePair: qp, table: table, peer: peer, receiveSlots: ListenerContext.receiveSlots)
        }
    }

    private let service: ListenerThread
    /// The bound port.
    let port: UInt16

    /// Binds to `address:port` on `served.device` and starts accepting.
    init(address: String, port: UInt16, serving served: ListenerContext) throws(MemWallError) {
        var sa = try SocketAddress.ipv4(address, port: port)
        let where_ = SocketAddress.describe(sa)
        let channel = try CMEventChannel()
        let id = try CMIdentifier(channel: channel)
        _ = try withUnsafeMutablePointer(to: &sa) { p throws(MemWallError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp throws(MemWallError) in
                try CCall.minusOne(rdma_bind_addr(id.id, sp), "rdma_bind_addr",
                                   "cannot bind an RDMA listener to \(where_); is the port in use, or is no RDMA device on that address?")
            }
        }
        try CCall.minusOne(rdma_listen(id.id, 64), "rdma_listen", "cannot listen on \(where_)")
        self.port = UInt16(bigEndian: rdma_get_src_port(id.id))
        let core = Core(served: served, channel: channel, listenID: id)
        self.service = try ListenerThread(notifications: served.notifications,
                                          connections: { core.accepted.withLock { Array($0.values) } },
                                          pass: core.pass(eager:), teardown: core.teardown)
    }

    /// Stops accepting and disconnects every accepted peer.
    func stop() { service.stop() }

    deinit { stop() }
}

/// What both RDMA listeners (rdmacm and the socket exchange) serve every
/// accepted peer from, and the one way they give a peer its queue pair.
struct ListenerContext: Sendable {
    /// Where every peer's completion queue, queue pair and table buffer are made.
    let domain: ProtectionDomain
    /// Sent to each peer once it is connected.
    let exports: ExportTable
    /// Where peers' WRITE_WITH_IMM notifications are delivered.
    let notifications: NotificationQueue
    /// RDMA READs a peer may have outstanding against this side.
    let maxReadDepth: Int

    /// The device `domain` lives on: taken from it, so the two cannot disagree.
    var device: VerbsDevice { domain.device }

    /// Notification receive slots an accepted peer's queue pair keeps posted.
    static let receiveSlots = 128

    /// An accepted peer's completion queue and queue pair — on rdmacm's
    /// `identifier`, or on the domain (socket exchange) when there is none —
    /// with every notification receive slot posted.
    func acceptedQueuePair(on identifier: CMIdentifier?) throws(MemWallError) -> QueuePair {
        let slots = Self.receiveSlots
        let cq = try CompletionQueue(device: device, entries: slots + 16)
        let qp: QueuePair
        if let identifier {
            qp = try QueuePair(identifier: identifier, domain: domain, completionQueue: cq, sendDepth: 8, receiveDepth: slots)
        } else {
            qp = try QueuePair(domain: domain, completionQueue: cq, sendDepth: 8, receiveDepth: slots)
        }
        for _ in 0 ..< slots { try qp.postReceive(id: 1, address: nil, length: 0, lkey: 0) }
        return qp
    }
}

/// The thread both RDMA listeners serve on, with its stop flag and wake pipe.
///
/// Each pass polls every accepted connection's completion queue (delivering
/// notifications) and then the listener's own sources (`pass`); after 100
/// idle passes it sleeps in poll(2) on all of them and the wake pipe
/// (``RDMAListener/sleepUntilActivity(_:notifications:sources:wake:)``).
final class ListenerThread: Sendable {
    private let stopped = Atomic<Bool>(false)
    /// ``stop()`` writes a byte here to wake the thread from its idle sleep.
    private let wake: WakePipe
    private let thread = Mutex<WorkerThread?>(nil)

    /// Starts serving.
    /// - Parameters:
    ///   - connections: The accepted connections now.
    ///   - pass: Handles the listener's own sources once, without waiting when
    ///     `eager`; says whether it did anything and which descriptors to sleep on.
    ///   - teardown: Runs on the thread once stopped (disconnect the peers).
    /// - Throws: `systemCall` from `pipe` or `pthread_create`.
    init(notifications: NotificationQueue, connections: @escaping @Sendable () -> [RDMAListener.Accepted],
         pass: @escaping @Sendable (_ eager: Bool) -> (busy: Bool, sources: [Int32]),
         teardown: @escaping @Sendable () -> Void) throws(MemWallError) {
        let wake = try WakePipe()
        self.wake = wake
        // The thread holds this object until it stops (``stop()``, called by the listener's deinit).
        let worker = try WorkerThread(name: "mw-rdma-listen") { [self] in
            var idle = 0
            while !stopped.load(ordering: .acquiring) {
                var busy = false
                let conns = connections()
                for c in conns where c.poll(into: notifications) > 0 { busy = true }
                let (handled, sources) = pass(busy || idle < 100)
                if busy || handled { idle = 0; continue }
                idle += 1
                // Waiting on NICs and sockets, not on a thread: yield (soft-RoCE's
                // softirq may need the CPU) a few times before sleeping in poll(2).
                if idle < 100 { sched_yield(); continue }
                RDMAListener.sleepUntilActivity(conns, notifications: notifications, sources: sources, wake: wake)
            }
            teardown()
        }
        thread.withLock { $0 = worker }
    }

    /// Stops serving and waits for the thread (and its teardown). Idempotent.
    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        wake.signal()
        thread.withLock { $0 }?.join()
    }
}

extension RDMAListener {
    /// The idle sleep of both listeners: no periodic wake-ups, so an idle
    /// server takes no CPU from its peers' traffic. Arms every accepted
    /// connection's completion queue, looks once more (a completion that came
    /// between the last poll and the arm raises no event), then sleeps in
    /// poll(2) on the listener's own `sources`, the wake pipe and every
    /// completion channel. Returns when any of them is ready; what made a
    /// source ready is handled by the caller's next pass (poll is level-triggered).
    static func sleepUntilActivity(_ conns: [Accepted], notifications: NotificationQueue, sources: [Int32], wake: WakePipe) {
        for c in conns { c.queuePair.completionQueue.arm() }
        if conns.contains(where: { $0.poll(into: notifications) > 0 }) { return }
        var fds = [pollfd(fd: wake.readDescriptor, events: Int16(POLLIN), revents: 0)]
        for fd in sources { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        let firstQueue = fds.count
        for c in conns { fds.append(pollfd(fd: c.queuePair.completionQueue.eventDescriptor, events: Int16(POLLIN), revents: 0)) }
        // The timeout is only a safety net; every source above wakes the poll.
        guard Glibc.poll(&fds, nfds_t(fds.count), 1000) > 0 else { return }
        for (i, c) in conns.enumerated() where fds[firstQueue + i].revents != 0 { c.queuePair.completionQueue.consumeEvent() }
        if fds[0].revents != 0 { wake.drain() }
    }
}

/// A non-blocking pipe that wakes a thread sleeping in poll(2).
final class WakePipe: Sendable {
    let readDescriptor: Int32
    private let writeDescriptor: Int32

    init() throws(MemWallError) {
        var fds: [Int32] = [-1, -1]
        try CCall.minusOne(pipe(&fds), "pipe", "cannot create the listener's wake-up pipe")
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readDescriptor = fds[0]
        writeDescriptor = fds[1]
    }

    /// Makes the read end readable (a full pipe is already readable).
    func signal() {
        var byte: UInt8 = 1
        _ = write(writeDescriptor, &byte, 1)
    }

    /// Empties the pipe.
    func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(readDescriptor, &buffer, buffer.count) > 0 {}
    }

    deinit {
        close(readDescriptor)
        close(writeDescriptor)
    }
}
