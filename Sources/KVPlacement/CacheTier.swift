import MemWallCore

/// What kind of memory or storage a cache tier is.
public enum TierKind: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    /// Host DRAM next to the CPUs running the model: where blocks are used.
    case dram
    /// CXL or other far memory (a CPU-less NUMA node), or its emulation.
    case farMemory = "far-memory"
    /// A file or block device, through io_uring.
    case nvme
    /// A peer's registered memory, through RDMA or its TCP emulation.
    case remote
    /// The host-wide KV pool every process shares (`KVPool`): a ``SharedKVTier`` the cache
    /// consults and writes through to, outside its own index (its capacity is the pool's).
    case pool

    /// The raw value.
    public var description: String { rawValue }
}

/// One tier of the cache as configured: a name, a kind and a capacity in blocks.
public struct TierSpec: Sendable, Hashable, CustomStringConvertible {
    /// Name used in reports ("dram", "far", "nvme").
    public var name: String
    /// Kind of memory.
    public var kind: TierKind
    /// Blocks it holds.
    public var capacityBlocks: Int

    /// Creates a tier description.
    public init(name: String, kind: TierKind, capacityBlocks: Int) {
        self.name = name
        self.kind = kind
        self.capacityBlocks = capacityBlocks
    }

    /// `"dram:5000"`, `"pool:NAME"`.
    public var description: String { kind == .pool ? "pool:\(name)" : "\(name):\(capacityBlocks)" }

    /// Parses `KIND:BLOCKS` (`dram:5000`, `far:15000`, `nvme:100000`, `remote:2000`), or
    /// `pool:NAME` for the host-wide KV pool named NAME (its capacity is the pool's: 0 here).
    /// - Throws: `invalidArgument` naming the text and the accepted forms.
    public static func parse(_ text: String) throws(MemWallError) -> TierSpec {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map { String($0).trimmingWhitespace() }
        if parts.count == 2, parts[0].lowercased() == "pool" {
            let name = parts[1]
            guard KVPoolName.isValid(name) else { throw .invalid("pool tier", text, expected: "pool:NAME with NAME \(KVPoolName.rule)") }
            return TierSpec(name: name, kind: .pool, capacityBlocks: 0)
        }
        let kinds: [String: TierKind] = ["dram": .dram, "far": .farMemory, "far-memory": .farMemory,
                                         "cxl": .farMemory, "nvme": .nvme, "remote": .remote]
        guard parts.count == 2, let kind = kinds[parts[0].lowercased()] else {
            throw .invalid("tier", text, expected: "KIND:BLOCKS with KIND one of dram, far, nvme, remote (e.g. dram:5000), or pool:NAME")
        }
        guard let n = Int(parts[1]), n > 0 else {
            throw .invalid("capacity of tier '\(parts[0])'", parts[1], expected: "a positive number of blocks")
        }
        return TierSpec(name: parts[0].lowercased(), kind: kind, capacityBlocks: n)
    }

