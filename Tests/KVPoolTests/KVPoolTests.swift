#if canImport(Glibc)
import Glibc
#endif
import KVPlacement
@testable import KVPool
import MemWallCore
import NUMATransport
import Synchronization
import Testing
import Transport

/// A pool name no other test (or test run) uses.
enum PoolNames {
    private static let counter = Atomic<Int>(0)
    static func fresh(_ what: String) -> String {
        "test-\(what)-\(getpid())-\(counter.wrappingAdd(1, ordering: .relaxed).newValue)"
    }
}

/// Buffers holding blocks whose contents follow from their keys.
struct Blocks {
    let region: MemoryRegion
    let blockBytes: Int

    init(count: Int, blockBytes: Int) throws {
        region = try MemoryRegion.allocate(byteCount: count * blockBytes)
        self.blockBytes = blockBytes
    }

    init(region: MemoryRegion, blockBytes: Int) {
        self.region = region
        self.blockBytes = blockBytes
    }

    func buffers(_ n: Int, from first: Int = 0) -> [KVBuffer] {
        (first..<(first + n)).map { KVBuffer(region: region, offset: $0 * blockBytes) }
    }

    func fill(_ keys: [BlockKey], from first: Int = 0) {
        for (i, k) in keys.enumerated() {
            region.withUnsafeMutableBytes(offset: (first + i) * blockBytes, length: blockBytes) { TierStore.deterministicPayload(k, $0) }
        }
    }

    func clear() { region.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) } }

    /// Whether buffer `i` holds `key`'s contents.
    func holds(_ key: BlockKey, at i: Int) -> Bool {
        let expected = UnsafeMutableRawBufferPointer.allocate(byteCount: blockBytes, alignment: 64)
        defer { expected.deallocate() }
        TierStore.deterministicPayload(key, expected)
        return region.withUnsafeBytes(offset: i * blockBytes, length: blockBytes) { memcmp($0.baseAddress!, expected.baseAddress!, blockBytes) == 0 }
    }
}

func chain(_ tag: UInt64, _ n: Int) -> [BlockKey] {
    (0..<n).map { BlockKey(rawValue: BlockKey.mix(tag << 32 | UInt64($0))) }
}

/// A pool for one test, destroyed at the end.
final class ScratchPool {
    let name: String
    let pool: KVPool

    init(_ what: String, blocks: Int, blockBytes: Int = 16384, processes: Int = 8, node: Int? = nil, device: String? = nil) throws {
        name = PoolNames.fresh(what)
        let bytes = PoolLayout(blockBytes: blockBytes, slotCount: blocks, processSlots: processes).usedBytes
        if let device {
            pool = try KVPool.create(name: name, device: device, bytes: bytes, blockBytes: blockBytes, processes: processes, allowWrite: true)
        } else {
            pool = try KVPool.create(name: name, bytes: bytes, blockBytes: blockBytes, node: node, processes: processes)
        }
    }

    deinit {
        pool.close()
        try? KVPool.destroy(name: name, force: true)
    }
}

