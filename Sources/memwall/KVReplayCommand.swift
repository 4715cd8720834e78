import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import KVPlacement
import MemWallCore
import Topology
import Transport

/// `memwall kv replay TRACE`: one trace through one or more eviction policies, side by side.
struct KVReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay a trace through tiered caches; compare eviction policies side by side.",
        discussion: """
            Metadata only by default. With --real-bytes every block carries a deterministic payload \
            (seeded by its id) that moves between tiers through the transports and is verified \
            against its checksum and contents on every read-back. Far memory is emulated (host \
            memory, labelled so) unless the NUMA transport provides a CPU-less node; the NVMe tier \
            needs a storage transport and a file or device (--nvme-path).
            """)

    @OptionGroup var input: KVTraceOptions

    @Option(name: .long, help: "Tiers fastest first, KIND:BLOCKS separated by commas (KIND: dram, far, nvme, remote).")
    var tiers: String = "dram:10000"

    @Option(name: .long, help: "Eviction policies to compare, separated by commas (lru, lfuda, arc, s3fifo, wtinylfu, kvaware, belady), or all. The offline reference (belady) is always shown beside them.")
    var policy: String = "lru,lfuda"

    @Option(name: .long, help: "Queue-aware mode: before each request, hint the next W requests of the trace to the cache (protected from eviction, prefetched to DRAM); reported beside the plain run (0 = off).")
    var lookahead: Int = 0

    @Flag(name: .long, help: "Move real bytes between tiers and verify every read-back.")
    var realBytes = false

    @Option(name: .customLong("repeat"), help: "Replay each policy N times and report the fastest run (hit rates are identical: replays are deterministic).")
    var repeats: Int = 1

    @Option(name: .long, help: "Payload bytes per block with --real-bytes (a multiple of 4096).")
    var blockBytes: Int = 4096

    @Option(name: .long, help: "Prefetch: before each request, promote the cached prefix of the request N places later in the trace to DRAM (0 = off).")
    var prefetch: Int = 0

    @Option(name: .long, help: "NUMA node backing the far tier (default: the machine's first far-memory node, else emulation); checked against the topology.")
    var farNode: Int?

    @Option(name: .long, help: "Files or block devices backing the nvme tiers with --real-bytes, one per nvme tier, separated by commas (default: a private scratch file per tier in --dir). A path that does not exist is created and removed at the end; an existing one needs --allow-write.")
    var nvmePath: String?

    @OptionGroup var files: StorageFileOptions

    func validate() throws {
        try OptionCheck.inRange("--repeat", repeats, 1 ... 1000, unit: "runs")
        try OptionCheck.inRange("--prefetch", prefetch, 0 ... 1_000_000, unit: "requests")
        try OptionCheck.inRange("--lookahead", lookahead, 0 ... 100_000, unit: "requests")
        try OptionCheck.inRange("--block-bytes", blockBytes, 4096 ... (64 << 20), unit: "bytes")
        guard blockBytes % 4096 == 0 else {
            throw ValidationError("invalid --block-bytes '\(blockBytes)': expected a multiple of 4096 (O_DIRECT moves whole pages)")
        }
        if let farNode { try OptionCheck.inRange("--far-node", farNode, 0 ... 4095, unit: "(a NUMA node number)") }
        try input.validate()
    }

    /// The nvme tiers' targets, opened (or created) once for the whole run and
    /// reused by every policy and repeat: each file is locked while the run
    /// lasts, and one a run created is removed when it ends.
    private final class NVMeTargets {
        var opened: [Int: StorageTarget] = [:]
    }

    func run() async throws {
        let specs = try tiers.split(separator: ",").map { s throws(MemWallError) in try TierSpec.parse(String(s)) }
        try TierSpec.validate(specs)
        let policies = try KVReplayCommand.policies(policy)
        guard !policies.isEmpty else { throw ValidationError("--policy needs at least one policy name") }
        if nvmePath != nil && !realBytes {
            throw ValidationError("--nvme-path applies only with --real-bytes (without it no bytes are stored)")
        }
        let nvmeTiers = specs.indices.filter { specs[$0].kind == .nvme }
        let paths = nvmePath.map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        if realBytes, let paths {
            guard paths.count == nvmeTiers.count, !paths.contains(where: \.isEmpty) else {
                throw ValidationError("invalid --nvme-path '\(nvmePath ?? "")': expected \(nvmeTiers.count) path(s), one per nvme tier (tiers never share a file)")
            }
            for p in paths where FileIdentity(path: p) != nil && FileIdentity(path: p) == FileIdentity(path: input.trace) {
                throw ValidationError("invalid --nvme-path '\(p)': it is the trace being replayed")
            }
        }
        let targets = NVMeTargets()
        let files = self.files
        let storage = { (tier: Int, bytes: Int64) throws(MemWallError) -> StorageTarget in
            if let t = targets.opened[tier] { return t }
            let k = nvmeTiers.firstIndex(of: tier) ?? 0
            let t = try files.open(paths?[k], option: "--nvme-path", scratchPrefix: "memwall-kv-nvme", byteCount: bytes)
            targets.opened[tier] = t
            return t
        }
        var farNode: Int?
        if realBytes || self.farNode != nil {
            let topology = try Topology.load(.live)
            farNode = try TierPlacement.farMemoryNode(for: specs, in: topology, requested: self.farNode)
        }
        let trace = try input.load()
        var results: [ReplayResult] = []
        var transportsUsed: [String] = []
        // Every report shows the offline reference; it is replayed metadata only when not asked for.
        var oracle: ReplayResult?
        if !policies.contains(.belady) {
            var progress = ProgressReporter("kv replay belady (reference)", total: trace.requests.count, enabled: !input.output.quiet)
            oracle = try TraceReplay.run(trace, tiers: specs, policy: .belady) { done, _ in progress.update(done) }
        }
        // Queue-aware mode adds a second run of every policy (the oracle needs no hints).
        let runs = policies.map { ($0, 0) } + (lookahead > 0 ? policies.filter { $0 != .belady }.map { ($0, lookahead) } : [])
        for (p, ahead) in runs {
            var store: TierStore?
            var backingsToKeep: [TierBacking] = []
            if realBytes {
                let (s, b, names) = try KVRealBytes.makeStore(tiers: specs, blockBytes: blockBytes, farNode: farNode, storage: storage)
                store = s
                backingsToKeep = b
                transportsUsed = names
            }
            var best: ReplayResult?
            for run in 1...repeats {
                let name = ahead > 0 ? "\(p) +lookahead \(ahead)" : "\(p)"
                let label = repeats > 1 ? "kv replay \(name) \(run)/\(repeats)" : "kv replay \(name)"
                var progress = ProgressReporter(label, total: trace.requests.count, enabled: !input.output.quiet)
                if run > 1 && realBytes {
                    store = nil   // the previous store lets go of its transports first
                    store = try KVRealBytes.makeStore(tiers: specs, blockBytes: blockBytes, farNode: farNode, storage: storage).0
                }
                let r = try TraceReplay.run(trace, tiers: specs, policy: p, store: store, prefetchAhead: prefetch,
                                            lookahead: ahead) { done, _ in progress.update(done) }
                if let b = best {
                    var fastest = r.cpuSeconds < b.cpuSeconds ? r : b
                    fastest.residentGrowthBytes = b.residentGrowthBytes   // only the first run sees fresh pages
                    best = fastest
                } else {
                    best = r
                }
            }
            withExtendedLifetime(backingsToKeep) {}
            if let best { results.append(best) }
        }
        withExtendedLifetime(targets) {}
        if input.output.json {
            print(try Output.json(KVReplayReport(trace: input.trace, realBytes: realBytes, blockBytes: realBytes ? blockBytes : nil,
                                            transports: transportsUsed, results: results, oracle: oracle)))
        } else {
            print(KVReplayReport.text(trace: input.trace, results: results + (oracle.map { [$0] } ?? []), realBytes: realBytes,
                                      blockBytes: blockBytes, transports: transportsUsed))
        }
    }

    /// Policy names separated by commas, or `all` (every policy, the offline reference last).
    static func policies(_ text: String) throws(MemWallError) -> [EvictionPolicyName] {
        var out: [EvictionPolicyName] = []
        for s in text.split(separator: ",") {
            let names = String(s).trimmingWhitespace().lowercased() == "all"
                ? EvictionPolicyName.allCases : [try EvictionPolicyName.parse(String(s))]
            for n in names where !out.contains(n) { out.append(n) }
        }
        return out
    }
}

