import KVPlacement
import MemWallCore
import Testing

/// Releasing a request's blocks twice is API misuse: it must be refused, and a
/// block another request still holds must stay held (and cached).
@Suite struct DoubleReleaseTests {
    @Test("a block table released twice is refused and the shared block stays held")
    func doubleReleaseOfATableIsRefused() throws {
        let cache = try KVCache(tiers: dram(2), policy: .lru, blockSize: 4)
        let (a, _) = try cache.admit(tokens: [1, 2, 3, 4, 5, 6, 7, 8])      // blocks P, Q
        let (b, hits) = try cache.admit(tokens: [1, 2, 3, 4])               // shares P
        #expect(hits == 4)
        let shared = a.blocks[0].key
        #expect(cache.referenceCount(of: shared) == 2)
        try cache.release(a)
        let refused = #expect(throws: MemWallError.self) { try cache.release(a) }
        #expect(refused?.code == .misuse)
        // A copy of the table's references is the same admission: refused too.
        #expect(throws: MemWallError.self) { try cache.release(a.blocks) }
        #expect(cache.referenceCount(of: shared) == 1)
        // The tier is full: a new request may take Q's slot, never the held P's.
        _ = try cache.admit(tokens: [9, 9, 9, 9, 8, 8, 8, 8])
        #expect(cache.tier(of: shared) == 0)
        try cache.release(b)
        #expect(cache.referenceCount(of: shared) == 0)
        #expect(cache.invariantViolation() == nil)
    }

    @Test("an appended table keeps its admission: released once, then refused, on the index itself")
    func appendedTableIsReleasedOnce() throws {
        let index = try BlockIndex(tiers: dram(8), policy: .lru, blockSize: 2)
        var (a, _) = try index.admit(tokens: [1, 2, 3])
        let (b, _) = try index.admit(tokens: [1, 2, 3])     // shares the tail: the append copies it
        try index.append(token: 4, to: &a)
        try index.append(token: 5, to: &a)                  // a new block after a full tail
        try index.release(a.blocks)
        #expect(throws: MemWallError.self) { try index.release(a.blocks) }
        #expect(index.referenceCount(of: b.blocks[1].key) == 1)
        // A table admitted on another index is not this index's to release.
        let other = try BlockIndex(tiers: dram(8), policy: .lru, blockSize: 2)
        #expect(throws: MemWallError.self) { try other.release(b.blocks) }
        try index.release(b.blocks)
        #expect(index.invariantViolation() == nil)
    }
}
