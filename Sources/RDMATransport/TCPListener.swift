#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization
import Transport

/// The listening side of the emulation: accepts connections and runs one
/// receiver thread per peer that checks and places its descriptors.
final class TCPListener: Sendable {
    /// What every accepted connection serves from: the listener hands its own to each.
    struct Served: Sendable {
        /// Sent to each peer first, and checked against each descriptor.
        let exports: ExportTable
        /// Where peers' notifications are delivered.
        let notifications: NotificationQueue
        /// The system-call door of every socket read and write.
        let funnel: SyscallFunnel
        /// Offers the intra-host path to peers on this host; nil offers nothing.
        let intraHost: IntraHostServing?
    }

    private final class Core: Sendable {
        let fd: Int32
        let served: Served
        let stopped = Atomic<Bool>(false)
        let connections = Mutex<[ObjectIdentifier: TCPServerConnection]>([:])

        init(fd: Int32, served: Served) {
            self.fd = fd
            self.served = served
        }

        deinit { Glibc.close(fd) }

        func runAccept() {
            while !stopped.load(ordering: .acquiring) {
                var sa = sockaddr_in()
                var len = socklen_t(MemoryLayout<sockaddr_in>.size)
                let c = withUnsafeMutablePointer(to: &sa) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &len) }
                }
                if c < 0 {
                    let e = Errno.current
                    if e == .interrupted || e == .wouldBlock { continue }
                    if stopped.load(ordering: .acquiring) { return }
                    // ECONNABORTED and friends concern one peer only; keep accepting.
                    if e.rawValue == ECONNABORTED || e.rawValue == EMFILE || e.rawValue == ENFILE { usleep(10_000); continue }
                    return
                }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                // Each connection is a thread: a peer opening connections without end must not get one each.
                if connections.withLock({ $0.count }) >= TCPListener.maximumConnections {
                    Glibc.close(c)
                    continue
                }
                SocketIO.tune(c)
                let peer = SocketAddress.describe(sa)
                guard let conn = try? TCPServerConnection(fd: c, peer: peer, serving: served, onExit: { [weak self] id in
                                                              _ = self?.connections.withLock { $0.removeValue(forKey: id) }
                                                          }) else {
                    Glibc.close(c)
                    continue
                }
                if stopped.load(ordering: .acquiring) { conn.stop(); return }
                connections.withLock { $0[ObjectIdentifier(conn)] = conn }
                conn.start()
            }
        }
    }

    private let core: Core
    private let thread: WorkerThread
    /// The bound port.
    let port: UInt16

    /// Most peers served at once; a connection beyond it is closed as soon as it is accepted.
    static let maximumConnections = 1024

    /// Binds, listens and starts accepting.
    /// - Throws: `invalidArgument` for a bad address, `systemCall` from bind/listen.
    init(address: String, port: UInt16, serving served: Served) throws(MemWallError) {
        let (fd, boundPort) = try SocketIO.listen(on: try SocketAddress.ipv4(address, port: port))
        self.port = boundPort
        let core = Core(fd: fd, served: served)
        self.core = core
        self.thread = try WorkerThread(name: "mw-tcp-accept") { core.runAccept() }
    }

    /// Stops accepting and closes every accepted connection.
    func stop() {
        guard !core.stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // shutdown() on a listening socket wakes a blocked accept() with EINVAL.
        shutdown(core.fd, SocketIO.shutdownBoth)
        thread.join()
        let conns = core.connections.withLock { c -> [TCPServerConnection] in defer { c = [:] }; return Array(c.values) }
        for c in conns { c.stop() }
    }

    deinit { stop() }
}

/// One accepted connection: sends the export table, then places WRITE data,
/// answers READs and delivers notifications, checking each descriptor first.
final class TCPServerConnection: Sendable {
    private let fd: Int32
    private let peer: String
    private let served: TCPListener.Served
    private let onExit: @Sendable (ObjectIdentifier) -> Void
    private let thread = Mutex<WorkerThread?>(nil)
    private let stopped = Atomic<Bool>(false)

    init(fd: Int32, peer: String, serving served: TCPListener.Served,
         onExit: @escaping @Sendable (ObjectIdentifier) -> Void) throws(MemWallError) {
        self.fd = fd
        self.peer = peer
        self.served = served
        self.onExit = onExit
    }

    deinit { Glibc.close(fd) }

    func start() {
        // The thread holds this object until the peer goes away or stop() shuts the socket.
        let t = try? WorkerThread(name: "mw-tcp-serve") { [self] in
            run()
            onExit(ObjectIdentifier(self))
        }
        if t == nil { shutdown(fd, SocketIO.shutdownBoth) }
        thread.withLock { $0 = t }
    }

