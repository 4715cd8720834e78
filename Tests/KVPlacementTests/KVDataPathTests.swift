import Foundation
@testable import KVPlacement
import MemWallCore
import Synchronization
import Testing
import Transport
import URingTransport

/// A storage transport whose posts of one direction wait at a gate until the
/// test opens it: the real transport moves the bytes, the gate only decides
/// when, so a test can hold an operation in flight and prove by ordering what
/// runs meanwhile.
final class GatedTransport: Transport {
    let inner: any Transport
    let gated: TransferOperation
    private let open = Mutex(true)
    private let parking = ThreadParking()
    /// Posts waiting at the gate now.
    let waiting = Atomic<Int>(0)

    init(_ inner: any Transport, gating operation: TransferOperation) {
        self.inner = inner
        gated = operation
    }

    var capabilities: TransportCapabilities { inner.capabilities }
    var costEstimator: PathCostEstimator { inner.costEstimator }
    var identity: TransportIdentity { inner.identity }
    func register(_ region: MemoryRegion) throws(MemWallError) { try inner.register(region) }
    func deregister(_ region: MemoryRegion) throws(MemWallError) { try inner.deregister(region) }
    func prepare(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) throws(MemWallError) -> PreparedTransfer {
        try inner.prepare(operation, descriptors)
    }
    func post(_ prepared: PreparedTransfer) throws(MemWallError) -> TransferRequest {
        if prepared.operation == gated && !open.withLock({ $0 }) {
            waiting.add(1, ordering: .relaxed)
            parking.wait(spins: 0) { open.withLock { $0 } }
            waiting.subtract(1, ordering: .relaxed)
        }
        return try inner.post(prepared)
    }
    func close() { inner.close() }

    func shut() { open.withLock { $0 = false } }
    func release() {
        open.withLock { $0 = true }
        parking.wakeAll()
    }

    /// Waits (bounded: a hang is a failure, not a stall of the suite) until `n` posts wait at the gate.
    func waitForWaiters(_ n: Int) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + 30_000_000_000
        while waiting.load(ordering: .relaxed) < n {
            if MonotonicClock.nanoseconds() > deadline { return false }
            usleep(1000)
        }
        return true
    }
}

/// A cache of DRAM, far memory and an NVMe tier on a scratch file, moved by `storage`.
private func threeTierCache(blockBytes: Int, dram: Int = 2, far: Int = 4, nvme: Int = 64,
                            storage: (any Transport)? = nil) throws -> (KVCache, TierStore) {
    let tiers = threeTiers(dram, far, nvme)
    let registry = hostRegistry()
    registry.add(try storage ?? URingTransport.makeWithFallback(), rank: 0)
    let dir = FileManager.default.temporaryDirectory.path
    let built = try TierStore.build(tiers: tiers, blockBytes: blockBytes, registry: registry,
                                    storage: { _, bytes throws(MemWallError) in
                                        try StorageTarget.scratch(in: dir, prefix: "memwall-kv-test", byteCount: bytes)
                                    })
    return (try KVCache(tiers: tiers, policy: .lru, blockSize: 16, store: built.store), built.store)
}

/// Fills block `i` of `buffers` with bytes derived from `key` (and checks them).
private func pattern(_ key: BlockKey, into region: MemoryRegion, at i: Int, blockBytes: Int) {
    region.withUnsafeMutableBytes(offset: i * blockBytes, length: blockBytes) { TierStore.deterministicPayload(key, $0) }
}

private func holdsPattern(_ key: BlockKey, _ region: MemoryRegion, at i: Int, blockBytes: Int) throws -> Bool {
    let expected = try MemoryRegion.allocate(byteCount: blockBytes)
    pattern(key, into: expected, at: 0, blockBytes: blockBytes)
    return region.withUnsafeBytes(offset: i * blockBytes, length: blockBytes) { a in
        expected.withUnsafeBytes(length: blockBytes) { a.elementsEqual($0) }
    }
}

private func chain(_ n: Int, seed: UInt64) -> [BlockKey] {
    var keys: [BlockKey] = []
    var parent: BlockKey?
    for i in 0..<n {
        let k = BlockKey.chained(parent: parent, tokens: [UInt32(truncatingIfNeeded: seed), UInt32(i)])
        keys.append(k)
        parent = k
    }
    return keys
}

