import MemWallCore

/// Decides which block leaves a tier first: the one with the lowest score.
///
/// The engine asks the policy for a score when a block is stored and when it
/// is hit, and tells it when a block is dropped from the cache for good. The
/// engine — not the policy — enforces the structural rules: only blocks with
/// no referencing request, no pin, and no children in the same tier are ever
/// offered, so a chain is always taken tail first whatever the policy scores.
///
/// Implementations are value types owned by one engine (mutated under its lock).
public protocol EvictionPolicy: Sendable {
    /// Short name used on the command line and in reports ("lru", "lfuda").
    var name: String { get }
    /// Score of a block stored now; `hits` is what the policy wants remembered
    /// in the block (e.g. a frequency carried over from an earlier life).
    mutating func scoreForNewBlock(key: BlockKey, clock: UInt64) -> (score: UInt64, hits: UInt32)
    /// Score of a block hit now, whose hit count (after this hit) is `hits`.
    mutating func scoreForHit(key: BlockKey, hits: UInt32, clock: UInt64) -> UInt64
    /// A block left the cache (dropped from the last tier that held it).
    mutating func didDrop(key: BlockKey, score: UInt64, hits: UInt32)
    /// Bytes of memory the policy holds beyond the engine's per-block entry.
    var storageBytes: Int { get }
}

/// Least recently used: the score is the logical time of the last access.
public struct LRUPolicy: EvictionPolicy {
    /// Creates the policy.
    public init() {}
    /// `"lru"`.
    public var name: String { "lru" }
    /// The current time.
    public mutating func scoreForNewBlock(key: BlockKey, clock: UInt64) -> (score: UInt64, hits: UInt32) { (clock, 0) }
    /// The current time.
    public mutating func scoreForHit(key: BlockKey, hits: UInt32, clock: UInt64) -> UInt64 { clock }
    /// Nothing to remember.
    public mutating func didDrop(key: BlockKey, score: UInt64, hits: UInt32) {}
    /// None.
    public var storageBytes: Int { 0 }
}

/// LFU with dynamic aging, plus a bounded memory of dropped blocks' frequencies.
///
/// Score = age + frequency, where *age* is the priority of the last block
/// dropped: old popular blocks lose their advantage as the age rises, so the
/// policy does not freeze on yesterday's favourites the way plain LFU does.
/// A block that comes back soon after being dropped resumes the frequency it
/// had (a direct-mapped "ghost" table, one entry per cached block, lossy on
/// collision), which keeps re-used conversation prefixes over one-off tails.
/// Ties go to the older access (the low 32 bits of the score are the clock).
public struct LFUDAPolicy: EvictionPolicy {
    private var age: UInt64 = 0
    private var ghostKeys: [UInt64]
    private var ghostHits: [UInt32]   // 0 = empty
    // Three words in all (the mask is derived from the table size), so the policy
    // fits an existential's inline buffer and calls do not go through a boxed copy.
    @inline(__always) private var ghostMask: Int { ghostKeys.count &- 1 }

    /// - Parameter capacity: Blocks the cache holds; sizes the ghost table.
    public init(capacity: Int) {
        var n = 1
        while n < max(capacity, 1) { n <<= 1 }
        ghostKeys = Array(repeating: 0, count: n)
        ghostHits = Array(repeating: 0, count: n)
    }

    /// `"lfuda"`.
    public var name: String { "lfuda" }

    @inline(__always)
    private func compose(_ priority: UInt64, _ clock: UInt64) -> UInt64 {
        (min(priority, UInt64(UInt32.max)) << 32) | (clock & 0xFFFF_FFFF)
    }

    /// Age + remembered frequency (+1 for this access).
    public mutating func scoreForNewBlock(key: BlockKey, clock: UInt64) -> (score: UInt64, hits: UInt32) {
        let g = Int(truncatingIfNeeded: BlockKey.mix(key.rawValue)) & ghostMask
        var hits: UInt32 = 1
        if ghostHits[g] != 0 && ghostKeys[g] == key.rawValue {
            hits = ghostHits[g] &+ 1
            ghostHits[g] = 0
        }
        return (compose(age + UInt64(hits), clock), hits)
    }

    /// Age + frequency.
    public mutating func scoreForHit(key: BlockKey, hits: UInt32, clock: UInt64) -> UInt64 {
        compose(age + UInt64(hits), clock)
    }

    /// Raises the age to the dropped block's priority and remembers its frequency.
    public mutating func didDrop(key: BlockKey, score: UInt64, hits: UInt32) {
        age = max(age, score >> 32)
        let g = Int(truncatingIfNeeded: BlockKey.mix(key.rawValue)) & ghostMask
        ghostKeys[g] = key.rawValue
        ghostHits[g] = max(hits, 1)
    }

    /// The ghost table.
    public var storageBytes: Int { ghostKeys.capacity * 8 + ghostHits.capacity * 4 }
}

/// The policies the command line knows by name.
public enum EvictionPolicyName: String, Sendable, CaseIterable, CustomStringConvertible {
    /// ``LRUPolicy``.
    case lru
    /// ``LFUDAPolicy``.
    case lfuda

    /// Parses a name.
    /// - Throws: `invalidArgument` naming the value and the known names.
    public static func parse(_ text: String) throws(MemWallError) -> EvictionPolicyName {
        guard let p = EvictionPolicyName(rawValue: text.trimmingWhitespace().lowercased()) else {
            throw .invalid("eviction policy", text,
                           expected: "one of " + allCases.map(\.rawValue).joined(separator: ", "))
        }
        return p
    }

    /// A fresh policy for a cache of `capacity` blocks.
    public func make(capacity: Int) -> any EvictionPolicy {
        switch self {
        case .lru: LRUPolicy()
        case .lfuda: LFUDAPolicy(capacity: capacity)
        }
    }

    /// The raw value.
    public var description: String { rawValue }
}