@Suite("KVPool in one process")
struct KVPoolTests {
    @Test func storeLookupLoadAndViewRoundTrip() throws {
        let s = try ScratchPool("roundtrip", blocks: 32)
        #expect(s.pool.capacityBlocks == 32)
        let keys = chain(1, 8)
        let b = try Blocks(count: 8, blockBytes: s.pool.blockBytes)
        b.fill(keys)
        let stored = try s.pool.store(keys, from: b.buffers(8))
        #expect(stored.succeeded && stored.bytes == 8 * s.pool.blockBytes)
        #expect(try s.pool.lookup(keys).count == 8)
        #expect(try s.pool.lookup(chain(2, 3) ).count == 0)
        #expect(try s.pool.lookup(Array(keys[..<3]) + chain(2, 1) + Array(keys[4...])).count == 3, "a lookup stops at the first miss")
        b.clear()
        let loaded = try s.pool.load(keys, into: b.buffers(8))
        #expect(loaded.succeeded && loaded.bytes == 8 * s.pool.blockBytes)
        #expect(keys.indices.allSatisfy { b.holds(keys[$0], at: $0) })
        let v = try s.pool.view(keys[5])
        let intact = v.verify()
        #expect(intact)
        let expected = UnsafeMutableRawBufferPointer.allocate(byteCount: s.pool.blockBytes, alignment: 64)
        defer { expected.deallocate() }
        TierStore.deterministicPayload(keys[5], expected)
        #expect(memcmp(v.bytes.baseAddress!, expected.baseAddress!, s.pool.blockBytes) == 0, "the view is the block, in place")
        #expect(try s.pool.status().references == 1, "an open view holds one reference")
        v.close()
        let st = try s.pool.status()
        #expect(st.references == 0 && st.blocks == 8 && st.bytesUsed == 8 * s.pool.blockBytes && st.reserved == 0)
        #expect(st.problems.isEmpty, "\(st.problems)")
        #expect(st.counters["stores"] == 8 && st.counters["loads"] == 8 && st.counters["views"] == 1)
        let missing = try s.pool.load(chain(3, 1), into: b.buffers(1))
        #expect(missing.failed.first?.error.code == .notFound)
    }

    @Test func aBlockIsStoredOnce() throws {
        let s = try ScratchPool("once", blocks: 16)
        let keys = chain(4, 6)
        let b = try Blocks(count: 6, blockBytes: s.pool.blockBytes)
        b.fill(keys)
        #expect(try s.pool.store(keys, from: b.buffers(6)).bytes == 6 * s.pool.blockBytes)
        let again = try s.pool.store(keys, from: b.buffers(6))
        #expect(again.succeeded && again.bytes == 0, "blocks already there are skipped, not written twice")
        let other = try KVPool.attach(name: s.name)
        defer { other.close() }
        #expect(try other.store(keys, from: b.buffers(6)).bytes == 0, "another attachment sees them too")
        let st = try s.pool.status()
        #expect(st.blocks == 6 && st.bytesUsed == 6 * s.pool.blockBytes && st.counters["duplicates"] == 12)
    }

    @Test func evictionIsTailFirstAndSparesReferencedBlocks() throws {
        let s = try ScratchPool("evict", blocks: 8)
        let a = chain(5, 8), c = chain(6, 4)
        let b = try Blocks(count: 8, blockBytes: s.pool.blockBytes)
        b.fill(a)
        #expect(try s.pool.store(a, from: b.buffers(8)).succeeded)
        // The tail is referenced and every other block of the chain has a cached child: nothing can leave.
        let tail = try s.pool.view(a[7])
        b.fill(c)
        let refused = try s.pool.store(c, from: b.buffers(4))
        #expect(refused.failed.count == 4 && refused.failed.allSatisfy { $0.error.code == .outOfBounds })
        #expect(try s.pool.lookup(a).count == 8)
        tail.close()
        let taken = try s.pool.store(c, from: b.buffers(4))
        #expect(taken.succeeded)
        #expect(try s.pool.lookup(a).count == 4, "the chain left from its tail: its first four blocks stay")
        #expect(try s.pool.lookup(c).count == 4)
        let st = try s.pool.status()
        #expect(st.blocks == 8 && st.counters["evictions"] == 4 && st.problems.isEmpty, "\(st.problems)")
        b.clear()
        let back = try s.pool.load(Array(a[..<4]) + c, into: b.buffers(8))
        #expect(back.succeeded)
        #expect((0..<4).allSatisfy { b.holds(a[$0], at: $0) } && (0..<4).allSatisfy { b.holds(c[$0], at: 4 + $0) })
    }