@Suite struct KVDataPathTests {
    @Test("store and load round-trip through DRAM, far memory and NVMe", arguments: [4096, 65536, 1 << 20])
    func roundTripThroughEveryTier(blockBytes: Int) throws {
        let (cache, store) = try threeTierCache(blockBytes: blockBytes)
        let keys = chain(16, seed: 1)
        let source = try MemoryRegion.allocate(byteCount: 16 * blockBytes)
        let target = try MemoryRegion.allocate(byteCount: 16 * blockBytes)
        try cache.register(source)
        try cache.register(target)
        let events = Mutex<[KVEvent]>([])
        let sub = cache.subscribe { e in events.withLock { $0.append(e) } }
        for (i, k) in keys.enumerated() { pattern(k, into: source, at: i, blockBytes: blockBytes) }
        let stored = try cache.store(keys, from: (0..<16).map { KVBuffer(region: source, offset: $0 * blockBytes) }).wait()
        try stored.check()
        #expect(stored.bytes == 16 * blockBytes)
        cache.unsubscribe(sub)
        // Each block entered once, chained to the one before it, in the tier it landed in.
        let storedEvents = events.withLock { $0 }.compactMap { e -> (BlockKey, BlockKey?)? in
            if case let .stored(k, p, _, _) = e { return (k, p) } else { return nil }
        }
        #expect(storedEvents.map(\.0) == keys)
        #expect(storedEvents.map(\.1) == [nil] + keys.dropLast().map { Optional($0) })
        // Every block is found; most had to go to NVMe (DRAM 2, far 4).
        let found = cache.lookup(keys)
        #expect(found.count == 16)
        #expect(found.tiers.contains(2) && found.tiers.contains(0), "\(found.tiers)")
        // Loaded back bit for bit, checked on arrival, wherever they were.
        let r = try cache.load(keys, into: (0..<16).map { KVBuffer(region: target, offset: $0 * blockBytes) }).wait()
        try r.check()
        #expect(r.bytes == 16 * blockBytes)
        for (i, k) in keys.enumerated() { #expect(try holdsPattern(k, target, at: i, blockBytes: blockBytes), "block \(i)") }
        // NVMe blocks went straight between the caller's buffers and the file, no CPU copy.
        let paths = store.bytesMovedByPath
        #expect(paths.contains { !$0.key.hasPrefix("cpu") && $0.key.hasSuffix("caller -> nvme") }, "\(paths)")
        #expect(paths.contains { !$0.key.hasPrefix("cpu") && $0.key.hasSuffix("nvme -> caller") }, "\(paths)")
        #expect(cache.invariantViolation() == nil)
        cache.close()
    }

    @Test func lookupsAndAdmissionsDoNotWaitForALoadInFlight() throws {
        let gate = GatedTransport(try URingTransport.makeWithFallback(), gating: .read)
        let (cache, _) = try threeTierCache(blockBytes: 4096, storage: gate)
        let keys = chain(16, seed: 2)
        let buffers = try MemoryRegion.allocate(byteCount: 16 * 4096)
        try cache.register(buffers)
        for (i, k) in keys.enumerated() { pattern(k, into: buffers, at: i, blockBytes: 4096) }
        try cache.store(keys, from: (0..<16).map { KVBuffer(region: buffers, offset: $0 * 4096) }).wait().check()
        let onNVMe = zip(keys, cache.lookup(keys).tiers).filter { $0.1 == 2 }.map(\.0)
        try #require(onNVMe.count >= 8)

        // A load from NVMe is now in flight, stopped at the device.
        gate.shut()
        let load = try cache.load(Array(onNVMe.prefix(8)), into: (0..<8).map { KVBuffer(region: buffers, offset: $0 * 4096) })
        try #require(gate.waitForWaiters(1), "the load never reached the device")
        #expect(!load.isDone)

        // Meanwhile, from several threads: admissions, stores of other blocks, lookups — all finish.
        let finished = Atomic<Int>(0)
        let threads = try (0..<3).map { t in
            try WorkerThread(name: "kv-lookup-\(t)") {
                for round in 0..<50 {
                    let mine = chain(3, seed: 100 + UInt64(t * 1000 + round))
                    if let a = try? cache.admit(blocks: mine) { try? cache.release(a.blocks) }
                    _ = cache.lookup(keys)
                    _ = cache.lookup(mine)
                }
                finished.add(1, ordering: .relaxed)
            }
        }
        for t in threads { t.join() }
        #expect(finished.load(ordering: .relaxed) == 3)
        // Ordering, not timing: all of that completed while the load had not.
        #expect(!load.isDone)
        #expect(gate.waiting.load(ordering: .relaxed) == 1)
        gate.release()
        let r = load.wait()
        try r.check()
        for (i, k) in onNVMe.prefix(8).enumerated() { #expect(try holdsPattern(k, buffers, at: i, blockBytes: 4096)) }
        #expect(cache.invariantViolation() == nil)
    }

    @Test func loadPoliciesMeetABlockStillBeingStored() throws {
        let gate = GatedTransport(try URingTransport.makeWithFallback(), gating: .write)
        let (cache, _) = try threeTierCache(blockBytes: 4096, storage: gate)
        let keys = chain(8, seed: 3)
        let source = try MemoryRegion.allocate(byteCount: 8 * 4096)
        let target = try MemoryRegion.allocate(byteCount: 4096)
        try cache.register(source)
        try cache.register(target)
        for (i, k) in keys.enumerated() { pattern(k, into: source, at: i, blockBytes: 4096) }
        gate.shut()
        // DRAM and far memory take six blocks at once; the last two go to NVMe and wait at the gate.
        let store = try cache.store(keys, from: (0..<8).map { KVBuffer(region: source, offset: $0 * 4096) })
        let storing = try WorkerThread(name: "kv-store") { _ = store.wait() }
        try #require(gate.waitForWaiters(1), "the store never reached the device")
        let last = keys[7]
        let out = [KVBuffer(region: target, offset: 0)]

        let eager = try cache.load([last], into: out, policy: .bestEffort).wait()
        #expect(eager.failed.first?.error.code == .busy, "\(eager.failed)")
        let patient = try cache.load([last], into: out, policy: .timeout(nanoseconds: 20_000_000)).wait()
        #expect(patient.failed.first?.error.code == .timedOut, "\(patient.failed)")
        let waiting = try cache.load([last], into: out, policy: .wait)
        let waiter = try WorkerThread(name: "kv-waiter") { _ = waiting.wait() }
        gate.release()
        waiter.join()
        storing.join()
        try store.wait().check()
        try waiting.wait().check()
        #expect(try holdsPattern(last, target, at: 0, blockBytes: 4096))
    }

    @Test func finishedTransfersSignalTheEventfd() async throws {
        let (cache, _) = try threeTierCache(blockBytes: 4096)
        let fd = try cache.completionFileDescriptor
        #expect(try cache.completionFileDescriptor == fd)
        let keys = chain(4, seed: 4)
        let buffers = try MemoryRegion.allocate(byteCount: 4 * 4096)
        try cache.register(buffers)
        let t = try cache.store(keys, from: (0..<4).map { KVBuffer(region: buffers, offset: $0 * 4096) })
        // Nobody waits on the handle: the cache's worker runs it and the eventfd fires.
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 30_000) == 1, "the eventfd never became readable")
        var count: UInt64 = 0
        #expect(read(fd, &count, 8) == 8 && count >= 1)
        #expect(t.isDone)
        let r = await t.result()
        #expect(r.succeeded && r.blocks == 4)
        #expect(cache.lookup(keys).count == 4)
        cache.close()
        #expect(throws: MemWallError.self) { _ = try cache.completionFileDescriptor }
    }

