import KVPlacement
import MemWallCore
import Testing

/// Precomputed, prefix-chained ids as in the traces.
func ids(_ values: [UInt64]) -> [BlockKey] { values.map { BlockKey(rawValue: $0) } }

/// A single DRAM tier of `n` blocks.
func dram(_ n: Int) -> [TierSpec] { [TierSpec(name: "dram", kind: .dram, capacityBlocks: n)] }

/// DRAM + far memory + NVMe of the given sizes.
func threeTiers(_ a: Int, _ b: Int, _ c: Int) -> [TierSpec] {
    [TierSpec(name: "dram", kind: .dram, capacityBlocks: a),
     TierSpec(name: "far", kind: .farMemory, capacityBlocks: b),
     TierSpec(name: "nvme", kind: .nvme, capacityBlocks: c)]
}

@Suite struct BlockIndexTests {
    @Test func sharedPrefixIsHitAndReferenceCounted() throws {
        let index = try BlockIndex(tiers: dram(100), policy: .lru)
        let a = try index.admit(ids([1, 2, 3]))
        #expect(a.hitBlocks == 0)
        let b = try index.admit(ids([1, 2, 4]))
        #expect(b.hitBlocks == 2)
        #expect(b.hitsByTier == [2])
        #expect(index.referenceCount(of: BlockKey(rawValue: 1)) == 2)
        #expect(index.referenceCount(of: BlockKey(rawValue: 3)) == 1)
        try index.release(a.blocks)
        #expect(index.referenceCount(of: BlockKey(rawValue: 1)) == 1)
        try index.release(b.blocks)
        #expect(index.referenceCount(of: BlockKey(rawValue: 1)) == 0)
        #expect(index.cachedBlockCount == 4)
        #expect(index.statistics.lookups == 6)
        #expect(index.statistics.hits == 2)
        #expect(index.invariantViolation() == nil)
    }

    @Test func hitStopsAtTheFirstMissingBlock() throws {
        let index = try BlockIndex(tiers: dram(100))
        try index.release(try index.admit(ids([1, 2, 3])).blocks)
        // 9 is not cached, so 3 after it cannot count as a prefix hit.
        let a = try index.admit(ids([1, 9, 3]))
        #expect(a.hitBlocks == 1)
    }

    @Test func evictionTakesChainTailsFirst() throws {
        let index = try BlockIndex(tiers: dram(4), policy: .lru)
        try index.release(try index.admit(ids([1, 2, 3, 4])).blocks)
        // The chain's root (1) is the least recently used block, but it has a child:
        // the tail (4) must go first, then 3.
        try index.release(try index.admit(ids([10, 11])).blocks)
        #expect(index.tier(of: BlockKey(rawValue: 4)) == nil)
        #expect(index.tier(of: BlockKey(rawValue: 3)) == nil)
        #expect(index.tier(of: BlockKey(rawValue: 1)) == 0)
        #expect(index.tier(of: BlockKey(rawValue: 2)) == 0)
        #expect(index.invariantViolation() == nil)
    }

    @Test func pinnedBlocksStay() throws {
        let index = try BlockIndex(tiers: dram(3), policy: .lru)
        try index.release(try index.admit(ids([1])).blocks)
        #expect(index.setPinned(ids([1]), true) == 1)
        for k in UInt64(100)..<UInt64(200) { try index.release(try index.admit(ids([k])).blocks) }
        #expect(index.tier(of: BlockKey(rawValue: 1)) == 0)
        index.setPinned(ids([1]), false)
        for k in UInt64(300)..<UInt64(310) { try index.release(try index.admit(ids([k])).blocks) }
        #expect(index.tier(of: BlockKey(rawValue: 1)) == nil)
    }

    @Test func referencedBlocksAreNeverEvictedAndOverflowIsUncached() throws {
        let index = try BlockIndex(tiers: dram(3))
        let held = try index.admit(ids([1, 2, 3]))
        // Every slot is referenced: a new request's blocks cannot be cached, and nothing held leaves.
        let b = try index.admit(ids([7, 8]))
        #expect(b.blocks.allSatisfy { !$0.isCached })
        #expect(index.statistics.uncached == 2)
        #expect(index.cachedPrefixLength(ids([1, 2, 3])) == 3)
        // A request longer than the cache keeps what fits and computes the rest uncached.
        try index.release(held.blocks)
        let long = try index.admit(ids([20, 21, 22, 23, 24]))
        #expect(long.blocks.prefix(3).allSatisfy { $0.isCached })
        #expect(long.blocks.suffix(2).allSatisfy { !$0.isCached })
        try index.release(long.blocks)
        try index.release(b.blocks)   // uncached references are ignored
        #expect(index.invariantViolation() == nil)
    }

