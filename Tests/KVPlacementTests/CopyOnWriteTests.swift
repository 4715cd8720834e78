import KVPlacement
import MemWallCore
import Testing

@Suite struct CopyOnWriteTests {
    @Test func fullBlocksAndPartialTailAreSharedByIdenticalPrompts() throws {
        let index = try BlockIndex(tiers: dram(64), blockSize: 4)
        let prompt: [UInt32] = [1, 2, 3, 4, 5, 6]   // one full block + a 2-token tail
        let (a, hitA) = try index.admit(tokens: prompt)
        #expect(hitA == 0)
        #expect(a.blocks.count == 2)
        #expect(index.tokenCount(of: a.blocks[1].key) == 2)
        let (b, hitB) = try index.admit(tokens: prompt)
        #expect(hitB == 6)
        #expect(b.blocks.map(\.key) == a.blocks.map(\.key))
        #expect(index.referenceCount(of: a.blocks[1].key) == 2)
        // A longer prompt shares the full block but not the partial tail.
        let (c, hitC) = try index.admit(tokens: prompt + [7])
        #expect(hitC == 4)
        #expect(c.blocks[1].key != a.blocks[1].key)
        try index.release(a.blocks); try index.release(b.blocks); try index.release(c.blocks)
        #expect(index.invariantViolation() == nil)
    }

    @Test func appendingToASharedTailCopiesIt() throws {
        let index = try BlockIndex(tiers: dram(64), blockSize: 4)
        var (a, _) = try index.admit(tokens: [1, 2, 3, 4, 5, 6])
        let (b, _) = try index.admit(tokens: [1, 2, 3, 4, 5, 6])
        let sharedTail = a.blocks[1].key
        try index.append(token: 7, to: &a)
        // a has its own tail now; b still sees the original, unchanged.
        #expect(a.blocks[1].key != sharedTail)
        #expect(b.blocks[1].key == sharedTail)
        #expect(index.tokenCount(of: sharedTail) == 2)
        #expect(index.tokenCount(of: a.blocks[1].key) == 3)
        #expect(index.referenceCount(of: sharedTail) == 1)
        #expect(index.referenceCount(of: a.blocks[0].key) == 2)
        #expect(index.statistics.copiesOnWrite == 1)
        #expect(a.tokenCount == 7)
        // The copied tail is keyed by its content: a third request with that prompt hits it fully.
        let (c, hitC) = try index.admit(tokens: [1, 2, 3, 4, 5, 6, 7])
        #expect(hitC == 7)
        #expect(c.blocks[1].key == a.blocks[1].key)
        try index.release(a.blocks); try index.release(b.blocks); try index.release(c.blocks)
        #expect(index.invariantViolation() == nil)
    }

    @Test func appendingToAnExclusiveTailRekeysInPlaceAndFillsNewBlocks() throws {
        let index = try BlockIndex(tiers: dram(64), blockSize: 4)
        var (a, _) = try index.admit(tokens: [1, 2, 3])
        let before = index.cachedBlockCount
        try index.append(token: 4, to: &a)                     // fills the tail in place
        #expect(index.cachedBlockCount == before)
        #expect(index.statistics.copiesOnWrite == 0)
        #expect(a.blocks[0].key == BlockKey.chained(parent: nil, tokens: [1, 2, 3, 4]))
        try index.append(token: 5, to: &a)                     // starts a second block
        #expect(a.blocks.count == 2)
        #expect(a.blocks[1].key == BlockKey.chained(parent: a.blocks[0].key, tokens: [5]))
        #expect(index.tokenCount(of: a.blocks[1].key) == 1)
        // The re-keyed block is findable by content.
        let (b, hit) = try index.admit(tokens: [1, 2, 3, 4, 5])
        #expect(hit == 5)
        try index.release(a.blocks); try index.release(b.blocks)
        #expect(index.invariantViolation() == nil)
    }

    @Test func appendingToContentThatExistsSharesIt() throws {
        let index = try BlockIndex(tiers: dram(64), blockSize: 4)
        let (x, _) = try index.admit(tokens: [1, 2, 3])
        var (y, _) = try index.admit(tokens: [1, 2])
        try index.append(token: 3, to: &y)
        #expect(y.blocks[0].key == x.blocks[0].key)
        #expect(index.referenceCount(of: x.blocks[0].key) == 2)
        try index.release(x.blocks); try index.release(y.blocks)
        #expect(index.invariantViolation() == nil)
    }
}
