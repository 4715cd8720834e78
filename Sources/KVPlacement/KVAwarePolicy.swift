/// An eviction policy that uses what only a prefix cache knows about its blocks.
///
/// Base: LFU with dynamic aging (priority = age + value, the age rising to the
/// priority of each block that leaves), with a ghost memory of dropped blocks'
/// frequencies, as ``LFUDAPolicy``. What it adds, each from the index's view of
/// the request and the chain (never from the future):
///
/// - **Partial tails are dead on arrival.** A block holding fewer tokens than
///   a full block is re-keyed as soon as the conversation continues, so only a
///   byte-identical prompt can hit it again: it gets value 0 and leaves first.
/// - **A chain's frequency is the conversation's.** A block stored by a request
///   that extends a cached chain inherits half the hit count of the block it
///   extends (the number of turns that conversation has had): a conversation
///   that has come back several times is likely to come back again, and its new
///   turn is worth as much as its old ones, not as little as a fresh block.
/// - **Hinted blocks** (wanted by a queued request) are worth the most.
///
/// Parameters (fixed, not fitted to a trace): value resolution 4 steps per hit,
/// inheritance ½ (a turn's continuation odds rise with the turn count but stay
/// below 1; ½ halves the credit so a long-dead conversation still ages out).
public struct KVAwarePolicy: EvictionPolicy {
    private var age: UInt64 = 0
    private var ghosts: GhostTable

    /// Value steps per hit.
    static let resolution: UInt64 = 4

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
        if c.isPartial { return 0 }
        return UInt64(hits) * Self.resolution
    }

    /// Remembered frequency, or half the extended chain's.
    public mutating func placeNew(_ c: EvictionContext) -> EvictionPlacement {
        var hits = (ghosts.take(c.key) ?? 0) &+ 1
        if c.requestHitBlocks >= 2 { hits = max(hits, c.chainHits / 2) }
        return EvictionPlacement(score: composeScore(age + value(c, hits: hits), c.clock), lane: 0, hits: hits)
    }

    /// Age + value.
    public mutating func placeHit(_ c: EvictionContext) -> EvictionPlacement {
        EvictionPlacement(score: composeScore(age + value(c, hits: c.hits), c.clock), lane: 0, hits: c.hits)
    }

    /// The ghost memory.
    public var storageBytes: Int { ghosts.storageBytes }
}