    @Test func demotionCascadesAndHitsPromote() throws {
        let index = try BlockIndex(tiers: threeTiers(2, 2, 4), policy: .lru)
        try index.release(try index.admit(ids([1, 2])).blocks)
        try index.release(try index.admit(ids([5, 6])).blocks)   // 1,2 → far
        #expect(index.tier(of: BlockKey(rawValue: 1)) == 1)
        #expect(index.tier(of: BlockKey(rawValue: 2)) == 1)
        try index.release(try index.admit(ids([7, 8])).blocks)   // 5,6 → far, 1,2 → nvme
        #expect(index.tier(of: BlockKey(rawValue: 1)) == 2)
        let a = try index.admit(ids([1, 2, 3]))
        #expect(a.hitBlocks == 2)
        #expect(a.hitsByTier == [0, 0, 2])
        #expect(index.tier(of: BlockKey(rawValue: 1)) == 0)
        #expect(index.tier(of: BlockKey(rawValue: 2)) == 0)
        let s = index.statistics
        #expect(s.promotions == 2)
        #expect(s.demotions >= 6)
        #expect(s.occupancy.reduce(0, +) == index.cachedBlockCount)
        try index.release(a.blocks)
        #expect(index.invariantViolation() == nil)
    }

    @Test func prefetchPromotesWithoutReferencing() throws {
        let index = try BlockIndex(tiers: threeTiers(2, 4, 4))
        try index.release(try index.admit(ids([1, 2])).blocks)
        try index.release(try index.admit(ids([3, 4])).blocks)
        #expect(index.tier(of: BlockKey(rawValue: 1)) == 1)
        #expect(try index.prefetch(ids([1, 2])) == 2)
        #expect(index.tier(of: BlockKey(rawValue: 2)) == 0)
        #expect(index.referenceCount(of: BlockKey(rawValue: 1)) == 0)
        #expect(index.invariantViolation() == nil)
    }

    @Test(arguments: EvictionPolicyName.online)
    func randomWorkloadKeepsInvariants(policy: EvictionPolicyName) throws {
        let index = try BlockIndex(tiers: threeTiers(16, 24, 40), policy: policy)
        var rng = SplitMix(seed: 42)
        var live: [[BlockRef]] = []
        for step in 0..<4000 {
            // Chains of a few conversations, each extending a random prefix.
            let conv = rng.next() % 12
            let len = Int(rng.next() % 9) + 1
            let keys = (0..<len).map { BlockKey(rawValue: conv * 1000 + UInt64($0)) }
            live.append(try index.admit(keys).blocks)
            if live.count > 5 || rng.next() % 2 == 0 {
                try index.release(live.remove(at: Int(rng.next() % UInt64(live.count))))
            }
            if step % 97 == 0, let v = index.invariantViolation() {
                Issue.record("step \(step): \(v)")
                return
            }
        }
        for l in live { try index.release(l) }
        #expect(index.invariantViolation() == nil)
        let s = index.statistics
        #expect(s.hits + s.misses == s.lookups)
        #expect(s.stores - s.drops == index.cachedBlockCount)
    }

    @Test func badConfigurationIsRefused() {
        #expect(throws: MemWallError.self) { try BlockIndex(tiers: dram(0)) }
        #expect(throws: MemWallError.self) { try BlockIndex(tiers: []) }
        #expect(throws: MemWallError.self) {
            try BlockIndex(tiers: [TierSpec(name: "far", kind: .farMemory, capacityBlocks: 10)])
        }
        #expect(throws: MemWallError.self) { try BlockIndex(tiers: dram(10), blockSize: 0) }
        #expect(throws: MemWallError.self) { try BlockIndex(tiers: dram(1 << 40)) }
        do {
            _ = try TierSpec.parse("dram:0")
            Issue.record("capacity 0 was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("'0'"))
        }
        do {
            _ = try TierSpec.parse("hbm:100")
            Issue.record("unknown tier kind was accepted")
        } catch {
            #expect(error.message.contains("hbm:100"))
        }
        do {
            _ = try EvictionPolicyName.parse("lirs")
            Issue.record("unknown policy was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("'lirs'"))
            #expect(error.message.contains("lru, lfuda"))
        }
        #expect(throws: MemWallError.self) { try RoutingPolicy.parse("random") }
    }

    @Test func chainedKeysDependOnParentTokensAndExtraKey() {
        let a = BlockKey.chained(parent: nil, tokens: [1, 2, 3])
        #expect(a == BlockKey.chained(parent: nil, tokens: [1, 2, 3]))
        #expect(a != BlockKey.chained(parent: nil, tokens: [1, 2, 4]))
        #expect(a != BlockKey.chained(parent: nil, tokens: [1, 2, 3], extraKey: 7))
        let b = BlockKey.chained(parent: a, tokens: [4])
        #expect(b != BlockKey.chained(parent: BlockKey.chained(parent: nil, tokens: [9, 2, 3]), tokens: [4]))
        // Incremental form equals the one-shot form (what makes in-place appends O(1)).
        #expect(BlockKey.chained(parent: a, tokens: [4, 5]) == b.appending(token: 5))
    }

    @Test func metadataStaysUnder128BytesPerBlock() throws {
        for policy in EvictionPolicyName.online {
            let index = try BlockIndex(tiers: dram(10_000), policy: policy)
            for c in UInt64(0)..<UInt64(2_000) {
                try index.release(try index.admit((0..<UInt64(6)).map { BlockKey(rawValue: c * 100 + $0) }).blocks)
            }
            #expect(index.cachedBlockCount == 10_000)
            let perBlock = Double(index.metadataBytes) / Double(index.cachedBlockCount)
            #expect(perBlock <= 128, "\(policy): \(perBlock) bytes per block")
            #expect(BlockIndex.entryStride == 56)
        }
    }
}

/// Small deterministic generator for workloads (MemWallCore's).
typealias SplitMix = SplitMix64
