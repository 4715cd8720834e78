#if canImport(Glibc)
import Glibc
#endif
import KVPlacement
import MemWallCore
import NUMATransport
import Synchronization
import Transport
import URingTransport

/// The one place `bench kv` calls the ``KVCache`` runtime API: a cache of a
/// one-block DRAM tier and the tier measured (far memory or NVMe), a phase's
/// blocks stored from and loaded into the caller's registered buffers one
/// batch per call, and `lookup` timed while a load is in flight.
///
/// The cache places a new block in the fastest tier not faster than its
/// parent's. The phase's blocks therefore continue a chain whose first block
/// (the anchor) was pushed out of DRAM into the measured tier before the phase
/// starts; `lookup` then confirms every block sits there before it is onloaded.
final class KVBenchCache {
    /// Pause between two timed lookups.
    static let lookupPauseMicroseconds: UInt32 = 20

    /// Allocates the far tier (and the memcpy reference's far region) on a real node.
    static let farAllocator = NUMAAllocator()

    private let cache: KVCache
    private let shape: KVBenchShape
    private let tierName: String
    /// The phase's keys: one chain, after ``anchor``.
    private let keys: [BlockKey]
    private let anchor: BlockKey
    private var anchored = false
    private var registered: [MemoryRegion] = []
    /// The NVMe tier's file or device (nil for the far-memory cache).
    let storage: StorageTarget?
    /// "tier: transport (implementation) to target", for reports.
    let transports: [String]
    /// What a reader of the figures should know (fallbacks the transports took).
    private(set) var notes: [String] = []

    /// Builds the cache.
    /// - Parameters:
    ///   - kind: `.farMemory` or `.nvme`: the tier measured.
    ///   - far: Where the far tier's memory comes from (its pages are in place
    ///     before the first store, as a runtime's pool would be: the benchmark
    ///     measures moving blocks, not the kernel faulting in fresh memory).
    ///   - openStorage: Opens the NVMe tier's file, at least the given bytes large.
    init(measuring kind: TierKind, shape: KVBenchShape, far: FarMemory,
         openStorage: (Int64) throws(MemWallError) -> StorageTarget) throws(MemWallError) {
        self.shape = shape
        tierName = kind == .nvme ? "nvme" : "far"
        // The anchor and the block that pushes it out of DRAM: two more than the phase.
        let tiers = [TierSpec(name: "dram", kind: .dram, capacityBlocks: 1),
                     TierSpec(name: tierName, kind: kind, capacityBlocks: shape.blocks + 1)]
        let numa = NUMATransport()
        let registry = try KVRealBytes.registry(numa: numa, storage: URingConfiguration(
            queueDepth: shape.queueDepth, batchSize: min(URingConfiguration().batchSize, shape.queueDepth)))
        let farMemory: (Int) throws -> MemoryRegion = { bytes in try far.allocate(bytes) }
        var opened: StorageTarget?
        let built = try TierStore.build(tiers: tiers, blockBytes: shape.blockBytes, registry: registry,
                                        storage: { _, bytes throws(MemWallError) in
                                            let t = try openStorage(bytes)
                                            opened = t
                                            return t
                                        }, farMemory: farMemory)
        storage = opened
        transports = zip(tiers.dropFirst(), built.backings).map { t, b in
            "\(t.name): \(b.transport.name) (\(b.transport.capabilities.implementation)) to \(b.target)"
        }
        for b in built.backings {
            if let ring = b.transport as? URingTransport {
                notes += ring.registrationNotes
            } else if b.transport.capabilities.implementation != .hardware, kind == .nvme {
                notes.append("the NVMe tier moves through \(b.transport.name) (\(b.transport.capabilities.implementation)), not io_uring")
            }
        }
        if case .storage(let t)? = built.backings.last?.target, t.accessMode != .direct {
            notes.append("'\(t.path)' is used through the page cache (\(t.fallbackReason ?? "O_DIRECT refused")): the NVMe figures are not the device's")
        }
        cache = try KVCache(tiers: tiers, policy: .lru, store: built.store)
        // Distinct per tier, so the two caches' keys never coincide in a report or an event.
        let salt: UInt64 = kind == .nvme ? 2 : 1
        anchor = BlockKey.chained(parent: nil, tokens: [0], extraKey: salt)
        var chain: [BlockKey] = []
        chain.reserveCapacity(shape.blocks)
        var parent = anchor
        for i in 0..<shape.blocks {
            parent = BlockKey.chained(parent: parent, tokens: [UInt32(truncatingIfNeeded: i)], extraKey: salt)
            chain.append(parent)
        }
        keys = chain
    }

    /// Lets the cache move blocks straight into and out of `region`.
    func register(_ region: MemoryRegion) throws(MemWallError) {
        try cache.register(region)
        registered.append(region)
    }

    /// The `k`-th batch's keys and the caller's buffers for them (block i of the phase at offset i × blockBytes).
    private func batch(_ k: Int, in region: MemoryRegion) -> ([BlockKey], [KVBuffer]) {
        let range = k * shape.batch ..< (k + 1) * shape.batch
        return (Array(keys[range]), range.map { KVBuffer(region: region, offset: $0 * shape.blockBytes) })
    }

