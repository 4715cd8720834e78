/// An eviction policy that uses what only a prefix cache knows about its blocks.
///
/// Base: LFU with dynamic aging (priority = age + value, the age rising to the
/// priority of each block that leaves), with a ghost memory of dropped blocks'
/// frequencies, as ``LFUDAPolicy``. What it adds, each from the index's view of
/// the request and the chain (never from the future):
///
/// - **Partial tails are nearly dead on arrival.** A block holding fewer tokens
///   than a full block is re-keyed as soon as the conversation continues, so
///   only a byte-identical prompt can hit it again (on Mooncake's conversation
///   trace 126 of 12,031 request tails ever were): it is worth a quarter of a
///   hit and leaves before any full block of the same age.
/// - **Hinted blocks** (wanted by a queued request) are worth the most.
///
/// Parameters, fixed and not fitted to a trace: 4 value steps per hit (so the
/// tail value can sit below one hit); tail value ¼ hit (any value below one hit
/// gives the same order; ¼ rather than 0 keeps the age rising when tails
/// leave). A third signal was tried and left out: letting a block that extends
/// a chain inherit the chain's hit count (its conversation's turn count) gained
/// 0.003 on the conversation trace and lost up to 0.19 on the agentic trace,
/// where finished agent sessions then kept high values long after their last
/// step. Measured effects are small: see `Benchmarks/RESULTS.md` (issue 16).
public struct KVAwarePolicy: EvictionPolicy {
    private var age: UInt64 = 0
    private var ghosts: GhostTable

    /// Value steps per hit: fine enough that a partial tail can sit just below a fresh full block.
    static let resolution: UInt64 = 4
    /// Value of a partial tail block: a quarter of one hit, so it leaves before
    /// any full block of the same age but does not stop the age from rising.
    static let partialTailValue: UInt64 = 1

    /// - Parameter capacity: Blocks the cache holds; sizes the ghost memory.
    public init(capacity: Int) { ghosts = GhostTable(capacity: capacity) }

    /// `"kvaware"`.
    public var name: String { "kvaware" }

    /// As LFU-DA (used only without a context).
    public mutating func scoreForNewBlock(key: BlockKey, clock: UInt64) -> (score: UInt64, hits: UInt32) {
        let hits = (ghosts.take(key) ?? 0) &+ 1
        return (composeScore(age + UInt64(hits) * Self.resolution, clock), hits)
    }
    /// As LFU-DA (used only without a context).
    public mutating func scoreForHit(key: BlockKey, hits: UInt32, clock: UInt64) -> UInt64 {
        composeScore(age + UInt64(hits) * Self.resolution, clock)
    }
    /// Raises the age and remembers the frequency.
    public mutating func didDrop(key: BlockKey, score: UInt64, hits: UInt32) {
        age = max(age, score >> 32)
        ghosts.put(key, max(hits, 1))
    }

    private func value(_ c: EvictionContext, hits: UInt32) -> UInt64 {
        if c.isHinted { return UInt64(UInt32.max) }
        if c.isPartial { return Self.partialTailValue }
        return UInt64(hits) * Self.resolution
    }

    /// Remembered frequency (1 for a block never seen).
    public mutating func placeNew(_ c: EvictionContext) -> EvictionPlacement {
        let hits = (ghosts.take(c.key) ?? 0) &+ 1
        return EvictionPlacement(score: composeScore(age + value(c, hits: hits), c.clock), lane: 0, hits: hits)
    }

    /// Age + value.
    public mutating func placeHit(_ c: EvictionContext) -> EvictionPlacement {
        EvictionPlacement(score: composeScore(age + value(c, hits: c.hits), c.clock), lane: 0, hits: c.hits)
    }

    /// The ghost memory.
    public var storageBytes: Int { ghosts.storageBytes }
}
