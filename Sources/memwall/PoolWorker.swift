import ArgumentParser
import CMemWallShim
#if canImport(Glibc)
import Glibc
#endif
import KVPlacement
import KVPool
import MemWallCore
import Transport

/// `memwall pool worker NAME`: one process of the multi-process and crash
/// tests and of `bench pool` (hidden). It attaches, says so on standard
/// output ("attached PID"), then runs requests the way an inference worker
/// uses a pool: each request is a chain of blocks — one of a few shared
/// documents (the overlapping prefixes), then blocks of its own — looked up,
/// the cached prefix loaded (every block's contents checked against what its
/// key says they are), the rest stored. It ends with a JSON report.
struct PoolWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Attach to a pool and run requests on it, checking every block read (for tests and benchmarks).",
        shouldDisplay: false)

    @Argument(help: "Pool name.")
    var name: String

    @Option(name: .long, help: "Seed of this worker's own blocks and of its choice of documents.")
    var seed: UInt64 = 1

    @Option(name: .long, help: "Requests to run (with --seconds: at most this many).")
    var requests: Int = 100

    @Option(name: .long, help: "Run requests until this many seconds have passed.")
    var seconds: Double?

    @Option(name: .long, help: "Shared documents the requests start with.")
    var documents: Int = 4

    @Option(name: .long, help: "Blocks per shared document.")
    var documentBlocks: Int = 8

    @Option(name: .long, help: "Blocks of its own each request adds after the document.")
    var ownBlocks: Int = 2

    @Flag(name: .long, help: "Also read one cached block per request in place (a view), checking it.")
    var views = false

    @Option(name: .long, help: "Stop this process (SIGSTOP) the first time it reaches this point: lock, writing, before-view, view.")
    var stopAt: String?

    func validate() throws {
        try OptionCheck.inRange("--requests", requests, 1 ... 100_000_000)
        try OptionCheck.inRange("--documents", documents, 1 ... 1 << 20)
        try OptionCheck.inRange("--document-blocks", documentBlocks, 1 ... 4096)
        try OptionCheck.inRange("--own-blocks", ownBlocks, 0 ... 4096)
        if let seconds { try OptionCheck.finite("--seconds", seconds, above: 0, atMost: 3600, unit: "seconds") }
        if let stopAt, KVPoolTestPoint(rawValue: stopAt) == nil {
            throw ValidationError("invalid --stop-at '\(stopAt)': expected one of \(KVPoolTestPoint.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let point = stopAt.flatMap(KVPoolTestPoint.init(rawValue:))
        let pool = try KVPool.attach(name: name, pause: point.map { p in { @Sendable at in if at == p { raise(SIGSTOP) } } })
        defer { pool.close() }
        print("attached \(getpid())")
        _ = memwall_flush_standard_output()
        var workload = try PoolWorkload(pool: pool, seed: seed, documents: documents, documentBlocks: documentBlocks,
                                    ownBlocks: ownBlocks, views: views)
        let deadline = seconds.map { MonotonicClock.nanoseconds() &+ UInt64($0 * 1e9) }
        var report = PoolWorkload.Report()
        for r in 0..<requests {
            if let deadline, MonotonicClock.nanoseconds() >= deadline { break }
            try workload.request(r, into: &report)
        }
        try Output.printJSON(report)
    }
}

/// The requests of ``PoolWorkerCommand`` (also replayed by `bench pool`).
struct PoolWorkload {
    /// What a worker did; every block it read was checked.
    struct Report: Codable, Sendable {
        var requests = 0
        var blocks = 0
        var hits = 0
        var loaded = 0
        /// Blocks whose contents matched what their key says (loads and views).
        var verified = 0
        /// Blocks whose contents did not: must stay 0.
        var corrupt = 0
        /// Blocks found by lookup but gone (evicted) by the time they were loaded.
        var vanished = 0
        var stored = 0
        var storeFailures = 0
        var views = 0
    }

    let pool: KVPool
    let seed: UInt64
    let documents: Int
    let documentBlocks: Int
    let ownBlocks: Int
    let views: Bool
    private var rng: SplitMix64
    private let buffers: MemoryRegion
    private let expected: MemoryRegion

    init(pool: KVPool, seed: UInt64, documents: Int, documentBlocks: Int, ownBlocks: Int, views: Bool) throws(MemWallError) {
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
    static func documentKey(_ d: Int, _ i: Int) -> BlockKey {
        BlockKey(rawValue: BlockKey.mix(0xD0C5_0000_0000_0000 ^ UInt64(d) << 20 ^ UInt64(i)))
    }

    /// Key of block `j` of this worker's request `r`.
    func ownKey(_ r: Int, _ j: Int) -> BlockKey {
        BlockKey(rawValue: BlockKey.mix(0x0A11_0000_0000_0000 ^ seed << 36 ^ UInt64(r) << 12 ^ UInt64(j)))
    }

    /// The keys of request `r`.
    mutating func keys(_ r: Int) -> [BlockKey] {
        let d = Int(rng.next() % UInt64(documents))
        return (0..<documentBlocks).map { PoolWorkload.documentKey(d, $0) } + (0..<ownBlocks).map { ownKey(r, $0) }
    }

    /// Looks up, loads and checks the cached prefix, stores the rest.
    mutating func request(_ r: Int, into report: inout Report) throws(MemWallError) {
        let keys = keys(r)
        let bytes = pool.blockBytes
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