    /// Puts the anchor in the measured tier: stored into the one-block DRAM
    /// tier, then pushed down by a second block (DRAM's only slot is needed).
    private func placeAnchor(using region: MemoryRegion) throws(MemWallError) {
        guard !anchored else { return }
        let buffer = [KVBuffer(region: region, offset: 0)]
        try cache.store([anchor], from: buffer).wait().check()
        let pusher = BlockKey.chained(parent: nil, tokens: [1], extraKey: anchor.rawValue)
        try cache.store([pusher], from: buffer).wait().check()
        let where_ = cache.lookup([anchor])
        guard where_.count == 1, where_.tiers == [1] else {
            throw MemWallError(.unsupported, "the KV cache kept the anchor block in tier \(where_.tiers.first.map(String.init) ?? "none") instead of moving it to \(tierName); the benchmark cannot place its blocks there")
        }
        anchored = true
    }

    /// Stores the phase from `region`, one store call per batch, each waited for.
    /// - Throws: the first block that failed; `unsupported` when blocks landed outside the measured tier.
    func offload(from region: MemoryRegion) throws(MemWallError) -> KVBenchMeasurement {
        try placeAnchor(using: region)
        var histogram = LatencyHistogram()
        let start = MonotonicClock.nanoseconds()
        for k in 0..<shape.batches {
            let (ks, buffers) = batch(k, in: region)
            let t0 = MonotonicClock.nanoseconds()
            let result = try cache.store(ks, from: buffers, after: k == 0 ? anchor : keys[k * shape.batch - 1]).wait()
            histogram.record(MonotonicClock.nanoseconds() - t0)
            try result.check()
        }
        let elapsed = MonotonicClock.nanoseconds() - start
        return KVBenchMeasurement(histogram: histogram, nanoseconds: elapsed, bytes: shape.bytes, tiersSeen: try placement())
    }

    /// Loads the phase into `region`, one load call per batch, each waited for.
    /// - Throws: the first block that failed; `unsupported` when a block is not in the measured tier.
    func onload(into region: MemoryRegion) throws(MemWallError) -> KVBenchMeasurement {
        let before = try placement()
        var histogram = LatencyHistogram()
        let start = MonotonicClock.nanoseconds()
        for k in 0..<shape.batches {
            let (ks, buffers) = batch(k, in: region)
            let t0 = MonotonicClock.nanoseconds()
            let result = try cache.load(ks, into: buffers).wait()
            histogram.record(MonotonicClock.nanoseconds() - t0)
            try result.check()
        }
        let elapsed = MonotonicClock.nanoseconds() - start
        return KVBenchMeasurement(histogram: histogram, nanoseconds: elapsed, bytes: shape.bytes, tiersSeen: before)
    }

    /// The tier names of the phase's blocks, after checking they all sit in the measured tier.
    private func placement() throws(MemWallError) -> [String] {
        let found = cache.lookup(keys)
        let names = cache.tiers.map(\.name)
        var seen: [String] = []
        for t in Set(found.tiers).sorted() { seen.append(t < names.count ? names[t] : "tier \(t)") }
        guard found.count == keys.count, found.tiers.allSatisfy({ $0 == 1 }) else {
            throw MemWallError(.unsupported,
                "\(found.count) of the phase's \(keys.count) blocks are cached, in \(seen.joined(separator: ", ")); the benchmark measures \(tierName) only")
        }
        return seen
    }

    /// Times `lookup` of the phase's first `prefix` keys on another thread
    /// (one every ``lookupPauseMicroseconds`` and then some) while this
    /// thread's single load call onloads the whole phase into `region`.
    /// A lookup counts only when it began after the load was issued and ended
    /// before the load finished.
    func lookupWhileOnloading(into region: MemoryRegion, prefix: Int) throws(MemWallError) -> KVLookupWhileOnloading {
        _ = try placement()
        let probe = Array(keys.prefix(prefix))
        let buffers = keys.indices.map { KVBuffer(region: region, offset: $0 * shape.blockBytes) }
        // 0: not started, 1: the load is in flight, 2: it finished.
        let stage = Atomic<Int>(0)
        let looked = Mutex((LatencyHistogram(), true))
        let cache = self.cache
        let thread = try WorkerThread(name: "bench-kv-lookup") {
            var histogram = LatencyHistogram()
            var allHit = true
            while true {
                let before = stage.load(ordering: .acquiring)
                if before == 2 { break }
                let t0 = MonotonicClock.nanoseconds()
                let hit = cache.lookup(probe).count
                let dt = MonotonicClock.nanoseconds() - t0
                if before == 1 && stage.load(ordering: .acquiring) == 1 {
                    histogram.record(dt)
                    if hit != probe.count { allHit = false }
                }
                // Paced as a scheduler asks (per arriving request), not a spin that would take
                // a core from the onload being measured (this host may have only two).
                usleep(KVBenchCache.lookupPauseMicroseconds)
            }
            looked.withLock { $0 = (histogram, allHit) }
        }
        let start = MonotonicClock.nanoseconds()
        stage.store(1, ordering: .releasing)
        let result: KVTransferResult
        do {
            result = try cache.load(keys, into: buffers).wait()
        } catch {
            stage.store(2, ordering: .releasing)
            thread.join()
            throw error
        }
        let elapsed = MonotonicClock.nanoseconds() - start
        stage.store(2, ordering: .releasing)
        thread.join()
        try result.check()
        let (h, allHit) = looked.withLock { $0 }
        return KVLookupWhileOnloading(keys: probe.count, lookups: Int(h.count), latencyP50: h.percentile(50),
                                      latencyP99: h.percentile(99), latencyMax: h.max, allHit: allHit,
                                      onloadTier: tierName, onloadBytes: shape.bytes, onloadNanoseconds: elapsed)
    }

    /// Deregisters the caller's regions and closes the cache.
    func close() {
        for r in registered { try? cache.deregister(r) }
        registered = []
        cache.close()
    }
}
