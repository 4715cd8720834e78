import KVPlacement
import MemWallCore
import Testing
import Transport
import URingTransport
import Foundation

/// A registry with the transports every host has.
func hostRegistry() -> TransportRegistry {
    let r = TransportRegistry(log: { _ in })
    r.add(MemoryCopyTransport(), rank: 10)
    return r
}

func dramFar(_ a: Int, _ b: Int) -> [TierSpec] {
    [TierSpec(name: "dram", kind: .dram, capacityBlocks: a), TierSpec(name: "far", kind: .farMemory, capacityBlocks: b)]
}

@Suite struct TierStoreTests {
    @Test func realBytesReplayVerifiesEveryReadBack() throws {
        let trace = try MooncakeTrace.load(path: TestPaths.shippedTrace, limit: 600)
        let tiers = dramFar(150, 2000)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let r = try TraceReplay.run(trace, tiers: tiers, policy: .lfuda, store: built.store)
        let s = r.statistics
        #expect(s.hits > 0)
        #expect(s.promotions > 0)
        // Every hit was read back and compared (in DRAM or through the far tier), and
        // every promotion was checked against its checksum on arrival.
        #expect(r.verifiedReads == s.hits + s.promotions)
        #expect(r.bytesMoved["memcpy: dram -> far"] == s.demotions * 4096)
        #expect(r.bytesMoved["memcpy: far -> dram"] == s.promotions * 4096)
    }

    @Test func batchedDemotionsMoveTheSameBytesAsOneAtATime() throws {
        let trace = try MooncakeTrace.load(path: TestPaths.shippedTrace, limit: 400)
        let tiers = threeTiers(100, 300, 3000)
        var results: [(ReplayResult, Int)] = []
        for batched in [true, false] {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-kv-batch-\(getpid())-\(batched).bin").path
            defer { unlink(path) }
            let registry = hostRegistry()
            registry.add(try URingTransport.makeWithFallback(), rank: 0)
            let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: registry, storagePath: path)
            built.store.batchesMoves = batched
            let r = try TraceReplay.run(trace, tiers: tiers, policy: .lfuda, store: built.store)
            results.append((r, built.store.batchesPosted))
        }
        let (batched, batches) = results[0], (single, singles) = results[1]
        #expect(batched.statistics.hitsByTier == single.statistics.hitsByTier)
        #expect(batched.bytesMoved == single.bytesMoved)
        #expect(batched.verifiedReads == single.verifiedReads)
        #expect(batched.verifiedReads == batched.statistics.hits + batched.statistics.promotions)
        // Every demotion went out in a batch, and batches held many demotions each.
        #expect(singles == single.statistics.demotions)
        #expect(batches > 0 && batches * 4 < batched.statistics.demotions, "\(batches) batches for \(batched.statistics.demotions) demotions")
    }

    @Test func corruptionIsCaughtWhenTheBlockComesBack() throws {
        let tiers = dramFar(2, 4)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let index = try BlockIndex(tiers: tiers)
        try built.store.attach(to: index)
        let first = try index.admit(ids([1, 2]))
        try index.release(first.blocks)
        try index.release(try index.admit(ids([5, 6])).blocks)
        #expect(index.tier(of: BlockKey(rawValue: 1)) == 1)
        try built.store.corruptForTesting(slot: first.blocks[0].slot, tier: 1)
        do {
            _ = try index.admit(ids([1, 2]))
            Issue.record("a corrupted block was promoted without complaint")
        } catch {
            #expect(error.code == .corrupted)
            #expect(error.message.contains(BlockKey(rawValue: 1).description))
        }
    }

    @Test func corruptionInDRAMIsCaughtOnVerify() throws {
        let tiers = dramFar(4, 4)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let index = try BlockIndex(tiers: tiers)
        try built.store.attach(to: index)
        let a = try index.admit(ids([1, 2]))
        try built.store.verify(slot: a.blocks[1].slot, key: a.blocks[1].key, tier: 0, againstContents: true)
        try built.store.corruptForTesting(slot: a.blocks[1].slot, tier: 0)
        #expect(throws: MemWallError.self) {
            try built.store.verify(slot: a.blocks[1].slot, key: a.blocks[1].key, tier: 0, againstContents: false)
        }
    }

    @Test func tiersThisHostCannotServeAreRefusedByName() {
        let tiers = threeTiers(10, 10, 10)
        do {
            _ = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "/nonexistent/nvme.bin")
            Issue.record("an nvme tier without a storage transport was accepted")
        } catch {
            #expect(error.code == .unsupported)
            #expect(error.message.contains("tier 'nvme'"), "\(error.message)")
        }
        do {
            _ = try TierStore.build(tiers: dram(10) + [TierSpec(name: "peer", kind: .remote, capacityBlocks: 10)],
                                    blockBytes: 4096, registry: hostRegistry(), storagePath: "")
            Issue.record("a remote tier without a peer was accepted")
        } catch {
            #expect(error.code == .unsupported)
            #expect(error.message.contains("peer"))
        }
        #expect(throws: MemWallError.self) {
            try TierStore(blockBytes: 1000, dramBlocks: 4, lowerTiers: [])
        }
    }

    @Test func storeSmallerThanTheIndexIsRefused() throws {
        let built = try TierStore.build(tiers: dramFar(4, 4), blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let bigger = try BlockIndex(tiers: dramFar(4, 400))
        do {
            try built.store.attach(to: bigger)
            Issue.record("a far tier too small for the index was accepted")
        } catch {
            #expect(error.code == .outOfBounds)
        }
    }

    @Test func copyOnWriteCopiesTheBytes() throws {
        let tiers = dramFar(16, 16)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, policy: .lru, blockSize: 4, store: built.store)
        var (a, _) = try cache.admit(tokens: [1, 2, 3, 4, 5])
        let (b, _) = try cache.admit(tokens: [1, 2, 3, 4, 5])
        try cache.writeBytes(of: a.blocks[1]) { buf in buf[0] = 0xAB; buf[4095] = 0xCD }
        try cache.append(tokens: [6], to: &a)
        #expect(a.blocks[1].key != b.blocks[1].key)
        #expect(cache.bytesMovedByPath["cpu copy-on-write: dram -> dram"] == 4096)
        // The copy travelled with the checksum of the written bytes.
        try cache.verify(a.blocks[1].key)
        try cache.verify(b.blocks[1].key)
        try cache.release(a)
        try cache.release(b)
    }

    @Test func staleOrForeignReferencesAreRefusedNotFollowed() throws {
        let tiers = dramFar(4, 4)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, policy: .lru, blockSize: 512, store: built.store)
        let a = try cache.admit(blocks: ids([1]))
        var forged = a.blocks[0]
        forged.key = BlockKey(rawValue: 99)
        #expect(throws: MemWallError.self) { try cache.writeBytes(of: forged) { $0[0] = 1 } }
        #expect(throws: MemWallError.self) { try cache.verify(BlockKey(rawValue: 99)) }
        try cache.verify(BlockKey(rawValue: 1))
        try cache.release(a.blocks)
    }

    @Test func slotsThatHoldNoBytesAreRefused() throws {
        let built = try TierStore.build(tiers: dramFar(4, 4), blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let index = try BlockIndex(tiers: dramFar(4, 4))
        try built.store.attach(to: index)
        #expect(throws: MemWallError.self) {
            try built.store.verify(slot: 12345, key: BlockKey(rawValue: 1), tier: 0, againstContents: false)
        }
        #expect(throws: MemWallError.self) { try built.store.corruptForTesting(slot: -3, tier: 7) }
    }
}