    func stop() {
        stopped.store(true, ordering: .releasing)
        shutdown(fd, SocketIO.shutdownBoth)
        let t = thread.withLock { $0 }
        t?.join()
    }

    private func run() {
        let header = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
        defer { header.deallocate() }
        let table = ExportTableCodec.encode(served.exports.snapshot)
        FrameHeader(kind: .exportTable, key: served.intraHost == nil ? 0 : FrameHeader.offersIntraHost,
                    length: UInt64(table.count)).store(to: header)
        let sent = table.withUnsafeBytes {
            SocketIO.writeFrame(served.funnel, fd, header: UnsafeRawBufferPointer(start: header, count: FrameHeader.size), payload: $0)
        }
        guard case .success = sent else { return }
        // Where the answer to a peer's intra-host challenge lives, and the exports
        // whose addresses that peer was given (their regions stay alive until it leaves).
        var challenge: UnsafeMutableRawPointer?
        var revealed: [LocalExport] = []
        defer {
            served.intraHost?.conceal(revealed)
            challenge?.deallocate()
        }
        while !stopped.load(ordering: .acquiring) {
            guard case .success = SocketIO.readFully(served.funnel, fd, header, FrameHeader.size) else { return }
            // A header that does not decode leaves the stream unsynchronised: drop the
            // peer (not a MemWall peer, or a hostile one) and keep serving the others.
            guard let request = try? FrameHeader.decodeRequest(UnsafeRawBufferPointer(start: header, count: FrameHeader.size)) else {
                return
            }
            switch request {
            case .write(let key, let tag, let offset, let length):
                let (status, export) = check(key: key, offset: offset, length: length, need: .write)
                if let export {
                    // `export` holds the region, so it stays mapped even if unexported meanwhile.
                    let target = export.region.baseAddress + export.offset + Int(offset)
                    guard case .success = SocketIO.readFully(served.funnel, fd, target, length) else { return }
                } else {
                    // The payload follows a refused write too; it is at most
                    // `FrameHeader.maximumLength` and costs only the peer's bandwidth.
                    guard case .success = SocketIO.discard(served.funnel, fd, length) else { return }
                }
                FrameHeader(kind: .writeDone, status: status, tag: tag).store(to: header)
                guard case .success = SocketIO.writeFrame(served.funnel, fd, header: UnsafeRawBufferPointer(start: header, count: FrameHeader.size),
                                                          payload: nil) else { return }
            case .read(let key, let tag, let offset, let length):
                let (status, export) = check(key: key, offset: offset, length: length, need: .read)
                FrameHeader(kind: .readData, status: status, tag: tag, length: export == nil ? 0 : UInt64(length)).store(to: header)
                let payload = export.map {
                    UnsafeRawBufferPointer(start: $0.region.baseAddress + $0.offset + Int(offset), count: length)
                }
                let sent = withExtendedLifetime(export) {
                    SocketIO.writeFrame(served.funnel, fd, header: UnsafeRawBufferPointer(start: header, count: FrameHeader.size), payload: payload)
                }
                guard case .success = sent else { return }
            case .intraHostProbe(let c0, let c1):
                // Only after this side offered it, and once per connection: anything else is not a MemWall peer.
                guard let serving = served.intraHost, challenge == nil else { return }
                let answer = UnsafeMutableRawPointer.allocate(byteCount: IntraHostChallenge.size, alignment: 8)
                challenge = answer
                revealed = served.exports.all
                let offer = serving.offer(revealed, challenge: answer, c0, c1)
                FrameHeader(kind: .intraHostOffer, length: UInt64(offer.count)).store(to: header)
                let sent = offer.withUnsafeBytes {
                    SocketIO.writeFrame(served.funnel, fd, header: UnsafeRawBufferPointer(start: header, count: FrameHeader.size), payload: $0)
                }
                guard case .success = sent else { return }
            case .notify(let value):
                // Frames are handled in order, so every write sent before this one has landed.
                // A peer that floods notifications nobody takes is dropped, not buffered without end.
                guard served.notifications.push(RemoteNotification(peer: peer, value: value)) else { return }
            }
        }
    }

    /// The key, permission and bounds check every descriptor passes before a byte moves.
    private func check(key: UInt32, offset: UInt64, length: Int, need: RemoteAccess) -> (FrameHeader.Status, LocalExport?) {
        guard let e = served.exports.lookup(key: key) else { return (.unknownKey, nil) }
        return e.admits(offset: offset, length: length, need: need)
    }
}
