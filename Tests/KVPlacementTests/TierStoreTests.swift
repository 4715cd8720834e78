@testable import KVPlacement
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
        // Every hit was loaded into the replay's buffer and compared with its contents;
        // every move between tiers and every load was checked against its checksum on arrival.
        #expect(r.verifiedReads == s.hits)
        #expect(built.store.verifiedReads == s.hits + s.promotions + s.demotions)
        #expect(r.bytesMoved["cpu: dram -> far"] == s.demotions * 4096)
        #expect(r.bytesMoved["cpu: far -> dram"] == s.promotions * 4096)
        // Each new block was written once, from the caller's buffer.
        let stored = r.bytesMoved.filter { $0.key.hasPrefix("cpu: caller -> ") }.values.reduce(0, +)
        #expect(stored == s.stores * 4096, "\(r.bytesMoved)")
    }

    @Test func realBytesMakeTheSameDecisionsAsMetadataOnlyAndMergeIO() throws {
        let trace = try MooncakeTrace.load(path: TestPaths.shippedTrace, limit: 400)
        let tiers = threeTiers(100, 300, 3000)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-kv-plan-\(getpid()).bin").path
        defer { unlink(path) }
        let registry = hostRegistry()
        registry.add(try URingTransport.makeWithFallback(), rank: 0)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: registry, storagePath: path)
        let real = try TraceReplay.run(trace, tiers: tiers, policy: .lfuda, store: built.store)
        let metadata = try TraceReplay.run(trace, tiers: tiers, policy: .lfuda)
        let s = real.statistics, m = metadata.statistics
        #expect(s.hitsByTier == m.hitsByTier)
        #expect(s.promotions == m.promotions && s.demotions == m.demotions && s.drops == m.drops)
        #expect(real.verifiedReads == s.hits)
        // Moves of one plan go out as one request per (tier, direction): far fewer
        // requests than blocks moved to and from the NVMe tier.
        let nvmeBlocks = real.bytesMoved.filter { $0.key.contains("nvme") && !$0.key.hasPrefix("cpu") }.values.reduce(0, +) / 4096
        #expect(nvmeBlocks > 0)
        #expect(built.store.requestsPosted > 0 && built.store.requestsPosted * 2 < nvmeBlocks,
                "\(built.store.requestsPosted) requests for \(nvmeBlocks) blocks")
    }

    @Test func corruptionIsCaughtWhenTheBlockComesBack() throws {
        let tiers = dramFar(2, 4)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, blockSize: 512, store: built.store)
        let buffers = try Buffers(cache: cache, count: 4)
        try cache.store(ids([1, 2]), from: buffers.slots(0..<2)).wait().check()
        try cache.store(ids([5, 6]), from: buffers.slots(2..<4)).wait().check()
        #expect(cache.tier(of: BlockKey(rawValue: 1)) == 1)
        try cache.corruptForTesting(BlockKey(rawValue: 1))
        // A load straight from the far tier refuses the damaged block, by name, and loads the other.
        let r = try cache.load(ids([1, 2]), into: buffers.slots(0..<2)).wait()
        #expect(r.failed.map(\.index) == [0])
        #expect(r.failed.first?.error.code == .corrupted)
        #expect(r.failed.first?.error.message.contains("far") == true)
        // A promotion checks on arrival too: the block is then lost, and a load says so.
        _ = try cache.prefetch(ids([1]))
        let again = try cache.load(ids([1]), into: buffers.slots(0..<1)).wait()
        #expect(again.failed.first?.error.code == .corrupted)
        #expect(cache.failedMoves == 1)
        // Storing it again repairs it.
        buffers.fill(0, with: 1)
        try cache.store(ids([1]), from: buffers.slots(0..<1)).wait().check()
        try cache.load(ids([1]), into: buffers.slots(1..<2)).wait().check()
        #expect(buffers.holds(1, contentsOf: 1))
        #expect(cache.invariantViolation() == nil)
    }

    @Test func corruptionInDRAMIsCaughtOnVerify() throws {
        let tiers = dramFar(4, 4)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, blockSize: 512, store: built.store)
        let buffers = try Buffers(cache: cache, count: 2)
        try cache.store(ids([1, 2]), from: buffers.slots(0..<2)).wait().check()
        try cache.verify(BlockKey(rawValue: 2))
        try cache.corruptForTesting(BlockKey(rawValue: 2))
        #expect { try cache.verify(BlockKey(rawValue: 2)) } throws: { ($0 as? MemWallError)?.code == .corrupted }
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
        #expect { try KVCache(tiers: dramFar(4, 400), store: built.store) } throws: { ($0 as? MemWallError)?.code == .outOfBounds }
    }

    @Test func copyOnWriteCopiesTheBytes() throws {
        let tiers = dramFar(16, 16)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, policy: .lru, blockSize: 4, store: built.store)
        let buffers = try Buffers(cache: cache, count: 2)
        var (a, _) = try cache.admit(tokens: [1, 2, 3, 4, 5])
        let (b, _) = try cache.admit(tokens: [1, 2, 3, 4, 5])
        // The runtime computes the shared tail's KV and stores it into the slot the admission reserved.
        buffers.fill(0, with: 77)
        try cache.store([a.blocks[1].key], from: buffers.slots(0..<1)).wait().check()
        try cache.append(tokens: [6], to: &a)
        #expect(a.blocks[1].key != b.blocks[1].key)
        #expect(cache.bytesMovedByPath["cpu: dram -> dram"] == 4096)
        // The copy travelled with the checksum of the stored bytes, and holds them.
        try cache.verify(a.blocks[1].key)
        try cache.verify(b.blocks[1].key)
        try cache.load([a.blocks[1].key], into: buffers.slots(1..<2)).wait().check()
        #expect(buffers.holds(1, contentsOf: 77))
        try cache.release(a)
        try cache.release(b)
    }

    @Test func badBuffersAndStaleKeysAreRefusedNotFollowed() throws {
        let tiers = dramFar(4, 4)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, policy: .lru, blockSize: 512, store: built.store)
        let buffers = try Buffers(cache: cache, count: 2)
        try cache.store(ids([1]), from: buffers.slots(0..<1)).wait().check()
        // Not cached: a per-block failure, not an error for the whole load.
        let r = try cache.load(ids([1, 99]), into: buffers.slots(0..<2)).wait()
        #expect(r.failed.map(\.index) == [1] && r.failed.first?.error.code == .notFound)
        #expect(throws: MemWallError.self) { try cache.verify(BlockKey(rawValue: 99)) }
        func code(_ body: () throws(MemWallError) -> KVTransfer) -> MemWallError.Code? {
            do throws(MemWallError) { _ = try body(); return nil } catch { return error.code }
        }
        let stranger = try MemoryRegion.allocate(byteCount: 4096)
        #expect(code { () throws(MemWallError) in try cache.load(ids([1]), into: [KVBuffer(region: stranger, offset: 0)]) } == .misuse)
        #expect(code { () throws(MemWallError) in try cache.store(ids([1, 2]), from: buffers.slots(0..<1)) } == .invalidArgument)
        #expect(code { () throws(MemWallError) in try cache.load(ids([1]), into: [KVBuffer(region: buffers.region, offset: 4096 * 2)]) } == .outOfBounds)
        #expect(code { () throws(MemWallError) in try cache.load(ids([1]), into: [KVBuffer(region: buffers.region, offset: 8)]) } == .misaligned)
        #expect(code { () throws(MemWallError) in try cache.load(ids([1]), into: [KVBuffer(region: buffers.region, offset: -4096)]) } == .outOfBounds)
        cache.close()
        #expect(code { () throws(MemWallError) in try cache.load(ids([1]), into: buffers.slots(0..<1)) } == .misuse)
        #expect(throws: MemWallError.self) { try cache.admit(blocks: ids([3])) }
        cache.close()   // a second close does nothing
    }
}

/// Registered buffers for tests: `count` blocks of the cache's size, filled with a byte per block.
struct Buffers {
    let region: MemoryRegion
    let blockBytes: Int

    init(cache: KVCache, count: Int) throws {
        blockBytes = cache.blockBytes ?? 4096
        region = try MemoryRegion.allocate(byteCount: blockBytes * count)
        try cache.register(region)
        for i in 0..<count { fill(i, with: UInt8(truncatingIfNeeded: i + 1)) }
    }

    func slots(_ range: Range<Int>) -> [KVBuffer] { range.map { KVBuffer(region: region, offset: $0 * blockBytes) } }

    func fill(_ i: Int, with byte: UInt8) {
        region.withUnsafeMutableBytes(offset: i * blockBytes, length: blockBytes) { _ = $0.initializeMemory(as: UInt8.self, repeating: byte) }
    }

    func holds(_ i: Int, contentsOf byte: UInt8) -> Bool {
        region.withUnsafeBytes(offset: i * blockBytes, length: blockBytes) { $0.allSatisfy { $0 == byte } }
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
