#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
@testable import RDMATransport
import Testing
import Transport

/// Deterministic test bytes: different per position and per seed, never all zero.
func patternByte(_ i: Int, seed: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: (i &* 131) &+ (seed &* 29) &+ (i >> 9) &+ 1)
}

func fill(_ r: MemoryRegion, offset: Int, length: Int, seed: Int) {
    r.withUnsafeMutableBytes(offset: offset, length: length) { b in
        for i in 0 ..< length { b[i] = patternByte(i, seed: seed) }
    }
}

/// Index of the first byte that differs from the pattern, or nil.
func firstMismatch(_ r: MemoryRegion, offset: Int, length: Int, seed: Int) -> Int? {
    r.withUnsafeBytes(offset: offset, length: length) { b in
        for i in 0 ..< length where b[i] != patternByte(i, seed: seed) { return i }
        return nil
    }
}

func zero(_ r: MemoryRegion) {
    r.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
}

/// Runs `body` and returns the MemWallError it threw (nil if it did not throw).
func caught<T>(_ body: () throws -> T) -> MemWallError? {
    do { _ = try body(); return nil } catch let e as MemWallError { return e } catch {
        Issue.record("expected a MemWallError, got \(error)")
        return nil
    }
}

func caughtAsync<T>(_ body: () async throws -> T) async -> MemWallError? {
    do { _ = try await body(); return nil } catch let e as MemWallError { return e } catch {
        Issue.record("expected a MemWallError, got \(error)")
        return nil
    }
}

/// A listening side and a connected side of one remote transport kind, in this process.
struct RemotePair {
    let server: any RemoteMemoryTransport
    let client: any RemoteMemoryTransport
    let port: UInt16
    let serverRegion: MemoryRegion
    let readOnlyRegion: MemoryRegion
    let local: MemoryRegion
    let peer: RemotePeer

    static let regionBytes = 8 << 20

    /// Exports "slot" (read+write, 8 MiB) and "ro" (read only, 64 KiB, filled with seed 99).
    static func make(server: any RemoteMemoryTransport, client: any RemoteMemoryTransport) throws -> RemotePair {
        let sr = try MemoryRegion.allocate(byteCount: regionBytes)
        let ro = try MemoryRegion.allocate(byteCount: 64 * 1024)
        fill(ro, offset: 0, length: ro.byteCount, seed: 99)
        try server.register(sr)
        try server.register(ro)
        try server.export(sr, as: "slot", access: [.read, .write])
        try server.export(ro, as: "ro", access: .read)
        let address = peerAddress(for: server)
        let port = try server.listen(address: address, port: 0)
        let local = try MemoryRegion.allocate(byteCount: regionBytes)
        try client.register(local)
        let peer = try client.connect(address: address, port: port, timeout: .seconds(10))
        return RemotePair(server: server, client: client, port: port, serverRegion: sr, readOnlyRegion: ro, local: local, peer: peer)
    }
}

