#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
@testable import RDMATransport
import Synchronization
import Testing
import Transport

/// Options that keep every byte on TCP: peers in this process would otherwise
/// be reached through the intra-host path (IntraHostTests covers that one).
let tcpOnly = RemoteTransportOptions(intraHost: .off)

@Suite("TCP emulation of one-sided RDMA", .timeLimit(.minutes(2)))
struct TCPEmulationTests {
    static func pair(serverFunnel: SyscallFunnel = .system, clientFunnel: SyscallFunnel = .system,
                     options: RemoteTransportOptions = tcpOnly) throws -> RemotePair {
        var options = options
        options.intraHost = .off
        let p = try RemotePair.make(server: try TCPEmulationTransport(options: options, funnel: serverFunnel),
                                    client: try TCPEmulationTransport(options: options, funnel: clientFunnel))
        #expect(p.peer.path == .tcp(intraHostDeclined: "the peer does not offer it (it runs with intra-host off, or an older MemWall)"))
        return p
    }

    @Test("is labelled emulation")
    func labelled() throws {
        let t = try TCPEmulationTransport()
        #expect(t.capabilities.implementation.isEmulation)
        #expect(t.capabilities.implementation.description.hasPrefix("emulation"))
        #expect(t.capabilities.targets == [.remote])
    }

    @Test("data written lands in the exported memory and reads back, over sizes and offsets")
    func roundTrip() async throws { try await RemoteConformance.roundTrip(try Self.pair()) }

    @Test("a prepared list of 300 descriptors posts many times with per-descriptor status")
    func descriptorLists() async throws {
        try await RemoteConformance.descriptorLists(try Self.pair(options: RemoteTransportOptions(sendQueueDepth: 16)))
    }

    @Test("a notification arrives only after all data of its transfer landed")
    func notification() async throws { try await RemoteConformance.notificationAfterData(try Self.pair()) }

    @Test("many tasks over one and several connections")
    func concurrency() async throws {
        let p = try Self.pair()
        var extra: [RemotePeer] = []
        var locals: [MemoryRegion] = []
        for _ in 0 ..< 2 {
            extra.append(try p.client.connect(address: "127.0.0.1", port: p.port, timeout: .seconds(5)))
            let r = try MemoryRegion.allocate(byteCount: RemotePair.regionBytes)
            try p.client.register(r)
            locals.append(r)
        }
        try await RemoteConformance.concurrency(p, extraPeers: extra, locals: locals)
    }

    @Test("bounds and permissions: checked at prepare and enforced by the receiver")
    func bounds() async throws {
        let p = try Self.pair()
        try await RemoteConformance.boundsAndPermissions(p, forgedKeyKillsConnection: false)
        let e = try await RemoteConformance.forgedKey(p)
        #expect(e?.code == .remoteAccess)
        // The emulation keeps the connection after a refused descriptor.
        try await RemoteConformance.roundTrip(p)
    }

    @Test("bad input: nothing listening, unknown name, bad address, double registration, bad exports")
    func badInput() throws {
        let p = try Self.pair()
        try RemoteConformance.badInput(p) { () throws(MemWallError) -> any RemoteMemoryTransport in try TCPEmulationTransport(options: tcpOnly) }
        #expect(caught { try TCPEmulationTransport(options: RemoteTransportOptions(sendQueueDepth: 0)) }?.code == .invalidArgument)
    }

    @Test("named slots cut from one registration")
    func namedSlots() async throws {
        try await RemoteConformance.namedSlots(server: try TCPEmulationTransport(options: tcpOnly), client: try TCPEmulationTransport(options: tcpOnly))
    }

    @Test("short reads and writes and EINTR on both sides still move every byte")
    func shortIO() async throws {
        let faults: [FaultInjector.Rule] = [
            .init("read", .short(fraction: 0.3), after: 3, times: 200),
            .init("write", .short(fraction: 0.5), after: 1, times: 200),
            .init("read", .error(.interrupted), after: 10, times: 50),
            .init("write", .error(.interrupted), after: 5, times: 50),
        ]
        let serverFaults = FaultInjector(faults)
        let clientFaults = FaultInjector(faults)
        let p = try Self.pair(serverFunnel: SyscallFunnel(faults: serverFaults), clientFunnel: SyscallFunnel(faults: clientFaults))
        try await RemoteConformance.roundTrip(p)
        #expect(serverFaults.firedCount("read") > 0)
        #expect(clientFaults.firedCount("write") > 0)
    }

