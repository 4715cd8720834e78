import MemWallCore

/// How a request picks its worker.
public enum RoutingPolicy: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Lowest estimated cost: blocks left to prefill, queue load, and moving a peer's prefix.
    case cost
    /// Most cached leading blocks (ties to the lowest-numbered worker). Shown for
    /// comparison: with a shared first block it sends nearly everything to one worker.
    case overlap
    /// Next worker in turn, ignoring caches.
    case roundRobin = "round-robin"

    /// Parses a name.
    /// - Throws: `invalidArgument` naming the value and the known names.
    public static func parse(_ text: String) throws(MemWallError) -> RoutingPolicy {
        guard let p = RoutingPolicy(rawValue: text.trimmingWhitespace().lowercased()) else {
            throw .invalid("routing policy", text, expected: "one of " + allCases.map(\.rawValue).joined(separator: ", "))
        }
        return p
    }

    /// The raw value.
    public var description: String { rawValue }
}

/// Relative costs the ``RoutingPolicy/cost`` policy weighs, in units of "prefill one block".
public struct RoutingCosts: Sendable, Hashable {
    /// Cost of computing one block's KV.
    public var prefillPerBlock: Double
    /// Cost of one request of imbalance: added per request a worker has above the mean.
    public var loadPerRequest: Double
    /// Cost of fetching one block from a peer that has it; `nil` disables fetching.
    public var movePerBlock: Double?

    /// Creates weights.
    public init(prefillPerBlock: Double = 1, loadPerRequest: Double = 0.1, movePerBlock: Double? = 0.5) {
        self.prefillPerBlock = prefillPerBlock
        self.loadPerRequest = loadPerRequest
        self.movePerBlock = movePerBlock
    }
}

/// Where one request went and what it found there.
public struct RoutingDecision: Sendable, Hashable {
    /// Chosen worker.
    public var worker: Int
    /// Leading blocks cached on that worker.
    public var localHitBlocks: Int
    /// Further leading blocks fetched from a peer instead of computed.
    public var fetchedBlocks: Int
}

/// Several workers, each with its own cache, and a policy choosing where each request runs.
///
/// The ``RoutingPolicy/cost`` policy estimates, for every worker, the blocks it
/// would still have to prefill, the blocks it could fetch from the peer with
/// the longest cached prefix (when that is cheaper than computing them), and
/// how far its load is above the mean; the request goes to the cheapest. Load
/// is the number of requests routed to a worker so far.
public final class KVRouter {
    /// One cache per worker.
    public let workers: [BlockIndex]
    /// The policy.
    public let policy: RoutingPolicy
    /// Weights of the cost policy.
    public let costs: RoutingCosts
    /// Requests sent to each worker.
    public private(set) var assigned: [Int]
    /// Leading blocks found on the chosen worker, summed.
    public private(set) var localHits = 0
    /// Blocks fetched from peers, summed.
    public private(set) var fetchedBlocks = 0
    /// Blocks of all routed requests.
    public private(set) var lookups = 0
    private var nextRoundRobin = 0

    /// Creates `count` workers of `tiers` each.
    /// - Throws: `invalidArgument` for a worker count below 1 or bad tiers.
    public init(workers count: Int, tiers: [TierSpec], eviction: EvictionPolicyName, policy: RoutingPolicy,
                costs: RoutingCosts = RoutingCosts(), blockSize: Int = 512) throws(MemWallError) {
        guard count >= 1, count <= 4096 else { throw .invalid("worker count", count, expected: "1 to 4096 workers") }
        var w: [BlockIndex] = []
        for _ in 0..<count { w.append(try BlockIndex(tiers: tiers, policy: eviction, blockSize: blockSize)) }
        workers = w
        self.policy = policy
        self.costs = costs
        assigned = Array(repeating: 0, count: count)
    }

    /// Picks a worker for `keys` (without admitting).
    public func choose(_ keys: [BlockKey]) -> RoutingDecision {
        let n = workers.count
        switch policy {
        case .roundRobin:
            let w = nextRoundRobin
            return RoutingDecision(worker: w, localHitBlocks: workers[w].cachedPrefixLength(keys), fetchedBlocks: 0)
        case .overlap:
            var best = 0, bestLen = -1
            for w in 0..<n {
                let l = workers[w].cachedPrefixLength(keys)
                if l > bestLen { best = w; bestLen = l }
            }
            return RoutingDecision(worker: best, localHitBlocks: bestLen, fetchedBlocks: 0)
        case .cost:
            var prefix = [Int](repeating: 0, count: n)
            var longest = 0
            for w in 0..<n {
                prefix[w] = workers[w].cachedPrefixLength(keys)
                longest = max(longest, prefix[w])
            }
            let mean = Double(assigned.reduce(0, +)) / Double(n)
            var best = 0
            var bestCost = Double.infinity
            var bestFetch = 0
            for w in 0..<n {
                var fetch = 0
                var cost = Double(keys.count - prefix[w]) * costs.prefillPerBlock
                if let move = costs.movePerBlock, move < costs.prefillPerBlock, longest > prefix[w] {
                    fetch = longest - prefix[w]
                    cost = Double(fetch) * move + Double(keys.count - longest) * costs.prefillPerBlock
                }
                cost += (Double(assigned[w]) - mean) * costs.loadPerRequest
                if cost < bestCost || (cost == bestCost && assigned[w] < assigned[best]) {
                    best = w
                    bestCost = cost
                    bestFetch = fetch
                }
            }
            return RoutingDecision(worker: best, localHitBlocks: prefix[best], fetchedBlocks: bestFetch)
        }
    }

    /// Routes one request: chooses, admits on the chosen worker, releases (request done).
    /// - Throws: Only from a worker's real-bytes store (none here).
    @discardableResult
    public func route(_ keys: [BlockKey]) throws(MemWallError) -> RoutingDecision {
        let d = choose(keys)
        if policy == .roundRobin { nextRoundRobin = (nextRoundRobin + 1) % workers.count }
        let a = try workers[d.worker].admit(keys)
        try workers[d.worker].release(a.blocks)
        assigned[d.worker] += 1
        localHits += d.localHitBlocks
        fetchedBlocks += d.fetchedBlocks
        lookups += keys.count
        return d
    }

    /// Local prefix hits / lookups.
    public var hitRate: Double { lookups == 0 ? 0 : Double(localHits) / Double(lookups) }
    /// (Local hits + fetched blocks) / lookups.
    public var reuseRate: Double { lookups == 0 ? 0 : Double(localHits + fetchedBlocks) / Double(lookups) }
    /// Most requests on one worker over the mean (1 = perfectly even).
    public var loadImbalance: Double {
        let total = assigned.reduce(0, +)
        guard total > 0 else { return 0 }
        return Double(assigned.max() ?? 0) / (Double(total) / Double(assigned.count))
    }
}
