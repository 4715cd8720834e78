#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemWallCore
@testable import RDMATransport
import Testing
import Transport

let inLab = ProcessInfo.processInfo.environment["MEMWALL_LAB"] == "1"
let labDevice = ProcessInfo.processInfo.environment["MEMWALL_RDMA_DEVICE"] ?? "rxe0"
/// The address the lab's RDMA device owns: scripts/lab binds rxe0 to a dummy
/// interface with 198.18.0.1, so librdmacm can resolve a route to it (it cannot
/// over lo). Both ends of every lab connection use it.
let labAddress = ProcessInfo.processInfo.environment["MEMWALL_RDMA_ADDR"] ?? "127.0.0.1"
/// librdmacm, as between hosts; MEMWALL_RDMA_CM=socket selects the socket exchange.
let labManager = RDMAConnectionManager(rawValue: ProcessInfo.processInfo.environment["MEMWALL_RDMA_CM"] ?? "rdmacm") ?? .rdmacm

/// Where a test's server listens and its client connects: the RDMA device's own
/// address for verbs, loopback for the TCP emulation.
func peerAddress(for transport: any RemoteMemoryTransport) -> String {
    transport is RDMATransport ? labAddress : "127.0.0.1"
}

func makeRDMA(_ options: RemoteTransportOptions = RemoteTransportOptions()) throws(MemWallError) -> RDMATransport {
    try RDMATransport(device: labDevice, options: options, connectionManager: labManager)
}

@Suite("RDMA verbs on soft-RoCE", .enabled(if: inLab, "runs in the lab guest (make lab)"), .timeLimit(.minutes(5)))
struct RDMATransportInLab {
    // Generous: under TCG, with the whole suite in parallel on two vCPUs, soft-RoCE is slow.
    static func pair(options: RemoteTransportOptions = RemoteTransportOptions(operationTimeout: .seconds(60))) throws -> RemotePair {
        try RemotePair.make(server: try makeRDMA(options), client: try makeRDMA(options))
    }

    @Test("the device is found and its port is active; a missing device is a clear error")
    func device() throws {
        #expect(RDMATransport.availableDevices().contains(labDevice))
        let d = try VerbsDevice.open(named: labDevice)
        // The port comes up shortly after `rdma link add`; give it a few seconds.
        var state = try d.portState()
        for _ in 0 ..< 50 where state != "PORT_ACTIVE" {
            usleep(100_000)
            state = try d.portState()
        }
        #expect(state.uppercased().hasSuffix("ACTIVE"), "port state \(state)")
        let t = try makeRDMA()
        #expect(t.capabilities.implementation.isHardware)
        let e = caught { try RDMATransport(device: "mlx5_missing") }
        #expect(e?.code == .notFound)
        #expect(e?.message.contains(labDevice) == true)
    }

    @Test("data written lands in the exported memory and reads back, over sizes and offsets")
    func roundTrip() async throws { try await RemoteConformance.roundTrip(try Self.pair()) }

    @Test("a prepared list of 300 descriptors posts many times, with a small send queue and selective signalling")
    func descriptorLists() async throws {
        try await RemoteConformance.descriptorLists(try Self.pair(options: RemoteTransportOptions(sendQueueDepth: 16, signalInterval: 8, operationTimeout: .seconds(60))))
    }