/// The properties every remote transport must have, written once and run on
/// the TCP emulation (host) and on RDMA verbs over rxe0 (lab).
enum RemoteConformance {
    /// Data written is the data that landed in the exported memory, and the data read back.
    static func roundTrip(_ p: RemotePair) async throws {
        let slot = try p.peer.segment(named: "slot")
        let sizes = [1, 7, 512, 4096, 4097, 65_536, 1 << 20, 3 << 20]
        let offsets = [0, 1, 4095, 12_345]
        var seed = 1
        for size in sizes {
            for off in offsets {
                seed += 1
                let remoteOff = (off * 7 + size) % (RemotePair.regionBytes - size)
                fill(p.local, offset: off, length: size, seed: seed)
                try await p.client.transfer(.write, [TransferDescriptor(local: p.local, localOffset: off, target: .remote(slot),
                                                                        targetOffset: Int64(remoteOff), length: size)])
                // The bytes are in the exported memory itself: the receiver copied nothing.
                #expect(firstMismatch(p.serverRegion, offset: remoteOff, length: size, seed: seed) == nil,
                        "write of \(size) at local \(off) → remote \(remoteOff)")
                let back = RemotePair.regionBytes - size - off
                p.local.withUnsafeMutableBytes(offset: back, length: size) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
                try await p.client.transfer(.read, [TransferDescriptor(local: p.local, localOffset: back, target: .remote(slot),
                                                                       targetOffset: Int64(remoteOff), length: size)])
                #expect(firstMismatch(p.local, offset: back, length: size, seed: seed) == nil,
                        "read of \(size) from remote \(remoteOff) → local \(back)")
            }
        }
    }

    /// One prepared list of many descriptors, posted several times; per-descriptor status.
    static func descriptorLists(_ p: RemotePair) async throws {
        let slot = try p.peer.segment(named: "slot")
        let n = 300
        let piece = 4096 + 64
        var ds: [TransferDescriptor] = []
        for i in 0 ..< n {
            ds.append(TransferDescriptor(local: p.local, localOffset: i * piece, target: .remote(slot),
                                         targetOffset: Int64((n - 1 - i) * piece), length: piece))
        }
        let prepared = try p.client.prepare(.write, ds)
        for round in 0 ..< 3 {
            fill(p.local, offset: 0, length: n * piece, seed: 500 + round)
            let req = try p.client.post(prepared)
            let report = try await req.wait()
            #expect(report.bytes == n * piece)
            #expect(report.descriptorCount == n)
            #expect(req.descriptorStatuses.allSatisfy { $0 == .completed })
            for i in [0, 1, n / 2, n - 1] {
                let expected = (0 ..< piece).map { patternByte(i * piece + $0, seed: 500 + round) }
                let got = p.serverRegion.withUnsafeBytes(offset: (n - 1 - i) * piece, length: piece) { Array($0) }
                #expect(got == expected, "descriptor \(i) of round \(round)")
            }
        }
    }

    /// A notification is seen only after every byte of its transfer landed.
    static func notificationAfterData(_ p: RemotePair) async throws {
        let slot = try p.peer.segment(named: "slot")
        for round in 0 ..< 3 {
            let size = 4 << 20
            fill(p.local, offset: 0, length: size, seed: 70 + round)
            let ds = stride(from: 0, to: size, by: 256 * 1024).map {
                TransferDescriptor(local: p.local, localOffset: $0, target: .remote(slot), targetOffset: Int64($0), length: 256 * 1024)
            }
            let req = try p.client.post(try p.client.prepare(.write, ds), notify: UInt32(47_291 + round))
            let note = try await p.server.nextNotification(timeout: .seconds(30))
            #expect(note.value == UInt32(47_291 + round))
            // Checked on the notification alone, before looking at the sender's completion.
            #expect(firstMismatch(p.serverRegion, offset: 0, length: size, seed: 70 + round) == nil)
            try await req.wait()
        }
    }

    /// Many tasks post at once on one connection and on several connections.
    static func concurrency(_ p: RemotePair, extraPeers: [RemotePeer], locals: [MemoryRegion]) async throws {
        let slice = 128 * 1024
        let peers = [p.peer] + extraPeers
        let regions = [p.local] + locals
        try await withThrowingTaskGroup(of: Void.self) { g in
            for t in 0 ..< 8 {
                let peer = peers[t % peers.count]
                let local = regions[t % regions.count]
                let client = p.client
                g.addTask {
                    let slot = try peer.segment(named: "slot")
                    for r in 0 ..< 6 {
                        let seed = t * 100 + r
                        let lo = t * slice
                        fill(local, offset: lo, length: slice, seed: seed)
                        try await client.transfer(.write, [TransferDescriptor(local: local, localOffset: lo, target: .remote(slot),
                                                                              targetOffset: Int64(t * slice), length: slice)])
                        let back = (16 + t) * slice
                        local.withUnsafeMutableBytes(offset: back, length: slice) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
                        try await client.transfer(.read, [TransferDescriptor(local: local, localOffset: back, target: .remote(slot),
                                                                             targetOffset: Int64(t * slice), length: slice)])
                        #expect(firstMismatch(local, offset: back, length: slice, seed: seed) == nil, "task \(t) round \(r)")
                    }
                }
            }
            try await g.waitForAll()
        }
    }

    /// Bounds and permissions are checked locally at prepare and enforced by the peer.
    static func boundsAndPermissions(_ p: RemotePair, forgedKeyKillsConnection: Bool) async throws {
        let slot = try p.peer.segment(named: "slot")
        let ro = try p.peer.segment(named: "ro")
        // Beyond the segment: refused before anything is sent.
        let beyond = caught { try p.client.prepare(.write, [TransferDescriptor(local: p.local, target: .remote(slot),
                                                                               targetOffset: Int64(slot.byteCount - 10), length: 11)]) }
        #expect(beyond?.code == .outOfBounds)
        // Write to a read-only export: refused at prepare.
        let roWrite = caught { try p.client.prepare(.write, [TransferDescriptor(local: p.local, target: .remote(ro), length: 16)]) }
        #expect(roWrite?.code == .remoteAccess)
        // Reading the read-only export works and returns its bytes.
        try await p.client.transfer(.read, [TransferDescriptor(local: p.local, target: .remote(ro), length: ro.byteCount)])
        #expect(firstMismatch(p.local, offset: 0, length: ro.byteCount, seed: 99) == nil)

        // A peer that lies about its segment (forged length) is stopped by the receiver.
        let forgedLength = RemoteSegment(peer: slot.peer, name: "slot", byteCount: slot.byteCount * 2, access: slot.access,
                                         remoteAddress: slot.remoteAddress, remoteKey: slot.remoteKey, connection: slot.connection)
        let before = p.serverRegion.withUnsafeBytes(offset: 0, length: 64) { Array($0) }
        let oob = await caughtAsync {
            try await p.client.transfer(.write, [TransferDescriptor(local: p.local, target: .remote(forgedLength),
                                                                    targetOffset: Int64(slot.byteCount), length: 4096)])
        }
        #expect(oob?.code == .remoteAccess)
        #expect(p.serverRegion.withUnsafeBytes(offset: 0, length: 64) { Array($0) } == before)
    }

    /// A key the peer never issued is refused by the peer.
    static func forgedKey(_ p: RemotePair) async throws -> MemWallError? {
        let slot = try p.peer.segment(named: "slot")
        let forged = RemoteSegment(peer: slot.peer, name: "slot", byteCount: slot.byteCount, access: slot.access,
                                   remoteAddress: slot.remoteAddress, remoteKey: slot.remoteKey ^ 0x00A5_5A00, connection: slot.connection)
        return await caughtAsync {
            try await p.client.transfer(.write, [TransferDescriptor(local: p.local, target: .remote(forged), length: 4096)])
        }
    }

    /// Bad input gives a clear, typed error each.
    static func badInput(_ p: RemotePair, make: () throws(MemWallError) -> any RemoteMemoryTransport) throws {
        let notExported = caught { try p.peer.segment(named: "never-exported") }
        #expect(notExported?.code == .notFound)
        #expect(notExported?.message.contains("'slot'") == true)

        // Connecting to a port where nothing listens.
        let lonely = try make()
        let freePort = try {
            let t = try make()
            let port = try t.listen(address: peerAddress(for: t), port: 0)
            (t as? TCPEmulationTransport)?.close()
            (t as? RDMATransport)?.close()
            return port
        }()
        let refused = caught { try lonely.connect(address: peerAddress(for: lonely), port: freePort, timeout: .seconds(5)) }
        #expect(refused?.code == .disconnected)
        let badAddress = caught { try lonely.connect(address: "not-an-address", port: 1, timeout: .seconds(1)) }
        #expect(badAddress?.code == .invalidArgument)

        // Registration and export mistakes.
        let r = try MemoryRegion.allocate(byteCount: 4096)
        let unregistered = caught { try p.client.prepare(.write, [TransferDescriptor(local: r, target: .remote(try p.peer.segment(named: "slot")), length: 16)]) }
        #expect(unregistered?.code == .notFound)
        #expect(caught { try p.client.register(p.local) }?.code == .alreadyExists)
        #expect(caught { try p.server.export(p.serverRegion, as: "slot", access: .read) }?.code == .alreadyExists)
        #expect(caught { try p.server.export(p.serverRegion, offset: 4096, length: p.serverRegion.byteCount, as: "too-long", access: .read) }?.code == .outOfBounds)
        #expect(caught { try p.server.export(p.serverRegion, as: "", access: .read) }?.code == .invalidArgument)
        #expect(caught { try p.server.unexport("never-exported") }?.code == .notFound)
        #expect(caught { try p.server.deregister(p.serverRegion) }?.code == .invalidArgument)
        #expect(caught { try p.client.prepare(.write, []) }?.code == .invalidArgument)
    }

    /// Sub-range exports of one registration are separate named slots.
    static func namedSlots(server: any RemoteMemoryTransport, client: any RemoteMemoryTransport) async throws {
        let pool = try MemoryRegion.allocate(byteCount: 1 << 20)
        try server.register(pool)
        for s in 0 ..< 8 {
            try server.export(pool, offset: s * 128 * 1024, length: 128 * 1024, as: "kv/session-47291/slot-\(s)", access: .write)
        }
        let port = try server.listen(address: peerAddress(for: server), port: 0)
        let local = try MemoryRegion.allocate(byteCount: 128 * 1024)
        try client.register(local)
        let peer = try client.connect(address: peerAddress(for: client), port: port, timeout: .seconds(10))
        #expect(peer.exports.count == 8)
        for s in [5, 2] {
            fill(local, offset: 0, length: local.byteCount, seed: s)
            let seg = try peer.segment(named: "kv/session-47291/slot-\(s)")
            try await client.transfer(.write, [TransferDescriptor(local: local, target: .remote(seg), length: local.byteCount)])
            #expect(firstMismatch(pool, offset: s * 128 * 1024, length: 128 * 1024, seed: s) == nil)
        }
        // Slot 3 was never written: still zero.
        #expect(pool.withUnsafeBytes(offset: 3 * 128 * 1024, length: 128 * 1024) { $0.allSatisfy { $0 == 0 } })
        // Write-only slots refuse reads at prepare.
        let seg = try peer.segment(named: "kv/session-47291/slot-1")
        #expect(caught { try client.prepare(.read, [TransferDescriptor(local: local, target: .remote(seg), length: 16)]) }?.code == .remoteAccess)
        peer.disconnect()
    }
}