    @Test func namesAndExistingPoolsAreChecked() throws {
        for bad in ["", ".hidden", "a/b", "../x", String(repeating: "n", count: 65), "spa ce", "é"] {
            #expect(throws: MemWallError.self) { _ = try KVPool.create(name: bad, bytes: 1 << 20, blockBytes: 4096) }
        }
        let s = try ScratchPool("exists", blocks: 4)
        let b = try Blocks(count: 1, blockBytes: s.pool.blockBytes)
        b.fill(chain(7, 1))
        _ = try s.pool.store(chain(7, 1), from: b.buffers(1))
        #expect {
            _ = try KVPool.create(name: s.name, bytes: 1 << 20, blockBytes: 4096)
        } throws: { ($0 as? MemWallError)?.code == .alreadyExists }
        #expect(try s.pool.lookup(chain(7, 1)).count == 1, "the existing pool was not touched")
        #expect {
            try KVPool.destroy(name: s.name)
        } throws: { ($0 as? MemWallError)?.code == .busy && "\($0)".contains("this process") }
        #expect(throws: MemWallError.self) { _ = try KVPool.attach(name: PoolNames.fresh("absent")) }
        #expect(throws: MemWallError.self) { _ = try KVPool.create(name: PoolNames.fresh("tiny"), bytes: 8192, blockBytes: 4096) }
        #expect(throws: MemWallError.self) { _ = try KVPool.create(name: PoolNames.fresh("odd"), bytes: 1 << 20, blockBytes: 1000) }
    }

    @Test func aClosedPoolRefusesCallsAndViewsKeepItAttached() throws {
        let s = try ScratchPool("close", blocks: 4)
        let other = try KVPool.attach(name: s.name)
        let keys = chain(8, 2)
        let b = try Blocks(count: 2, blockBytes: s.pool.blockBytes)
        b.fill(keys)
        _ = try other.store(keys, from: b.buffers(2))
        let v = try other.view(keys[0])
        other.close()
        #expect(throws: MemWallError.self) { _ = try other.lookup(keys) }
        #expect(throws: MemWallError.self) { _ = try other.view(keys[1]) }
        #expect(try s.pool.status().processesAlive == 2, "the open view keeps its process attached")
        let intact = v.verify()
        #expect(intact)
        v.close()
        let st = try s.pool.status()
        #expect(st.processesAlive == 1 && st.references == 0)
    }

    @Test func theSegmentIsPrivateAndDestroyRemovesIt() throws {
        let name = PoolNames.fresh("files")
        let pool = try KVPool.create(name: name, bytes: 1 << 20, blockBytes: 4096)
        var st = stat()
        #expect(lstat(pool.path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        pool.close()
        try KVPool.destroy(name: name)
        #expect(lstat(pool.path, &st) != 0)
        #expect { try KVPool.destroy(name: name) } throws: { ($0 as? MemWallError)?.code == .notFound }
    }

    @Test func poolOnTheFarNodeReportsWhereItsPagesAre() throws {
        let allocator = NUMAAllocator()
        guard let far = allocator.farNode else {
            print("skip: no far-memory node (real or emulated) on this host")
            return
        }
        let s = try ScratchPool("far", blocks: 64, node: far.id)
        let st = try s.pool.status(pages: true)
        #expect(st.node == far.id)
        #expect(st.nodeEmulated == far.isEmulated)
        let expectedNode = far.isEmulated ? allocator.realNodes[0] : far.id
        #expect(st.pagesPerNode.keys.sorted() == [String(expectedNode)], "every page of the segment is on node \(expectedNode): \(st.pagesPerNode)")
        #expect(st.pagesPerNode[String(expectedNode)] == s.pool.tables.segment.region.byteCount / PageSize.bytes)
    }
}

/// The pool as a tier of `KVCache` (`dram:N,pool:NAME[,nvme:N]`): what one cache stores,
/// another — another process in real use — finds and loads from the pool.
@Suite("KVPool as a KVCache tier")
struct PoolTierTests {
    private func cache(_ pool: String, dram: Int, blockBytes: Int) throws -> (KVCache, KVPool, MemoryRegion) {
        let shared = try KVPool.attach(name: pool)
        let c = try KVCache(tiers: [TierSpec(name: "dram", kind: .dram, capacityBlocks: dram), try TierSpec.parse("pool:\(pool)")],
                            policy: .lru, store: try TierStore(blockBytes: blockBytes, dramBlocks: dram, lowerTiers: []), shared: shared)
        let region = try MemoryRegion.allocate(byteCount: 16 * blockBytes)
        try c.register(region)
        return (c, shared, region)
    }