    @Test("one-message posts behind others go unsignalled and still complete: one fence retires the stranded tail")
    func selectiveSignallingOfSinglePosts() async throws {
        // Caller-polled: nothing is retired until we poll, so the posts after the
        // first land on a busy send queue and ask for no completion of their own.
        let options = RemoteTransportOptions(signalInterval: 16, operationTimeout: .seconds(60), completionThread: false)
        let p = try Self.pair(options: options)
        let client = try #require(p.client as? RDMATransport)
        let slot = try p.peer.segment(named: "slot")
        fill(p.local, offset: 0, length: 5 * 4096, seed: 31)
        let requests = try (0 ..< 5).map { i in
            try client.post(try client.prepare(.write, [TransferDescriptor(local: p.local, localOffset: i * 4096, target: .remote(slot),
                                                                             targetOffset: Int64(i * 4096), length: 4096)]))
        }
        let connection = try #require(p.peer.connection as? RDMAConnection)
        let deadline = MonotonicClock.nanoseconds() + 60_000_000_000
        while requests.contains(where: { $0.poll() == .pending }) && MonotonicClock.nanoseconds() < deadline {
            if client.progress(p.peer) == 0 { sched_yield() }
        }
        for r in requests { #expect(r.poll() == .completed, "\(r)") }
        #expect(firstMismatch(p.serverRegion, offset: 0, length: 5 * 4096, seed: 31) == nil)
        // The first post found the queue empty and was signalled; the other four were
        // stranded once it retired, and exactly one fence released them.
        #expect(connection.core.fenceCount == 1)
    }

    @Test("a WRITE_WITH_IMM notification arrives only after all data landed")
    func notification() async throws { try await RemoteConformance.notificationAfterData(try Self.pair()) }

    @Test("many tasks over one and several queue pairs")
    func concurrency() async throws {
        let p = try Self.pair()
        var extra: [RemotePeer] = []
        var locals: [MemoryRegion] = []
        for _ in 0 ..< 2 {
            extra.append(try p.client.connect(address: labAddress, port: p.port, timeout: .seconds(10)))
            let r = try MemoryRegion.allocate(byteCount: RemotePair.regionBytes)
            try p.client.register(r)
            locals.append(r)
        }
        try await RemoteConformance.concurrency(p, extraPeers: extra, locals: locals)
    }

    @Test("bounds and permissions; a forged rkey is a remote access error, and a reconnect works")
    func boundsAndRkey() async throws {
        let p = try Self.pair()
        let slot = try p.peer.segment(named: "slot")
        let beyond = caught { try p.client.prepare(.write, [TransferDescriptor(local: p.local, target: .remote(slot),
                                                                               targetOffset: Int64(slot.byteCount - 1), length: 2)]) }
        #expect(beyond?.code == .outOfBounds)
        let e = try await RemoteConformance.forgedKey(p)
        #expect(e?.code == .remoteAccess)
        // On RDMA the access error moves the queue pair to the error state.
        #expect(!p.peer.isConnected)
        let again = try p.client.connect(address: labAddress, port: p.port, timeout: .seconds(10))
        let q = RemotePair(server: p.server, client: p.client, port: p.port, serverRegion: p.serverRegion,
                           readOnlyRegion: p.readOnlyRegion, local: p.local, peer: again)
        // Beyond the MR (the forged length reaches past the registration): refused by the NIC.
        let forgedLength = RemoteSegment(peer: slot.peer, name: "slot", byteCount: slot.byteCount * 4, access: slot.access,
                                         remoteAddress: try again.segment(named: "slot").remoteAddress,
                                         remoteKey: try again.segment(named: "slot").remoteKey, connection: again.connection)
        let oob = await caughtAsync {
            try await p.client.transfer(.write, [TransferDescriptor(local: p.local, target: .remote(forgedLength),
                                                                    targetOffset: Int64(slot.byteCount * 2), length: 4096)])
        }
        #expect(oob?.code == .remoteAccess)
        let third = try p.client.connect(address: labAddress, port: p.port, timeout: .seconds(10))
        let r = RemotePair(server: q.server, client: q.client, port: q.port, serverRegion: q.serverRegion,
                           readOnlyRegion: q.readOnlyRegion, local: q.local, peer: third)
        try await RemoteConformance.boundsAndPermissions(r, forgedKeyKillsConnection: true)
    }

    @Test("bad input: nothing listening, unknown name, bad address, double registration, bad exports")
    func badInput() throws {
        let p = try Self.pair()
        try RemoteConformance.badInput(p) { () throws(MemWallError) -> any RemoteMemoryTransport in try makeRDMA() }
    }

    @Test("named slots share one registration with remote write only where exported for writing")
    func namedSlots() async throws {
        let server = try makeRDMA()
        try await RemoteConformance.namedSlots(server: server, client: try makeRDMA())
        // One local registration + one write-only export registration for eight slots.
        #expect(server.registrationCount == 2)
    }

    @Test("caller-polled completions (no completion thread)")
    func callerPolled() throws {
        let opts = RemoteTransportOptions(completionThread: false)
        let p = try Self.pair(options: opts)
        let client = try #require(p.client as? RDMATransport)
        let slot = try p.peer.segment(named: "slot")
        fill(p.local, offset: 0, length: 65_536, seed: 3)
        let prepared = try client.prepare(.write, [TransferDescriptor(local: p.local, target: .remote(slot), length: 65_536)])
        for _ in 0 ..< 100 {
            let r = try client.post(prepared)
            while r.poll() == .pending { client.progress() }
            #expect(r.poll() == .completed)
        }
        #expect(firstMismatch(p.serverRegion, offset: 0, length: 65_536, seed: 3) == nil)
    }

    @Test("the listener going away mid-transfer: disconnected, no hang, and a new listener can be reached")
    func listenerGoesAway() async throws {
        let p = try Self.pair(options: RemoteTransportOptions(sendQueueDepth: 8, operationTimeout: .seconds(20)))
        let slot = try p.peer.segment(named: "slot")
        let ds = (0 ..< 256).map {
            TransferDescriptor(local: p.local, localOffset: ($0 % 128) * 65_536, target: .remote(slot), targetOffset: Int64(($0 % 128) * 65_536), length: 65_536)
        }
        let req = try p.client.post(try p.client.prepare(.write, ds))
        (p.server as? RDMATransport)?.close()
        let e = await caughtAsync { try await req.wait() }
        // Either the peer vanished before the last descriptor, or (rarely) everything finished first.
        if let e { #expect(e.code == .disconnected) }
        #expect(req.descriptorStatuses.allSatisfy { $0.isFinal })
        let server2 = try makeRDMA()
        let r2 = try MemoryRegion.allocate(byteCount: 1 << 20)
        try server2.register(r2)
        try server2.export(r2, as: "slot", access: [.read, .write])
        let port2 = try server2.listen(address: labAddress, port: 0)
        let peer2 = try p.client.connect(address: labAddress, port: port2, timeout: .seconds(10))
        fill(p.local, offset: 0, length: 4096, seed: 8)
        try await p.client.transfer(.write, [TransferDescriptor(local: p.local, target: .remote(try peer2.segment(named: "slot")), length: 4096)])
        #expect(firstMismatch(r2, offset: 0, length: 4096, seed: 8) == nil)
    }

    @Test("the socket exchange (perftest's out-of-band queue-pair set-up) connects as well as librdmacm")
    func socketExchange() async throws {
        let other: RDMAConnectionManager = labManager == .rdmacm ? .socketExchange : .rdmacm
        let options = RemoteTransportOptions(operationTimeout: .seconds(60))
        let p = try RemotePair.make(server: try RDMATransport(device: labDevice, options: options, connectionManager: other),
                                    client: try RDMATransport(device: labDevice, options: options, connectionManager: other))
        try await RemoteConformance.roundTrip(p)
        try await RemoteConformance.notificationAfterData(p)
    }

    @Test("librdmacm on a device bound to lo fails with a message that names the way out")
    func rdmacmOverLoopbackIsExplained() throws {
        // The lab's rxe0 owns 198.18.0.1; 127.0.0.1 belongs to lo, which has no RDMA device.
        let t = try RDMATransport(device: labDevice, connectionManager: .rdmacm)
        let e = caught { try t.connect(address: "127.0.0.1", port: 1, timeout: .seconds(5)) }
        #expect(e != nil)
        #expect(e?.message.contains("127.0.0.1") == true, "\(String(describing: e))")
    }
}
