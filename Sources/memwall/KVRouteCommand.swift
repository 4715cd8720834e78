import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import KVPlacement
import MemWallCore

/// `memwall kv route TRACE`: N workers with their own caches and a routing policy.
struct KVRouteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route",
        abstract: "Simulate routing a trace across N workers; report hit rate and load balance (max/mean).")

    @OptionGroup var input: KVTraceOptions

    @Option(name: .long, help: "Number of workers.")
    var workers: Int = 8

    @Option(name: .long, help: "Cache blocks per worker (one DRAM tier each).")
    var capacity: Int = 6000

    @Option(name: .long, help: "Routing policies to compare, separated by commas (cost, overlap, round-robin).")
    var routing: String = "cost,overlap,round-robin"

    @Option(name: .long, help: "Eviction policy of every worker's cache (lru, lfuda).")
    var policy: String = "lru"

    @Option(name: .long, help: "Cost policy: weight of one request of load above the mean, in blocks of prefill.")
    var loadWeight: Double = 0.1

    @Option(name: .long, help: "Cost policy: cost of fetching one block from a peer, in blocks of prefill; 'none' disables fetching.")
    var moveCost: String = "0.5"

    /// Most workers, and most blocks over all workers' caches (each worker's
    /// index is sized for its capacity up front, so this bounds the memory).
    static let maximumWorkers = 4096
    static let maximumTotalBlocks = TierSpec.maximumBlocks

    func validate() throws {
        try OptionCheck.inRange("--workers", workers, 1 ... Self.maximumWorkers)
        try OptionCheck.inRange("--capacity", capacity, 1 ... Self.maximumTotalBlocks, unit: "blocks")
        guard workers * capacity <= Self.maximumTotalBlocks else {
            throw ValidationError("invalid --workers '\(workers)' with --capacity '\(capacity)': \(workers * capacity) blocks over all workers; expected at most \(Self.maximumTotalBlocks) (every worker's index is sized up front)")
        }
        try OptionCheck.finite("--load-weight", loadWeight, above: 0, orEqual: true, atMost: 1e6, unit: "blocks per request")
        _ = try parsedMoveCost()
        try input.validate()
    }

    private func parsedMoveCost() throws -> Double? {
        guard moveCost.lowercased() != "none" else { return nil }
        guard let m = Double(moveCost), m.isFinite, m >= 0, m <= 1e6 else {
            throw ValidationError("invalid --move-cost '\(moveCost)': expected a number in [0, 1000000] or 'none'")
        }
        return m
    }

    func run() async throws {
        let eviction = try EvictionPolicyName.parse(policy)
        let policies = try routing.split(separator: ",").map { s throws(MemWallError) in try RoutingPolicy.parse(String(s)) }
        let move = try parsedMoveCost()
        let trace = try input.load()
        let tiers = [TierSpec(name: "dram", kind: .dram, capacityBlocks: capacity)]
        var rows: [KVRouteReport.Row] = []
        for p in policies {
            let router = try KVRouter(workers: workers, tiers: tiers, eviction: eviction, policy: p,
                                      costs: RoutingCosts(loadPerRequest: loadWeight, movePerBlock: move),
                                      blockSize: trace.blockTokens)
            var progress = ProgressReporter("kv route \(p)", total: trace.requests.count, enabled: !input.output.quiet)
            for (i, r) in trace.requests.enumerated() {
                try router.route(r.blockIDs)
                if i % 2000 == 1999 { progress.update(i + 1) }
            }
            progress.update(trace.requests.count)
            rows.append(KVRouteReport.Row(routing: p.rawValue, hitRate: router.hitRate, reuseRate: router.reuseRate,
                                          fetchedBlocks: router.fetchedBlocks, lookups: router.lookups,
                                          loadImbalance: router.loadImbalance, requestsPerWorker: router.assigned))
        }
        let report = KVRouteReport(trace: input.trace, workers: workers, capacityPerWorker: capacity, eviction: eviction.rawValue,
                                   loadWeight: loadWeight, moveCost: move, rows: rows)
        print(input.output.json ? try Output.json(report) : report.text)
    }
}

/// What `kv route --json` prints (schema memwall.kv.route/1).
struct KVRouteReport: Encodable {
    struct Row: Encodable {
        var routing: String, hitRate, reuseRate: Double, fetchedBlocks, lookups: Int, loadImbalance: Double
        var requestsPerWorker: [Int]
    }
    var schema = "memwall.kv.route/1"
    var trace: String, workers, capacityPerWorker: Int, eviction: String, loadWeight: Double, moveCost: Double?
    var rows: [Row]

    var text: String {
        var out = "kv route \(trace): \(workers) workers x \(capacityPerWorker) blocks, eviction \(eviction), "
            + "load weight \(loadWeight), move cost \(moveCost.map { "\($0)" } ?? "none")\n"
        out += "routing".padded(to: 14) + "local hit   +fetched    load max/mean  requests per worker\n"
        for r in rows {
            out += r.routing.padded(to: 14)
                + kvPercent(r.hitRate).padded(to: 12)
                + kvPercent(r.reuseRate).padded(to: 11)
                + formatDecimal(r.loadImbalance, places: 3).padded(to: 15)
                + r.requestsPerWorker.map(String.init).joined(separator: " ") + "\n"
        }
        return out
    }
}