@Suite struct MemoryCopyTransportTests {
    @Test func copiesBothWaysAndChecksRegistration() async throws {
        let t = MemoryCopyTransport()
        #expect(t.capabilities.implementation == .hardware)
        let local = try MemoryRegion.allocate(byteCount: 8192)
        let far = try MemoryRegion.allocate(byteCount: 8192)
        local.withUnsafeMutableBytes { for i in 0..<$0.count { $0[i] = UInt8(truncatingIfNeeded: i &* 7) } }
        let d = TransferDescriptor(local: local, localOffset: 4096, target: .memory(far), targetOffset: 0, length: 4096)
        #expect(throws: MemWallError.self) { try t.prepare(.write, [d]) }   // not registered
        try t.register(local)
        #expect(throws: MemWallError.self) { try t.register(local) }
        let report = try await t.transfer(.write, [d])
        #expect(report.bytes == 4096)
        let same = local.withUnsafeBytes(offset: 4096, length: 4096) { a in
            far.withUnsafeBytes(offset: 0, length: 4096) { b in a.elementsEqual(b) }
        }
        #expect(same)
        let back = TransferDescriptor(local: local, localOffset: 0, target: .memory(far), targetOffset: 0, length: 4096)
        try await t.transfer(.read, [back])
        #expect(local.withUnsafeBytes(offset: 0, length: 1) { $0[0] } == UInt8(truncatingIfNeeded: 4096 &* 7))
        let outside = TransferDescriptor(local: local, target: .memory(far), targetOffset: 8000, length: 4096)
        #expect(throws: MemWallError.self) { try t.prepare(.read, [outside]) }
        try t.deregister(local)
        #expect(throws: MemWallError.self) { try t.deregister(local) }
    }
}