    @Test("the receiver dropping mid-transfer fails the request with disconnected, then a reconnect works")
    func peerDropsMidTransfer() async throws {
        // The receiver's 40th read fails with EIO: it closes the connection in the middle of the payload stream.
        let faults = FaultInjector([.init("read", .error(.ioError), after: 40, times: 1)])
        let p = try Self.pair(serverFunnel: SyscallFunnel(faults: faults), options: RemoteTransportOptions(sendQueueDepth: 8))
        let slot = try p.peer.segment(named: "slot")
        let ds = stride(from: 0, to: RemotePair.regionBytes, by: 64 * 1024).map {
            TransferDescriptor(local: p.local, localOffset: $0, target: .remote(slot), targetOffset: Int64($0), length: 64 * 1024)
        }
        let req = try p.client.post(try p.client.prepare(.write, ds))
        let e = await caughtAsync { try await req.wait() }
        #expect(faults.firedCount("read") == 1)
        #expect(e?.code == .disconnected)
        #expect(req.descriptorStatuses.allSatisfy { $0.isFinal })
        #expect(req.descriptorStatuses.contains { if case .failed = $0 { true } else { false } })
        #expect(!p.peer.isConnected)
        // Posting on the dead connection is refused at once.
        #expect(caught { try p.client.post(try p.client.prepare(.write, [ds[0]])) }?.code == .disconnected)
        // The registration is free again: nothing is left in flight.
        #expect(throws: Never.self) {
            let scratch = try MemoryRegion.allocate(byteCount: 4096)
            try p.client.register(scratch)
            try p.client.deregister(scratch)
        }
        // Reconnecting works.
        let again = try p.client.connect(address: "127.0.0.1", port: p.port, timeout: .seconds(5))
        fill(p.local, offset: 0, length: 65_536, seed: 5)
        try await p.client.transfer(.write, [TransferDescriptor(local: p.local, target: .remote(try again.segment(named: "slot")), length: 65_536)])
        #expect(firstMismatch(p.serverRegion, offset: 0, length: 65_536, seed: 5) == nil)
    }

    @Test("a local socket error fails the request with disconnected")
    func localWriteError() async throws {
        let faults = FaultInjector([.init("write", .error(.ioError), after: 2, times: 1)])
        let p = try Self.pair(clientFunnel: SyscallFunnel(faults: faults))
        let slot = try p.peer.segment(named: "slot")
        let ds = (0 ..< 8).map { TransferDescriptor(local: p.local, localOffset: $0 * 4096, target: .remote(slot), targetOffset: Int64($0 * 4096), length: 4096) }
        let e = await caughtAsync { try await p.client.transfer(.write, ds) }
        #expect(e?.code == .disconnected)
        #expect(e?.errno == .ioError)
    }

    @Test("cancelling stops what was not sent; what was sent ends when the peer goes, no hang")
    func cancelWhatWasNotSent() async throws {
        // No timing in this test: the timeout cannot fire first, and the peer's
        // departure is what ends the descriptor on the wire.
        var stalled: StalledPeer? = try StalledPeer()
        let port = try #require(stalled).port
        let client = try TCPEmulationTransport(options: RemoteTransportOptions(sendQueueDepth: 1, operationTimeout: .seconds(600)))
        let local = try MemoryRegion.allocate(byteCount: 1 << 20)
        try client.register(local)
        let peer = try client.connect(address: "127.0.0.1", port: port, timeout: .seconds(60))
        let seg = try peer.segment(named: "stalled")
        let ds = (0 ..< 10).map { TransferDescriptor(local: local, localOffset: $0 * 4096, target: .remote(seg), targetOffset: Int64($0 * 4096), length: 4096) }
        let req = try client.post(try client.prepare(.write, ds))
        // With a depth of 1 and a peer that never answers, at most descriptor 0 is on the wire.
        req.cancel()
        for i in 1 ..< 10 { #expect(req.status(ofDescriptor: i) == .cancelled, "descriptor \(i)") }
        stalled = nil   // the peer goes away
        let e = await caughtAsync { try await req.wait() }
        #expect(e?.code == .disconnected || e?.code == .cancelled, "\(String(describing: e))")
        switch req.status(ofDescriptor: 0) {
        case .cancelled: break
        case .failed(let d0): #expect(d0.code == .disconnected)
        default: Issue.record("descriptor 0 should be final, is \(req.status(ofDescriptor: 0))")
        }
    }

    @Test("a cancel landing while the sender takes a descriptor ends it exactly once; nothing stays in flight")
    func cancelRacesTheSender() throws {
        // The timeout cannot fire during the test: a descriptor the sender kept
        // as unanswered but never sent would sit there until the disconnect.
        let p = try Self.pair(options: RemoteTransportOptions(sendQueueDepth: 1024, operationTimeout: .seconds(600)))
        let slot = try p.peer.segment(named: "slot")
        let prepared = try p.client.prepare(.write, (0 ..< 4).map {
            TransferDescriptor(local: p.local, localOffset: $0 * 256, target: .remote(slot), targetOffset: Int64($0 * 256), length: 256)
        })
        // Each cancel comes a little later than the one before (0 to 100 µs after
        // the post, in 7919 ns steps), so cancels land everywhere in the sender's
        // handling of a descriptor, including between taking it and sending it.
        for i in 0 ..< 3000 {
            let req = try p.client.post(prepared)
            let until = MonotonicClock.nanoseconds() &+ UInt64(i * 7919 % 100_000)
            while MonotonicClock.nanoseconds() < until {}
            req.cancel()
            let result = Result { () throws(MemWallError) in try req.waitBlocking() }
            if case .failure(let e) = result { #expect(e.code == .cancelled, "request \(i): \(e)") }
            for (d, s) in req.descriptorStatuses.enumerated() {
                #expect(s == .completed || s == .cancelled, "request \(i), descriptor \(d): \(s)")
            }
        }
        // The connection still moves data.
        fill(p.local, offset: 0, length: 4096, seed: 11)
        try p.client.post(try p.client.prepare(.write, [TransferDescriptor(local: p.local, target: .remote(slot), length: 4096)])).waitBlocking()
        #expect(firstMismatch(p.serverRegion, offset: 0, length: 4096, seed: 11) == nil)
        // A descriptor finished twice would be released twice; the disconnect
        // finishes whatever is still recorded as unanswered.
        p.peer.disconnect()
        #expect(throws: Never.self) { try p.client.deregister(p.local) }
    }

    @Test("peers connect, write and disconnect from three threads while the listener closes; every outcome is a clean one")
    func listenerClosesUnderTraffic() throws {
        let server = try TCPEmulationTransport(options: tcpOnly)
        let exported = try MemoryRegion.allocate(byteCount: 3 * 4096)
        try server.register(exported)
        try server.export(exported, as: "slot", access: [.read, .write])
        let port = try server.listen(address: "127.0.0.1", port: 0)
        let successes = Atomic<Int>(0)
        let closeRequested = Atomic<Bool>(false)
        // Per client: the seed of its last acknowledged write, and of the writes
        // posted after it that failed (their bytes may have landed, in part).
        let written = Mutex<[(acknowledged: Int, unacknowledged: [Int])]>(Array(repeating: (0, []), count: 3))
        let errors = Mutex<[(error: MemWallError, connected: Bool)]>([])
        let failuresBeforeClose = Atomic<Int>(0)
        let clients = try (0 ..< 3).map { k in
            try WorkerThread(name: "client-\(k)") {
                do throws(MemWallError) {
                    let client = try TCPEmulationTransport(options: tcpOnly)
                    let local = try MemoryRegion.allocate(byteCount: 4096)
                    try client.register(local)
                    var seed = k * 100_000
                    // Until an attempt begun after the close was asked for fails (every such attempt does).
                    while true {
                        let closing = closeRequested.load(ordering: .acquiring)
                        seed += 1
                        fill(local, offset: 0, length: 4096, seed: seed)
                        var connected = false
                        var posted = false
                        do throws(MemWallError) {
                            let peer = try client.connect(address: "127.0.0.1", port: port, timeout: .seconds(5))
                            connected = true
                            let d = TransferDescriptor(local: local, target: .remote(try peer.segment(named: "slot")),
                                                       targetOffset: Int64(k * 4096), length: 4096)
                            let prepared = try client.prepare(.write, [d])
                            posted = true
                            try client.post(prepared).waitBlocking()
                            peer.disconnect()
                            written.withLock { $0[k] = (seed, []) }
                            successes.add(1, ordering: .relaxed)
                        } catch {
                            if !closeRequested.load(ordering: .acquiring) { failuresBeforeClose.add(1, ordering: .relaxed) }
                            errors.withLock { $0.append((error, connected)) }
                            if posted { written.withLock { $0[k].unacknowledged.append(seed) } }
                            if closing { return }
                        }
                    }
                } catch {
                    // Setting up the client failed: its write count below says so.
                    errors.withLock { $0.append((error, false)) }
                }
            }
        }
        while successes.load(ordering: .relaxed) < 300 { sched_yield() }
        closeRequested.store(true, ordering: .releasing)
        server.close()
        for c in clients { c.join() }

        // What failed, failed because the listener went away, and only once the
        // close was asked for: refused, reset, or cut off mid-transfer; or, for a
        // handshake the kernel completed as the listening socket shut down (never
        // accepted, never reset), no export table within the connect timeout.
        #expect(failuresBeforeClose.load(ordering: .relaxed) == 0)
        for (e, connected) in errors.withLock({ $0 }) {
            #expect(e.code == .disconnected || (e.code == .timedOut && !connected), "\(e)")
        }
        #expect(errors.withLock { $0.count } >= 3)
        // Each client's block holds its last acknowledged write, except where a
        // later write that failed had already placed bytes: nothing else.
        for (k, w) in written.withLock({ $0 }).enumerated() {
            #expect(w.acknowledged > k * 100_000, "client \(k) never completed a write")
            let seeds = [w.acknowledged] + w.unacknowledged
            let stray = exported.withUnsafeBytes(offset: k * 4096, length: 4096) { b in
                (0 ..< 4096).first { i in !seeds.contains { b[i] == patternByte(i, seed: $0) } }
            }
            #expect(stray == nil, "client \(k): byte \(String(describing: stray)) is from none of the writes \(seeds)")
        }
    }

    @Test("a peer that stops answering: the request times out and the connection closes")
    func timeoutClosesTheConnection() async throws {
        let stalled = try StalledPeer()
        let client = try TCPEmulationTransport(options: RemoteTransportOptions(sendQueueDepth: 1, operationTimeout: .milliseconds(700)))
        let local = try MemoryRegion.allocate(byteCount: 1 << 20)
        try client.register(local)
        let peer = try client.connect(address: "127.0.0.1", port: stalled.port, timeout: .seconds(60))
        let seg = try peer.segment(named: "stalled")
        let req = try client.post(try client.prepare(.write, [TransferDescriptor(local: local, target: .remote(seg), length: 4096)]))
        let e = await caughtAsync { try await req.wait() }
        #expect(e?.code == .timedOut)
        #expect(!peer.isConnected)
    }

    @Test("a connection that accepts but sends no export table times out")
    func silentListener() throws {
        let silent = try StalledPeer(sendTable: false)
        let client = try TCPEmulationTransport()
        let e = caught { try client.connect(address: "127.0.0.1", port: silent.port, timeout: .milliseconds(300)) }
        #expect(e?.code == .timedOut)
    }

    @Test("deregistration is refused while exported and allowed after unexport")
    func deregisterRules() throws {
        let t = try TCPEmulationTransport()
        let r = try MemoryRegion.allocate(byteCount: 8192)
        try t.register(r)
        try t.export(r, as: "x", access: .read)
        #expect(caught { try t.deregister(r) }?.code == .invalidArgument)
        try t.unexport("x")
        try t.deregister(r)
        #expect(caught { try t.deregister(r) }?.code == .notFound)
        #expect(caught { try t.export(r, as: "y", access: .read) }?.code == .notFound)
    }
}

/// A listener that speaks just enough of the protocol to hand out a table, then never answers.
final class StalledPeer: Sendable {
    let fd: Int32
    let port: UInt16
    private let thread: WorkerThread

    init(sendTable: Bool = true) throws {
        let fd = try SocketIO.makeStreamSocket()
        var sa = try SocketAddress.ipv4("127.0.0.1", port: 0)
        _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        _ = Glibc.listen(fd, 4)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.fd = fd
        self.port = UInt16(bigEndian: sa.sin_port)
        self.thread = try WorkerThread(name: "stalled") {
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            if sendTable {
                let table = ExportTableCodec.encode([ExportedRegionInfo(name: "stalled", byteCount: 1 << 20, access: [.read, .write], address: 0, key: 7)])
                let h = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
                FrameHeader(kind: .exportTable, length: UInt64(table.count)).store(to: h)
                _ = table.withUnsafeBytes { SocketIO.writeFrame(.system, c, header: UnsafeRawBufferPointer(start: h, count: FrameHeader.size), payload: $0) }
                h.deallocate()
            }
            // Hold the connection open without reading or answering until the listener is shut down (deinit).
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 60_000)   // a cap, so a peer that is never released cannot wedge a test run
            Glibc.close(c)
        }
    }

    deinit {
        shutdown(fd, SocketIO.shutdownBoth)
        thread.join()
        Glibc.close(fd)
    }
}
