#if canImport(Glibc)
import Glibc
#endif
import CIBVerbs
import MemWallCore
import Synchronization
import Transport

/// How RDMA connections are set up.
public enum RDMAConnectionManager: String, Sendable, Hashable, CaseIterable {
    /// librdmacm: listen / connect / accept / disconnect, as between hosts.
    case rdmacm
    /// Queue-pair endpoints (QPN, PSN, GID) and the export table exchanged over a
    /// TCP socket, the queue pairs then moved to RTS by hand — what perftest
    /// does without `-R`. Needed where the kernel's connection manager cannot
    /// resolve a RoCE route, as for soft-RoCE bound to lo (rdma_resolve_route
    /// fails with ENODEV there, for perftest's `-R` too). The socket stays open
    /// as the control channel: its end is the peer's disconnect.
    case socketExchange = "socket"
}

/// The socket exchange's messages.
/// Hello (connector → listener): magic:u32 endpoint(24).
/// Reply (listener → connector): magic:u32 endpoint(24) tableLength:u32 table.
enum RDMAExchange {
    static let magic: UInt32 = 0x3152_574D  // "MWR1"

    static func sendHello(_ fd: Int32, _ endpoint: QueuePairEndpoint, peer: String) throws(MemWallError) {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: magic.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: endpoint.encode())
        try send(fd, bytes, peer: peer)
    }

    static func sendReply(_ fd: Int32, _ endpoint: QueuePairEndpoint, table: [UInt8], peer: String) throws(MemWallError) {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: magic.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: endpoint.encode())
        withUnsafeBytes(of: UInt32(table.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: table)
        try send(fd, bytes, peer: peer)
    }

    /// Bytes of a hello; a reply's fixed head is 4 bytes longer (the table length).
    static let helloSize = 4 + QueuePairEndpoint.wireSize

    /// Decodes a connector's hello. Total over any bytes.
    /// - Throws: `malformedInput` for a wrong size, a wrong magic, or a queue-pair
    ///   number or PSN wider than the 24 bits verbs allows.
    static func decodeHello(_ bytes: UnsafeRawBufferPointer, peer: String) throws(MemWallError) -> QueuePairEndpoint {
        guard bytes.count == helloSize, let base = bytes.baseAddress else {
            throw MemWallError(.malformedInput, "\(peer) sent a hello of \(bytes.count) bytes; it is \(helloSize)")
        }
        guard UInt32(littleEndian: base.loadUnaligned(as: UInt32.self)) == magic else {
            throw MemWallError(.malformedInput, "\(peer) is not a MemWall RDMA peer (bad hello)")
        }
        return try QueuePairEndpoint.decode(base + 4, peer: peer)
    }

    /// Decodes the fixed head of a listener's reply: its endpoint and the length of the table that follows.
    /// - Throws: `malformedInput` for a wrong size or magic, a bad endpoint, or a
    ///   table longer than ``ExportTableCodec/maximumBytes``.
    static func decodeReplyHead(_ bytes: UnsafeRawBufferPointer, peer: String) throws(MemWallError) -> (QueuePairEndpoint, tableLength: Int) {
        guard bytes.count == helloSize + 4, let base = bytes.baseAddress else {
            throw MemWallError(.malformedInput, "\(peer) sent a reply head of \(bytes.count) bytes; it is \(helloSize + 4)")
        }
        guard UInt32(littleEndian: base.loadUnaligned(as: UInt32.self)) == magic else {
            throw MemWallError(.malformedInput, "\(peer) is not a MemWall RDMA listener (bad reply); is it the TCP emulation?")
        }
        let length = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: helloSize, as: UInt32.self))
        guard length <= UInt32(ExportTableCodec.maximumBytes) else {
            throw MemWallError(.malformedInput, "\(peer) announced an export table of \(length) bytes (at most \(ExportTableCodec.maximumBytes))")
        }
        return (try QueuePairEndpoint.decode(base + 4, peer: peer), Int(length))
    }

    static func receiveHello(_ fd: Int32, peer: String) throws(MemWallError) -> QueuePairEndpoint {
        let b = try receive(fd, helloSize, peer: peer, timeout: nil)
        return try b.withUnsafeBytes { p in Result { () throws(MemWallError) in try decodeHello(p, peer: peer) } }.get()
    }

    static func receiveReply(_ fd: Int32, peer: String, timeout: Duration) throws(MemWallError) -> (QueuePairEndpoint, [ExportedRegionInfo]) {
        let head = try receive(fd, helloSize + 4, peer: peer, timeout: timeout)
        let (endpoint, length) = try head.withUnsafeBytes { p in Result { () throws(MemWallError) in try decodeReplyHead(p, peer: peer) } }.get()
        let table = try receive(fd, length, peer: peer, timeout: timeout)
        return (endpoint, try table.withUnsafeBytes { p in Result { () throws(MemWallError) in try ExportTableCodec.decode(p, peer: peer) } }.get())
    }

    private static func send(_ fd: Int32, _ bytes: [UInt8], peer: String) throws(MemWallError) {
        let r = bytes.withUnsafeBytes { SocketIO.writeFrame(.system, fd, header: $0, payload: nil) }
        if case .failure(let e) = r {
            throw MemWallError(.disconnected, "the connection to \(peer) broke during the queue-pair exchange", function: "writev", errno: e)
        }
    }

    private static func receive(_ fd: Int32, _ count: Int, peer: String, timeout: Duration?) throws(MemWallError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        guard count > 0 else { return out }
        let r = out.withUnsafeMutableBytes { SocketIO.readFully(.system, fd, $0.baseAddress.unsafelyUnwrapped, count) }
        switch r {
        case .success: return out
        case .failure(let e) where e.errno == .wouldBlock:
            throw MemWallError(.timedOut, "\(peer) did not finish the queue-pair exchange in time; is it a MemWall RDMA peer?")
        case .failure(let e):
            throw MemWallError(.disconnected, "\(peer) closed the connection during the queue-pair exchange", function: "read", errno: e.errno)
        }
    }
}

