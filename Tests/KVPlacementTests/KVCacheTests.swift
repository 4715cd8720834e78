import KVPlacement
import MemWallCore
import Synchronization
import Testing
import Transport

@Suite struct KVCacheTests {
    @Test func eventsCarryParentAndTier() throws {
        let cache = try KVCache(tiers: threeTiers(2, 2, 2), policy: .lru, blockSize: 512)
        let seen = Mutex<[KVEvent]>([])
        let sub = cache.subscribe { e in seen.withLock { $0.append(e) } }
        try cache.release(try cache.admit(blocks: ids([1, 2])).blocks)
        try cache.release(try cache.admit(blocks: ids([5, 6])).blocks)
        let events = seen.withLock { $0 }
        #expect(events.contains(.stored(key: BlockKey(rawValue: 2), parent: BlockKey(rawValue: 1), tier: 0, tokenCount: 512)))
        #expect(events.contains(.stored(key: BlockKey(rawValue: 1), parent: nil, tier: 0, tokenCount: 512)))
        #expect(events.contains(.moved(key: BlockKey(rawValue: 2), parent: BlockKey(rawValue: 1), from: 0, to: 1)))
        // The tail moved before its parent.
        let tailMove = try #require(events.firstIndex(of: .moved(key: BlockKey(rawValue: 2), parent: BlockKey(rawValue: 1), from: 0, to: 1)))
        let rootMove = try #require(events.firstIndex(of: .moved(key: BlockKey(rawValue: 1), parent: nil, from: 0, to: 1)))
        #expect(tailMove < rootMove)
        cache.unsubscribe(sub)
        let count = events.count
        try cache.release(try cache.admit(blocks: ids([9, 10, 11, 12])).blocks)
        #expect(seen.withLock { $0.count } == count)
        #expect(cache.statistics.drops > 0)
    }

    @Test func storedEventsCountThePartialTailsTokens() throws {
        let cache = try KVCache(tiers: dram(16), policy: .lru, blockSize: 4)
        let counts = Mutex<[Int]>([])
        _ = cache.subscribe { e in
            if case .stored(_, _, _, let n) = e { counts.withLock { $0.append(n) } }
        }
        var (table, _) = try cache.admit(tokens: [1, 2, 3, 4, 5, 6])
        #expect(counts.withLock { $0 } == [4, 2])
        try cache.append(tokens: [7], to: &table)   // exclusive tail: re-keyed in place, 3 tokens
        #expect(counts.withLock { $0 } == [4, 2, 3])
        try cache.release(table)
    }

    @Test func concurrentRequestsLeaveAConsistentCache() async throws {
        let cache = try KVCache(tiers: threeTiers(24, 32, 64), policy: .lfuda, blockSize: 4)
        let stored = Atomic<Int>(0)
        let removed = Atomic<Int>(0)
        _ = cache.subscribe { e in
            switch e {
            case .stored: stored.add(1, ordering: .relaxed)
            case .removed: removed.add(1, ordering: .relaxed)
            case .moved: break
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var rng = SplitMix(seed: UInt64(worker))
                    for _ in 0..<300 {
                        // Conversations share a system prompt and their own history.
                        let conversation = UInt32(rng.next() % 6)
                        let length = Int(rng.next() % 20) + 1
                        let prompt = [UInt32](repeating: 7, count: 4) + (0..<UInt32(length)).map { conversation &* 100 &+ $0 }
                        var (table, _) = try cache.admit(tokens: prompt)
                        try cache.append(tokens: [UInt32(rng.next() % 3), 9], to: &table)
                        if rng.next() % 4 == 0 { try cache.prefetch(table.blocks.map(\.key)) }
                        try cache.release(table)
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(cache.invariantViolation() == nil)
        let s = cache.statistics
        #expect(s.hits > 0)
        #expect(s.hits + s.misses >= s.lookups)
        // Nothing is referenced once every request released.
        let promptKey = BlockKey.chained(parent: nil, tokens: [UInt32](repeating: 7, count: 4))
        #expect(cache.referenceCount(of: promptKey) == 0)
        // Every stored block is either still cached or was removed (re-keys count as both).
        #expect(stored.load(ordering: .relaxed) - removed.load(ordering: .relaxed) == s.occupancy.reduce(0, +))
    }

    @Test func concurrentRealBytesStayVerified() async throws {
        let tiers = dramFar(16, 48)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, policy: .lru, blockSize: 512, store: built.store)
        let loaded = try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<4 {
                let buffers = try MemoryRegion.allocate(byteCount: 6 * 4096)
                try cache.register(buffers)
                group.addTask {
                    var loaded = 0
                    var rng = SplitMix(seed: 100 + UInt64(worker))
                    let expected = try MemoryRegion.allocate(byteCount: 4096)
                    for _ in 0..<200 {
                        let c = rng.next() % 10
                        let keys = (0..<(rng.next() % 6 + 1)).map { BlockKey(rawValue: c * 64 + $0) }
                        let a = try cache.admit(blocks: keys)
                        // The runtime computes the missed blocks and stores them; the hits it loads.
                        let fresh = a.blocks[a.hitBlocks...].filter(\.isCached).map(\.key)
                        for (j, k) in fresh.enumerated() {
                            buffers.withUnsafeMutableBytes(offset: j * 4096, length: 4096) { TierStore.deterministicPayload(k, $0) }
                        }
                        try cache.store(fresh, from: (0..<fresh.count).map { KVBuffer(region: buffers, offset: $0 * 4096) }).wait().check()
                        let hits = a.blocks.prefix(a.hitBlocks).map(\.key)
                        let r = try cache.load(hits, into: (0..<hits.count).map { KVBuffer(region: buffers, offset: $0 * 4096) }).wait()
                        // Another task may have admitted a block and not stored it yet; nothing else may fail.
                        #expect(r.failed.allSatisfy { $0.error.code == .notFound }, "\(r.failed)")
                        for (j, k) in hits.enumerated() where !r.failed.contains(where: { $0.index == j }) {
                            expected.withUnsafeMutableBytes(length: 4096) { TierStore.deterministicPayload(k, $0) }
                            let same = buffers.withUnsafeBytes(offset: j * 4096, length: 4096) { got in
                                expected.withUnsafeBytes(length: 4096) { got.elementsEqual($0) }
                            }
                            #expect(same, "block \(k) came back with other bytes")
                            loaded += 1
                        }
                        try cache.release(a.blocks)
                    }
                    return loaded
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(cache.invariantViolation() == nil)
        #expect(loaded > 0)
        #expect(cache.statistics.promotions > 0)
        #expect(cache.failedMoves == 0)
        #expect((cache.bytesMovedByPath["cpu: far -> dram"] ?? 0) == cache.statistics.promotions * 4096)
    }
}