    @Test func concurrentStoresLoadsAndLookupsKeepEveryByte() async throws {
        let (cache, _) = try threeTierCache(blockBytes: 4096, dram: 4, far: 8, nvme: 96)
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<4 {
                let region = try MemoryRegion.allocate(byteCount: 8 * 4096)
                try cache.register(region)
                group.addTask {
                    var rng = SplitMix(seed: 7 + UInt64(worker))
                    var checked = 0
                    for _ in 0..<120 {
                        // Twelve chains shared by every worker: stores race, loads meet blocks in flight.
                        let keys = chain(Int(rng.next() % 6) + 1, seed: rng.next() % 12)
                        let slots = (0..<keys.count).map { KVBuffer(region: region, offset: $0 * 4096) }
                        if rng.next() % 2 == 0 {
                            for (i, k) in keys.enumerated() { pattern(k, into: region, at: i, blockBytes: 4096) }
                            let r = try cache.store(keys, from: slots).wait()
                            #expect(r.failed.allSatisfy { $0.error.code == .outOfBounds }, "\(r.failed)")
                        } else {
                            let n = cache.lookup(keys).count
                            let r = try cache.load(Array(keys.prefix(n)), into: Array(slots.prefix(n))).wait()
                            // Between lookup and load a block may leave (evicted): that is the only failure allowed.
                            #expect(r.failed.allSatisfy { $0.error.code == .notFound }, "\(r.failed)")
                            for i in 0..<n where !r.failed.contains(where: { $0.index == i }) {
                                #expect(try holdsPattern(keys[i], region, at: i, blockBytes: 4096))
                                checked += 1
                            }
                        }
                    }
                    return checked
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(total > 0)
        #expect(cache.failedMoves == 0)
        #expect(cache.invariantViolation() == nil)
        let s = cache.statistics
        #expect(s.demotions > 0)
    }

    @Test func storingAChildNeverDemotesItsParentBelowIt() throws {
        // Found by the concurrent test: placing b made room in DRAM by demoting its
        // parent a, which was cached already and so not referenced by the store.
        let tiers = dramFar(1, 4)
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: hostRegistry(), storagePath: "")
        let cache = try KVCache(tiers: tiers, blockSize: 16, store: built.store)
        let buffers = try Buffers(cache: cache, count: 2)
        let keys = chain(2, seed: 9)
        try cache.store([keys[0]], from: buffers.slots(0..<1)).wait().check()
        #expect(cache.tier(of: keys[0]) == 0)
        try cache.store(keys, from: buffers.slots(0..<2)).wait().check()
        #expect(cache.tier(of: keys[0]) == 0 && cache.tier(of: keys[1]) == 1)
        #expect(cache.invariantViolation() == nil)
        // The same with the parent named by `after`.
        let next = BlockKey.chained(parent: keys[1], tokens: [1])
        try cache.store([next], from: buffers.slots(0..<1), after: keys[1]).wait().check()
        #expect(cache.tier(of: next) == 1)
        #expect(cache.invariantViolation() == nil)
    }

    @Test func writeThroughCopiesMakeLaterEvictionsFree() throws {
        let (cache, store) = try threeTierCache(blockBytes: 4096, dram: 2, far: 2, nvme: 16)
        let region = try MemoryRegion.allocate(byteCount: 2 * 4096)
        try cache.register(region)
        let slots = (0..<2).map { KVBuffer(region: region, offset: $0 * 4096) }
        func put(_ keys: [BlockKey], _ policy: KVWritePolicy) throws {
            for (i, k) in keys.enumerated() { pattern(k, into: region, at: i, blockBytes: 4096) }
            try cache.store(keys, from: slots, policy: policy).wait().check()
        }
        let a = chain(2, seed: 20), b = chain(2, seed: 21), c = chain(2, seed: 22)
        try put(a, .writeThrough)
        // In DRAM, with copies in NVMe: written twice now.
        #expect(cache.lookup(a).tiers == [0, 0])
        #expect(cache.statistics.occupancy == [2, 0, 2])
        func nvmeWrites(from source: String) -> Int {
            store.bytesMovedByPath.filter { !$0.key.hasPrefix("cpu") && $0.key.hasSuffix("\(source) -> nvme") }.values.reduce(0, +)
        }
        #expect(nvmeWrites(from: "caller") == 2 * 4096)
        try put(b, .writeBack)
        try put(c, .writeBack)
        // a went DRAM → far → NVMe: the last step took the copies over and wrote nothing.
        #expect(cache.lookup(a).tiers == [2, 2])
        #expect(nvmeWrites(from: "far") == 0, "\(store.bytesMovedByPath)")
        #expect(cache.invariantViolation() == nil)
        let out = try MemoryRegion.allocate(byteCount: 2 * 4096)
        try cache.register(out)
        try cache.load(a, into: (0..<2).map { KVBuffer(region: out, offset: $0 * 4096) }).wait().check()
        for (i, k) in a.enumerated() { #expect(try holdsPattern(k, out, at: i, blockBytes: 4096)) }
        // Copies are given up first when the last tier needs room: fill it with write-back blocks.
        try put(chain(2, seed: 23), .writeThrough)
        for seed in 30..<38 { try put(chain(2, seed: UInt64(seed)), .writeBack) }
        #expect(cache.invariantViolation() == nil)
        #expect(cache.lookup(a).count == 2 || cache.lookup(a).count == 0)
    }

    @Test func callsLargerThanOnePlanAreSlicedAndStayChained() throws {
        let n = KVCache.planSlice * 2 + 37
        let (cache, _) = try threeTierCache(blockBytes: 4096, dram: 8, far: 16, nvme: 1024)
        let keys = chain(n, seed: 40)
        let source = try MemoryRegion.allocate(byteCount: n * 4096)
        let target = try MemoryRegion.allocate(byteCount: n * 4096)
        try cache.register(source)
        try cache.register(target)
        for (i, k) in keys.enumerated() { pattern(k, into: source, at: i, blockBytes: 4096) }
        let stored = try cache.store(keys, from: (0..<n).map { KVBuffer(region: source, offset: $0 * 4096) }).wait()
        try stored.check()
        #expect(stored.bytes == n * 4096)
        #expect(cache.lookup(keys).count == n)
        // Blocks of later slices hang off the last block of the slice before (tier order holds).
        #expect(cache.invariantViolation() == nil)
        let loaded = try cache.load(keys, into: (0..<n).map { KVBuffer(region: target, offset: $0 * 4096) }).wait()
        try loaded.check()
        for i in [0, KVCache.planSlice - 1, KVCache.planSlice, n - 1] {
            #expect(try holdsPattern(keys[i], target, at: i, blockBytes: 4096), "block \(i)")
        }
        // Per-block errors keep their position in the whole call.
        let missing = BlockKey(rawValue: 12345)
        let r = try cache.load(keys.prefix(KVCache.planSlice + 1) + [missing],
                               into: (0..<(KVCache.planSlice + 2)).map { KVBuffer(region: target, offset: $0 * 4096) }).wait()
        #expect(r.failed.map(\.index) == [KVCache.planSlice + 1])
    }
}