    @Test func whatOneCacheStoresAnotherLoadsFromThePool() throws {
        let s = try ScratchPool("tier", blocks: 64)
        let bytes = s.pool.blockBytes
        let (a, pa, ra) = try cache(s.name, dram: 4, blockBytes: bytes)
        let (b, pb, rb) = try cache(s.name, dram: 4, blockBytes: bytes)
        defer { a.close(); b.close(); pa.close(); pb.close() }
        #expect(a.sharedPosition == 1 && a.tiers.map(\.kind) == [.dram], "the pool is not one of the index's tiers")
        let keys = chain(60, 8)
        let src = Blocks(region: ra, blockBytes: bytes)
        src.fill(keys)
        let stored = try a.store(keys, from: src.buffers(8)).wait()
        #expect(stored.succeeded)
        #expect(a.sharedStatistics.blocksStored == 8, "every block went into the pool too")
        // A's DRAM holds 4 (and 4 spare slots); its lookups find the rest in the pool, at tier 1.
        let mine = a.lookup(keys)
        #expect(mine.count == 8 && mine.tiers.allSatisfy { $0 == 0 || $0 == 1 })
        // B never stored anything: every block is a pool hit for it.
        let theirs = b.lookup(keys)
        #expect(theirs.count == 8 && theirs.tiers == Array(repeating: 1, count: 8))
        let dst = Blocks(region: rb, blockBytes: bytes)
        dst.clear()
        let loaded = try b.load(keys, into: dst.buffers(8)).wait()
        #expect(loaded.succeeded && loaded.bytes == 8 * bytes)
        #expect(keys.indices.allSatisfy { dst.holds(keys[$0], at: $0) })
        #expect(b.sharedStatistics.blocksLoaded == 8)
        #expect(try s.pool.status().blocks == 8, "one copy in the pool, whoever stored it")
        // A block in neither place fails on its own.
        let missing = try b.load(chain(61, 1), into: dst.buffers(1)).wait()
        #expect(missing.failed.first?.error.code == .notFound)
    }

    @Test func aPoolTierIsCheckedWhereItIsGiven() throws {
        let s = try ScratchPool("tiercheck", blocks: 8)
        let tiers = [TierSpec(name: "dram", kind: .dram, capacityBlocks: 4), try TierSpec.parse("pool:\(s.name)")]
        let store = try TierStore(blockBytes: s.pool.blockBytes, dramBlocks: 4, lowerTiers: [])
        #expect(throws: MemWallError.self) { _ = try KVCache(tiers: tiers, store: store) }                  // no pool given
        #expect(throws: MemWallError.self) { _ = try KVCache(tiers: tiers, shared: s.pool) }                // no byte store
        #expect(throws: MemWallError.self) { _ = try KVCache(tiers: [tiers[0]], store: store, shared: s.pool) }   // no place for it
        #expect(throws: MemWallError.self) { _ = try KVCache(tiers: [tiers[1], tiers[0]], store: store, shared: s.pool) }  // not after dram
        #expect(throws: MemWallError.self) { try TierSpec.validate(tiers) }                               // a command that models one process
        #expect(throws: MemWallError.self) { _ = try TierSpec.parse("pool:../x") }
        #expect(try TierSpec.parse("pool:\(s.name)").description == "pool:\(s.name)")
        let odd = try TierStore(blockBytes: 2 * s.pool.blockBytes, dramBlocks: 4, lowerTiers: [])
        #expect(throws: MemWallError.self) { _ = try KVCache(tiers: tiers, store: odd, shared: s.pool) }   // block sizes differ
    }
}