/// What `kv replay --json` prints (schema memwall.kv.replay/1).
struct KVReplayReport: Encodable {
    struct Tier: Encodable {
        var name, kind: String, capacity, occupancy, hits: Int, hitRate: Double
    }
    struct Policy: Encodable {
        var policy: String
        /// Queued requests hinted before each admission (0 = plain online run).
        var lookahead: Int
        var requests, lookups: Int, hitRate: Double, tiers: [Tier]
        var promotions, prefetchedBlocks, demotions, drops, uncached, inputTokens, prefillTokensSaved: Int
        var seconds, lookupsPerSecond, cpuSeconds, lookupsPerCPUSecond: Double
        var metadataBytes: Int, metadataBytesPerCachedBlock: Double, residentGrowthBytes, cachedBlocks: Int
        var bytesMovedByPath: [String: Int], verifiedReads: Int
        /// Per storage or remote tier: seconds its I/O was in flight (real bytes).
        var deviceBusySeconds: [String: Double]
    }
    var schema = "memwall.kv.replay/1"
    var trace: String
    var realBytes: Bool
    var blockBytes: Int?
    var transports: [String]
    var policies: [Policy]
    /// The offline reference (Belady), when it was not among `policies`.
    var oracle: Policy?

    init(trace: String, realBytes: Bool, blockBytes: Int?, transports: [String], results: [ReplayResult],
         oracle: ReplayResult? = nil) {
        self.trace = trace
        self.realBytes = realBytes
        self.blockBytes = blockBytes
        self.transports = transports
        policies = results.map(Self.policy)
        self.oracle = oracle.map(Self.policy)
    }

