import KVPlacement
import MemWallCore
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// What one inference worker does with a pool, as `memwall pool worker` (the
/// multi-process and crash tests) and `memwall bench pool` run it: each
/// request is a chain of blocks — one of a few shared documents (the
/// overlapping prefixes every worker has), then blocks of its own — looked up,
/// the cached prefix loaded and every block's contents checked against what
/// its key says they are (``TierStore/deterministicPayload``), the rest stored.
package struct PoolWorkload {
    /// What a worker did; every block it read was checked.
    package struct Report: Codable, Sendable {
        package init() {}
        package var requests = 0
        package var blocks = 0
        package var hits = 0
        package var loaded = 0
        /// Blocks whose contents matched what their key says (loads and views).
        package var verified = 0
        /// Blocks whose contents did not: must stay 0.
        package var corrupt = 0
        /// Blocks found by lookup but gone (evicted) by the time they were loaded.
        package var vanished = 0
        package var stored = 0
        package var storeFailures = 0
        package var views = 0
    }

    package let pool: KVPool
    package let seed: UInt64
    let documents: Int
    let documentBlocks: Int
    let ownBlocks: Int
    let views: Bool
    private var rng: SplitMix64
    private var buffers: MemoryRegion
    private let expected: MemoryRegion

    package init(pool: KVPool, seed: UInt64, documents: Int, documentBlocks: Int, ownBlocks: Int, views: Bool) throws(MemWallError) {
        self.pool = pool
        self.seed = seed
        self.documents = documents
        self.documentBlocks = documentBlocks
        self.ownBlocks = ownBlocks
        self.views = views
        rng = SplitMix64(seed: seed)
        buffers = try MemoryRegion.allocate(byteCount: (documentBlocks + ownBlocks) * pool.blockBytes)
        expected = try MemoryRegion.allocate(byteCount: pool.blockBytes)
    }

    /// Key of block `i` of shared document `d` (the same in every worker).
    package static func documentKey(_ d: Int, _ i: Int) -> BlockKey {
        BlockKey(rawValue: BlockKey.mix(0xD0C5_0000_0000_0000 ^ UInt64(d) << 20 ^ UInt64(i)))
    }

    /// Key of block `j` of request `r` of the worker with `seed`.
    package static func ownKey(seed: UInt64, _ r: Int, _ j: Int) -> BlockKey {
        BlockKey(rawValue: BlockKey.mix(0x0A11_0000_0000_0000 ^ seed << 36 ^ UInt64(r) << 12 ^ UInt64(j)))
    }

    /// The keys of request `r`.
    mutating func keys(_ r: Int) -> [BlockKey] {
        let d = Int(rng.next() % UInt64(documents))
        return (0..<documentBlocks).map { PoolWorkload.documentKey(d, $0) } + (0..<ownBlocks).map { PoolWorkload.ownKey(seed: seed, r, $0) }
    }

    /// The keys of every shared document (what `bench pool` looks up).
    package static func documentKeys(documents: Int, documentBlocks: Int) -> [[BlockKey]] {
        (0..<documents).map { d in (0..<documentBlocks).map { documentKey(d, $0) } }
    }

    /// Runs request `r` of this worker (a document, then its own blocks).
    package mutating func request(_ r: Int, into report: inout Report) throws(MemWallError) {
        try request(keys: keys(r), into: &report)
    }

    /// Looks up `keys` (a prefix chain), loads and checks the cached prefix, stores the rest.
    package mutating func request(keys: [BlockKey], into report: inout Report) throws(MemWallError) {
        let bytes = pool.blockBytes
        if buffers.byteCount < keys.count * bytes {
            buffers = try MemoryRegion.allocate(byteCount: keys.count * bytes)
        }
        let slots = (0..<keys.count).map { KVBuffer(region: buffers, offset: $0 * bytes) }
        let hit = try pool.lookup(keys).count
        report.requests += 1
        report.blocks += keys.count
        report.hits += hit
        if hit > 0 {
            let loaded = try pool.load(Array(keys[..<hit]), into: Array(slots[..<hit]))
            for f in loaded.failed {
                if f.error.code == .notFound { report.vanished += 1 } else { report.corrupt += 1 }
            }
            let failedAt = Set(loaded.failed.map(\.index))
            for i in 0..<hit where !failedAt.contains(i) {
                report.loaded += 1
                if check(keys[i], buffers, offset: i * bytes) { report.verified += 1 } else { report.corrupt += 1 }
            }
            if views {
                let i = Int(rng.next() % UInt64(hit))
                if let v = try? pool.view(keys[i]) {
                    report.views += 1
                    if v.verify() && matches(keys[i], v.bytes) { report.verified += 1 } else { report.corrupt += 1 }
                    v.close()
                }
            }
        }
        guard hit < keys.count else { return }
        for i in hit..<keys.count {
            buffers.withUnsafeMutableBytes(offset: i * bytes, length: bytes) { TierStore.deterministicPayload(keys[i], $0) }
        }
        let stored = try pool.store(Array(keys[hit...]), from: Array(slots[hit...]), after: hit > 0 ? keys[hit - 1] : nil)
        report.stored += stored.bytes / bytes
        report.storeFailures += stored.failed.count
    }

    /// What a lookup-only loop measured.
    package struct LookupReport: Codable, Sendable {
        /// Block lookups (keys looked up).
        package var lookups = 0
        /// Wall time of the loop.
        package var seconds = 0.0
        /// CPU time this process spent in it (the machine may have fewer cores than processes).
        package var cpuSeconds = 0.0
        package var lookupsPerSecond = 0.0
        package var lookupsPerCPUSecond = 0.0
    }

    /// Looks up whole documents, one after another in a random order, until `deadline` (monotonic ns).
    package mutating func lookups(until deadline: UInt64) throws(MemWallError) -> LookupReport {
        let chains = PoolWorkload.documentKeys(documents: documents, documentBlocks: documentBlocks)
        var report = LookupReport()
        let cpu0 = PoolWorkload.cpuSeconds()
        let t0 = MonotonicClock.nanoseconds()
        var now = t0
        while now < deadline {
            for _ in 0..<64 {
                report.lookups += try pool.lookup(chains[Int(rng.next() % UInt64(chains.count))]).count
            }
            now = MonotonicClock.nanoseconds()
        }
        report.seconds = Double(now - t0) / 1e9
        report.cpuSeconds = PoolWorkload.cpuSeconds() - cpu0
        report.lookupsPerSecond = Double(report.lookups) / max(report.seconds, 1e-9)
        report.lookupsPerCPUSecond = Double(report.lookups) / max(report.cpuSeconds, 1e-9)
        return report
    }

    /// User + system CPU time of this process.
    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
    }

    private func check(_ key: BlockKey, _ region: MemoryRegion, offset: Int) -> Bool {
        region.withUnsafeBytes(offset: offset, length: pool.blockBytes) { matches(key, $0) }
    }

    /// Whether `bytes` are the contents block `key` is stored with.
    private func matches(_ key: BlockKey, _ bytes: UnsafeRawBufferPointer) -> Bool {
        expected.withUnsafeMutableBytes(length: pool.blockBytes) { e in
            TierStore.deterministicPayload(key, e)
            guard let a = e.baseAddress, let b = bytes.baseAddress, bytes.count == e.count else { return false }
            return memcmp(a, b, e.count) == 0
        }
    }
}
