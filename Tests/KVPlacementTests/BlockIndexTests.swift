import KVPlacement
import MemWallCore
import Testing

/// Precomputed, prefix-chained ids as in the traces.
func ids(_ values: [UInt64]) -> [BlockKey] { values.map { BlockKey(rawValue: $0) } }

/// A single DRAM tier of `n` blocks.
func dram(_ n: Int) -> [TierSpec] { [TierSpec(name: "dram", kind: .dram, capacityBlocks: n)] }

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
        index.release(a.blocks)
        #expect(index.referenceCount(of: BlockKey(rawValue: 1)) == 1)
        index.release(b.blocks)
        #expect(index.referenceCount(of: BlockKey(rawValue: 1)) == 0)
        #expect(index.cachedBlockCount == 4)
        #expect(index.invariantViolation() == nil)
    }
}