    static func policy(_ r: ReplayResult) -> Policy {
            let s = r.statistics
            return Policy(policy: r.policy, lookahead: r.lookahead, requests: r.requests, lookups: s.lookups, hitRate: s.hitRate,
                          tiers: r.tiers.enumerated().map { i, t in
                              Tier(name: t.name, kind: t.kind.rawValue, capacity: t.capacityBlocks, occupancy: s.occupancy[i],
                                   hits: s.hitsByTier[i], hitRate: s.hitRate(tier: i))
                          },
                          promotions: s.promotions, prefetchedBlocks: r.prefetchedBlocks, demotions: s.demotions, drops: s.drops, uncached: s.uncached,
                          inputTokens: r.inputTokens, prefillTokensSaved: r.prefillTokensSaved, seconds: r.seconds,
                          lookupsPerSecond: r.lookupsPerSecond, cpuSeconds: r.cpuSeconds,
                          lookupsPerCPUSecond: r.lookupsPerCPUSecond, metadataBytes: r.metadataBytes,
                          metadataBytesPerCachedBlock: r.metadataBytesPerBlock, residentGrowthBytes: r.residentGrowthBytes,
                          cachedBlocks: r.cachedBlocks, bytesMovedByPath: r.bytesMoved,
                          verifiedReads: r.verifiedReads, deviceBusySeconds: r.deviceBusySeconds)
    }