/// The listening side of the socket exchange: accepts TCP connections, builds
/// a queue pair per peer, and watches each control socket for the peer's end.
final class RDMASocketListener: Sendable {
    private final class Core: Sendable {
        let fd: Int32
        let served: ListenerContext
        let mtu: UInt32
        let accepted = Mutex<[Int32: RDMAListener.Accepted]>([:])

        init(fd: Int32, served: ListenerContext, mtu: UInt32) {
            self.fd = fd
            self.served = served
            self.mtu = mtu
        }

        deinit { Glibc.close(fd) }

        /// One look at the listening socket and every peer's control socket.
        func pass(eager _: Bool) -> (busy: Bool, sources: [Int32]) {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            for cfd in accepted.withLock({ Array($0.keys) }) { fds.append(pollfd(fd: cfd, events: Int16(POLLIN), revents: 0)) }
            guard poll(&fds, nfds_t(fds.count), 0) > 0 else { return (false, fds.map(\.fd)) }
            if fds[0].revents != 0 { acceptOne() }
            for p in fds.dropFirst() where p.revents != 0 { checkControl(p.fd) }
            return (true, fds.map(\.fd))
        }

        /// Closing: stop every peer's queue pair and close its control socket.
        func teardown() {
            let conns = accepted.withLock { a -> [(Int32, RDMAListener.Accepted)] in defer { a = [:] }; return Array(a) }
            for (cfd, c) in conns {
                c.queuePair.moveToError()
                Glibc.close(cfd)
            }
        }

        private func checkControl(_ cfd: Int32) {
            var byte: UInt8 = 0
            let n = recv(cfd, &byte, 1, 0)
            if n > 0 || (n < 0 && (Errno.current == .wouldBlock || Errno.current == .interrupted)) { return }
            // The peer went away: stop its queue pair and let it go.
            if let c = accepted.withLock({ $0.removeValue(forKey: cfd) }) { c.queuePair.moveToError() }
            Glibc.close(cfd)
        }

        private func acceptOne() {
            var sa = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let c = withUnsafeMutablePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &len) }
            }
            guard c >= 0 else { return }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            SocketIO.tune(c)
            let device = served.device
            let peer = "\(device.name)/\(SocketAddress.describe(sa))"
            SocketIO.setReceiveTimeout(c, .seconds(5))
            do throws(MemWallError) {
                let remote = try RDMAExchange.receiveHello(c, peer: peer)
                // This side's GID: the one of the address the peer reached us on.
                let local = SocketAddress.local(c)
                guard let (gidIndex, gid) = device.gidIndex(for: local.sin_addr) else {
                    throw MemWallError(.unsupported, "\(device.name) has no GID for \(SocketAddress.describe(local))")
                }
                let qp = try served.acceptedQueuePair(on: nil)
                let psn = UInt32.random(in: 0 ..< (1 << 24))
                try qp.connect(to: remote, localPSN: psn, gidIndex: gidIndex, mtu: ibv_mtu(rawValue: mtu), readDepth: served.maxReadDepth)
                // Reply only once this side is ready to receive: the peer may write at once.
                try RDMAExchange.sendReply(c, qp.endpoint(psn: psn, gid: gid), table: ExportTableCodec.encode(served.exports.snapshot), peer: peer)
                SocketIO.setReceiveTimeout(c, nil)
                accepted.withLock { $0[c] = RDMAListener.Accepted(queuePair: qp, table: nil, peer: peer, receiveSlots: ListenerContext.receiveSlots) }
            } catch {
                Glibc.close(c)
            }
        }
    }

    private let service: ListenerThread
    /// The bound port.
    let port: UInt16

    /// Binds a TCP socket to `address:port` (an address `served.device` serves) and starts accepting.
    init(address: String, port: UInt16, serving served: ListenerContext) throws(MemWallError) {
        let device = served.device
        let sa = try SocketAddress.ipv4(address, port: port)
        let where_ = SocketAddress.describe(sa)
        // A specific address must be one the device serves (INADDR_ANY is checked per connection).
        if sa.sin_addr.s_addr != 0 && device.gidIndex(for: sa.sin_addr) == nil {
            throw MemWallError(.unsupported, "\(device.name) has no GID for \(where_); bind the device to the interface holding that address")
        }
        let mtu = try device.activeMTU()
        let (fd, boundPort) = try SocketIO.listen(on: sa)
        self.port = boundPort
        let core = Core(fd: fd, served: served, mtu: mtu.rawValue)
        self.service = try ListenerThread(notifications: served.notifications,
                                          connections: { core.accepted.withLock { Array($0.values) } },
                                          pass: core.pass(eager:), teardown: core.teardown)
    }

    func stop() { service.stop() }

    deinit { stop() }
}
