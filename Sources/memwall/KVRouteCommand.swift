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

    func run() async throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1, got \(workers)") }
        guard capacity >= 1 else { throw ValidationError("--capacity must be a positive number of blocks, got \(capacity)") }
        let eviction = try EvictionPolicyName.parse(policy)
        let policies = try routing.split(separator: ",").map { s throws(MemWallError) in try RoutingPolicy.parse(String(s)) }
        var move: Double? = nil
        if moveCost.lowercased() != "none" {
            guard let m = Double(moveCost), m >= 0 else {
                throw ValidationError("--move-cost must be a non-negative number or 'none', got '\(moveCost)'")
            }
            move = m
        }
        guard loadWeight >= 0 else { throw ValidationError("--load-weight must be non-negative, got \(loadWeight)") }
        let trace = try input.load()
        let tiers = [TierSpec(name: "dram", kind: .dram, capacityBlocks: capacity)]
        var rows: [KVRouteReport.Row] = []
        for p in policies {
            let router = try KVRouter(workers: workers, tiers: tiers, eviction: eviction, policy: p,
                                      costs: RoutingCosts(loadPerRequest: loadWeight, movePerBlock: move),
                                      blockSize: trace.blockTokens)
            var progress = ProgressReporter("kv route \(p)", total: trace.requests.count, enabled: !input.quiet)
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
        print(input.json ? try kvJSON(report) : report.text)
    }
}

/// What `kv route --json` prints (schema memwall.kv.route/1).
struct KVRouteReport: Encodable {
    struct Row: Encodable {
        var routing: String
        var hitRate: Double
        var reuseRate: Double
        var fetchedBlocks: Int
        var lookups: Int
        var loadImbalance: Double
        var requestsPerWorker: [Int]
    }
    var schema = "memwall.kv.route/1"
    var trace: String
    var workers: Int
    var capacityPerWorker: Int
    var eviction: String
    var loadWeight: Double
    var moveCost: Double?
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