    static func text(trace: String, results: [ReplayResult], realBytes: Bool, blockBytes: Int, transports: [String]) -> String {
        guard let first = results.first else { return "" }
        var out = "kv replay \(trace): \(first.requests) requests, \(first.statistics.lookups) block lookups, tiers "
            + first.tiers.map(\.description).joined(separator: " + ")
            + (realBytes ? ", real bytes (\(ByteCount(blockBytes)) per block)" : ", metadata only") + "\n"
        for t in transports { out += "  transport \(t)\n" }
        func row(_ label: String, _ f: (ReplayResult) -> String) -> String {
            var line = label.padded(to: 28)
            for r in results { let cell = f(r); line += cell.padded(to: max(18, cell.count + 2)) }
            return line + "\n"
        }
        out += row("policy") { r in
            r.policy == EvictionPolicyName.belady.rawValue ? "belady (oracle)" : r.lookahead > 0 ? "\(r.policy) +ahead \(r.lookahead)" : r.policy
        }
        out += row("hit rate (all tiers)") { kvPercent($0.statistics.hitRate) }
        for (i, t) in first.tiers.enumerated() {
            out += row("  hits in \(t.name)") { kvPercent($0.statistics.hitRate(tier: i)) }
        }
        if first.tiers.count > 1 {
            out += row("  share of hits in \(first.tiers[0].name)") { r in
                kvPercent(r.statistics.hits == 0 ? 0 : Double(r.statistics.hitsByTier[0]) / Double(r.statistics.hits))
            }
        }
        if let oracle = results.first(where: { $0.policy == EvictionPolicyName.belady.rawValue }),
           let lru = results.first(where: { $0.policy == EvictionPolicyName.lru.rawValue && $0.lookahead == 0 }),
           oracle.statistics.hitRate > lru.statistics.hitRate {
            // How much of the distance from LRU to the offline optimum each policy covers.
            let span = oracle.statistics.hitRate - lru.statistics.hitRate
            out += row("gap LRU→oracle closed") { kvPercent(($0.statistics.hitRate - lru.statistics.hitRate) / span) }
        }
        out += row("prefill tokens saved") { r in
            "\(r.prefillTokensSaved) (\(kvPercent(r.inputTokens == 0 ? 0 : Double(r.prefillTokensSaved) / Double(r.inputTokens))))"
        }
        out += row("promotions") { "\($0.statistics.promotions)" }
        if results.contains(where: { $0.prefetchedBlocks > 0 }) {
            out += row("  of which prefetched") { "\($0.prefetchedBlocks)" }
        }
        out += row("demotions") { "\($0.statistics.demotions)" }
        out += row("drops") { "\($0.statistics.drops)" }
        out += row("lookups/s (wall)") { kvRate($0.lookupsPerSecond) }
        out += row("lookups/s (1 core CPU)") { kvRate($0.lookupsPerCPUSecond) }
        out += row("metadata/cached block") { formatDecimal($0.metadataBytesPerBlock, places: 1) + " B" }
        if !realBytes && results.count == 1 {
            // Only the first replay in a process sees fresh pages; later ones reuse freed memory.
            out += row("  resident growth/block") { r in
                r.cachedBlocks == 0 ? "-" : formatDecimal(Double(r.residentGrowthBytes) / Double(r.cachedBlocks), places: 1) + " B"
            }
        }
        if realBytes {
            out += row("read-backs verified") { "\($0.verifiedReads)" }
            let paths = Set(results.flatMap { $0.bytesMoved.keys }).sorted()
            // Bytes per path, and their rate over the replay's wall time.
            for p in paths {
                out += row("  \(p)") { r in
                    let b = r.bytesMoved[p] ?? 0
                    return "\(ByteCount(b)) (\(formatDecimal(r.seconds > 0 ? Double(b) / r.seconds / 1e9 : 0, places: 2)) GB/s)"
                }
            }
            // Per device tier: everything moved to and from it over the time its I/O was in flight.
            for t in Set(results.flatMap { $0.deviceBusySeconds.keys }).sorted() {
                out += row("  \(t) while busy") { r in
                    let busy = r.deviceBusySeconds[t] ?? 0
                    let b = r.bytesMoved.filter { !$0.key.hasPrefix("cpu") && $0.key.contains(t) }.values.reduce(0, +)
                    return "\(formatDecimal(busy > 0 ? Double(b) / busy / 1e9 : 0, places: 2)) GB/s, \(formatDecimal(busy, places: 2)) s"
                }
            }
        }
        return out
    }
}

/// A rate with the unit that keeps three significant figures visible: real-bytes
/// replays run at thousands of lookups per second, metadata-only ones at millions.
func kvRate(_ perSecond: Double) -> String {
    if perSecond >= 1e6 { return formatDecimal(perSecond / 1e6, places: 2) + " M" }
    if perSecond >= 1e3 { return formatDecimal(perSecond / 1e3, places: 1) + " k" }
    return formatDecimal(perSecond, places: 0)
}