    /// Checks a tier list: 1…``maximumCount`` tiers, positive capacities, DRAM first.
    /// - Parameter allowingShared: Accept one ``TierKind/pool`` tier after the first (a
    ///   ``KVCache`` given the pool keeps it out of its index); without it a pool tier is refused.
    /// - Throws: `invalidArgument` naming the offending tier.
    public static func validate(_ tiers: [TierSpec], allowingShared: Bool = false) throws(MemWallError) {
        let pools = tiers.enumerated().filter { $0.element.kind == .pool }
        if !pools.isEmpty {
            guard allowingShared else {
                throw .invalid("tier", pools[0].element.description,
                               expected: "no pool tier here: the host-wide pool is a runtime tier of a KV cache (KVCache, mw_kv_open), not one this command models")
            }
            guard pools.count == 1, pools[0].offset > 0 else {
                throw .invalid("pool tier", pools[0].element.description, expected: "one pool tier, after the dram tier")
            }
            try validate(tiers.filter { $0.kind != .pool })
            return
        }
        guard !tiers.isEmpty, tiers.count <= maximumCount else {
            throw .invalid("tier count", tiers.count, expected: "1 to \(maximumCount) tiers")
        }
        for t in tiers where t.capacityBlocks <= 0 || t.capacityBlocks > maximumBlocks {
            throw .invalid("capacity of tier '\(t.name)'", t.capacityBlocks, expected: "a positive number of blocks, at most \(maximumBlocks)")
        }
        let total = tiers.reduce(0) { $0 + $1.capacityBlocks }   // ≤ 4 × 2^26: cannot overflow
        guard total <= maximumBlocks else {
            throw .invalid("total capacity", total,
                           expected: "at most \(maximumBlocks) blocks over all tiers (the index is sized for its capacity up front)")
        }
        guard tiers[0].kind == .dram else {
            throw .invalid("first tier", tiers[0].name, expected: "a dram tier (blocks are used from DRAM; slower tiers follow)")
        }
    }

    /// Most blocks one cache holds over all tiers (2^26: ~1 GiB of key table, and more KV than any host has).
    public static let maximumBlocks = 1 << 26

    /// Most tiers a cache may have (per-tier child counters are a fixed-size tuple).
    public static let maximumCount = 4
}

/// What happened to a block, in the shape vLLM and Dynamo publish KV events.
public enum KVEvent: Sendable, Hashable, CustomStringConvertible {
    /// A block entered the cache in `tier`.
    case stored(key: BlockKey, parent: BlockKey?, tier: Int, tokenCount: Int)
    /// A block moved between tiers (demotion when `to > from`, promotion otherwise).
    case moved(key: BlockKey, parent: BlockKey?, from: Int, to: Int)
    /// A block left the cache from `tier`.
    case removed(key: BlockKey, parent: BlockKey?, tier: Int)

    /// One line for logs.
    public var description: String {
        switch self {
        case let .stored(k, p, t, n): "stored \(k) parent \(p.map { "\($0)" } ?? "none") tier \(t) tokens \(n)"
        case let .moved(k, p, f, t): "moved \(k) parent \(p.map { "\($0)" } ?? "none") tier \(f) -> \(t)"
        case let .removed(k, p, t): "removed \(k) parent \(p.map { "\($0)" } ?? "none") tier \(t)"
        }
    }
}

/// Counters of one cache; cheap to copy.
public struct KVStatistics: Sendable, Hashable {
    /// Block lookups (one per block of every admitted request).
    public var lookups = 0
    /// Prefix hits, by the tier the block was found in.
    public var hitsByTier: [Int]
    /// Blocks not found.
    public var misses = 0
    /// Blocks stored.
    public var stores = 0
    /// Moves to a faster tier.
    public var promotions = 0
    /// Moves to a slower tier.
    public var demotions = 0
    /// Blocks dropped from the cache.
    public var drops = 0
    /// Blocks that could not be cached (every block of every tier in use by requests or pinned).
    public var uncached = 0
    /// Copy-on-write copies of a shared partial tail.
    public var copiesOnWrite = 0
    /// Blocks held now, by tier.
    public var occupancy: [Int]
    /// Capacity, by tier.
    public var capacity: [Int]

    /// Zeroed counters for `tiers` tiers.
    public init(tiers: Int) {
        hitsByTier = Array(repeating: 0, count: tiers)
        occupancy = Array(repeating: 0, count: tiers)
        capacity = Array(repeating: 0, count: tiers)
    }

    /// All hits.
    public var hits: Int { hitsByTier.reduce(0, +) }
    /// Hits / lookups (0 before any lookup).
    public var hitRate: Double { lookups == 0 ? 0 : Double(hits) / Double(lookups) }
    /// Hits in `tier` / lookups.
    public func hitRate(tier: Int) -> Double { lookups == 0 ? 0 : Double(hitsByTier[tier]) / Double(lookups) }
}
