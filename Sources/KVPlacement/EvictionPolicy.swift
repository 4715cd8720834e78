import MemWallCore

/// Decides which block leaves a tier first.
///
/// The engine asks the policy for a score when a block is stored and when it
/// is hit, and tells it when a block is dropped from the cache for good. The
/// engine — not the policy — enforces the structural rules: only blocks with
/// no referencing request, no pin, and no children in the same tier are ever
/// offered, so a chain is always taken tail first whatever the policy scores.
///
/// A simple policy implements the four basic requirements and scores alone
/// order its candidates (lowest leaves first). A queue-structured policy (ARC,
/// S3-FIFO, W-TinyLFU) also uses *lanes*: every tier keeps one candidate heap
/// per lane, the policy puts each block in a lane (``placeNew(_:)``,
/// ``placeHit(_:)``), picks the lane a victim comes from
/// (``victimLane(capacity:blocksIn:)``), and may keep the block it is offered
/// by moving it to another lane with a new score (``review(_:capacity:blocksIn:peek:)``).
/// The richer calls get an ``EvictionContext``: what the index knows about the
/// block and the request that touches it. None of them can see the future.
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

    /// Candidate heaps per tier (1…8); a block's lane is an index below this.
    var laneCount: Int { get }
    /// Score, lane and remembered hit count of a block stored now.
    mutating func placeNew(_ context: EvictionContext) -> EvictionPlacement
    /// Score, lane and hit count of a block hit now (`context.hits` already counts this hit).
    mutating func placeHit(_ context: EvictionContext) -> EvictionPlacement
    /// The lane a full tier of `capacity` blocks takes its next victim from;
    /// `blocksIn(lane)` counts the tier's blocks in a lane (candidates or not).
    /// An empty lane is skipped by the engine (the next non-empty one is used).
    mutating func victimLane(capacity: Int, blocksIn: (Int) -> Int) -> Int
    /// The candidate with the lowest score in the chosen lane is about to leave:
    /// `.evict` lets it go, `.keep` moves it (new score, lane, hits) and the
    /// engine asks again. `peek(lane)` shows another lane's lowest candidate.
    /// The engine bounds the number of keeps per eviction (then it evicts).
    mutating func review(_ candidate: EvictionCandidate, capacity: Int, blocksIn: (Int) -> Int,
                         peek: (Int) -> EvictionCandidate?) -> EvictionVerdict
    /// A block left the cache (dropped from the last tier that held it), with its lane.
    mutating func didDrop(_ block: EvictionCandidate)
}

/// What the index knows about a block when it asks a policy to place it.
public struct EvictionContext: Sendable {
    /// The block.
    public var key: BlockKey
    /// The index's logical clock (one tick per admission or appended token).
    public var clock: UInt64
    /// Hits so far, this one included (0 for a block being stored).
    public var hits: UInt32
    /// The block's score before this access (0 for a block being stored).
    public var score: UInt64
    /// The block's lane before this access (0 for a block being stored).
    public var lane: Int
    /// The block's place in the admitted request (0 = first block).
    public var position: Int
    /// Blocks in the admitted request.
    public var requestBlocks: Int
    /// Leading blocks of the request that were cached (its prefix hit).
    public var requestHitBlocks: Int
    /// Hit count of the request's deepest cached block (the point where the
    /// request extends a cached chain), after this admission's hit; 0 when
    /// nothing was cached.
    public var chainHits: UInt32
    /// Score, before this admission, of the request's deepest cached block;
    /// 0 when nothing was cached. (Lets a policy that keeps the access time in
    /// its scores measure how long the chain sat idle before this turn.)
    public var chainScore: UInt64
    /// The block holds fewer tokens than a full block: its key changes as soon
    /// as a token is added, so only an identical prefix can ever hit it again.
    public var isPartial: Bool
    /// The block has no parent (a chain root: system prompt, shared document).
    public var isRoot: Bool
    /// The block is wanted by a queued request (``BlockIndex/hint(upcoming:)``).
    public var isHinted: Bool

    /// Creates a context (the index builds them; policies' own tests may too).
    public init(key: BlockKey, clock: UInt64, hits: UInt32, score: UInt64, lane: Int, position: Int, requestBlocks: Int,
                requestHitBlocks: Int, chainHits: UInt32, chainScore: UInt64, isPartial: Bool, isRoot: Bool, isHinted: Bool) {
        self.key = key
        self.clock = clock
        self.hits = hits
        self.score = score
        self.lane = lane
        self.position = position
        self.requestBlocks = requestBlocks
        self.requestHitBlocks = requestHitBlocks
        self.chainHits = chainHits
        self.chainScore = chainScore
        self.isPartial = isPartial
        self.isRoot = isRoot
        self.isHinted = isHinted
    }
}

/// Where a policy puts a block.
public struct EvictionPlacement: Sendable {
    /// Lower leaves first within the lane.
    public var score: UInt64
    /// The candidate heap (below ``EvictionPolicy/laneCount``).
    public var lane: Int
    /// The hit count the engine stores in the block.
    public var hits: UInt32
    /// Creates a placement.
    public init(score: UInt64, lane: Int = 0, hits: UInt32) {
        self.score = score
        self.lane = lane
        self.hits = hits
    }
}

/// A block offered for eviction, or peeked at.
public struct EvictionCandidate: Sendable {
    /// The block.
    public var key: BlockKey
    /// Its score.
    public var score: UInt64
    /// Its hit count.
    public var hits: UInt32
    /// Its lane.
    public var lane: Int

    /// Creates a candidate description.
    public init(key: BlockKey, score: UInt64, hits: UInt32, lane: Int) {
        self.key = key
        self.score = score
        self.hits = hits
        self.lane = lane
    }
}

/// A policy's answer when offered a block to evict.
public enum EvictionVerdict: Sendable {
    /// Let it go.
    case evict
    /// Keep it, moved to `lane` with a new score and hit count.
    case keep(score: UInt64, lane: Int, hits: UInt32)
}

extension EvictionPolicy {
    /// One lane.
    public var laneCount: Int { 1 }
    /// ``scoreForNewBlock(key:clock:)`` in lane 0.
    public mutating func placeNew(_ context: EvictionContext) -> EvictionPlacement {
        let (score, hits) = scoreForNewBlock(key: context.key, clock: context.clock)
        return EvictionPlacement(score: score, lane: 0, hits: hits)
    }
    /// ``scoreForHit(key:hits:clock:)``, lane unchanged.
    public mutating func placeHit(_ context: EvictionContext) -> EvictionPlacement {
        EvictionPlacement(score: scoreForHit(key: context.key, hits: context.hits, clock: context.clock),
                          lane: context.lane, hits: context.hits)
    }
    /// Lane 0.
    public mutating func victimLane(capacity: Int, blocksIn: (Int) -> Int) -> Int { 0 }
    /// Always evicts: scores alone decide.
    public mutating func review(_ candidate: EvictionCandidate, capacity: Int, blocksIn: (Int) -> Int,
                                peek: (Int) -> EvictionCandidate?) -> EvictionVerdict { .evict }
    /// ``didDrop(key:score:hits:)``.
    public mutating func didDrop(_ block: EvictionCandidate) {
        didDrop(key: block.key, score: block.score, hits: block.hits)
    }
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
    private var ghosts: GhostTable

    /// - Parameter capacity: Blocks the cache holds; sizes the ghost table.
    public init(capacity: Int) {
        ghosts = GhostTable(capacity: capacity)
    }

    /// `"lfuda"`.
    public var name: String { "lfuda" }

    /// Age + remembered frequency (+1 for this access).
    public mutating func scoreForNewBlock(key: BlockKey, clock: UInt64) -> (score: UInt64, hits: UInt32) {
        let hits = (ghosts.take(key) ?? 0) &+ 1
        return (composeScore(age + UInt64(hits), clock), hits)
    }

    /// Age + frequency.
    public mutating func scoreForHit(key: BlockKey, hits: UInt32, clock: UInt64) -> UInt64 {
        composeScore(age + UInt64(hits), clock)
    }

    /// Raises the age to the dropped block's priority and remembers its frequency.
    public mutating func didDrop(key: BlockKey, score: UInt64, hits: UInt32) {
        age = max(age, score >> 32)
        ghosts.put(key, max(hits, 1))
    }

    /// The ghost table.
    public var storageBytes: Int { ghosts.storageBytes }
}

/// A priority in the high 32 bits (saturated) and the clock in the low 32, so
/// equal priorities leave oldest access first.
@inline(__always)
func composeScore(_ priority: UInt64, _ clock: UInt64) -> UInt64 {
    (min(priority, UInt64(UInt32.max)) << 32) | (clock & 0xFFFF_FFFF)
}

/// A bounded, lossy memory of blocks that left the cache: direct-mapped, one
/// slot per cached block (next power of two), a newer key overwriting an
/// older one that hashes to the same slot. 12 bytes a slot.
struct GhostTable {
    private var keys: [UInt64]
    private var values: [UInt32]   // 0 = empty
    @inline(__always) private var mask: Int { keys.count &- 1 }

    init(capacity: Int) {
        var n = 1
        while n < max(capacity, 1) { n <<= 1 }
        keys = Array(repeating: 0, count: n)
        values = Array(repeating: 0, count: n)
    }

    @inline(__always) private func slot(_ key: BlockKey) -> Int {
        Int(truncatingIfNeeded: BlockKey.mix(key.rawValue)) & mask
    }

    /// The value remembered for `key`, if any, without forgetting it.
    func peek(_ key: BlockKey) -> UInt32? {
        let g = slot(key)
        return values[g] != 0 && keys[g] == key.rawValue ? values[g] : nil
    }

    /// The value remembered for `key`, forgetting it.
    mutating func take(_ key: BlockKey) -> UInt32? {
        let g = slot(key)
        guard values[g] != 0 && keys[g] == key.rawValue else { return nil }
        let v = values[g]
        values[g] = 0
        return v
    }

    /// Remembers `value` (non-zero) for `key`; returns the value it overwrote for another key.
    @discardableResult
    mutating func put(_ key: BlockKey, _ value: UInt32) -> UInt32? {
        let g = slot(key)
        let old = values[g] != 0 && keys[g] != key.rawValue ? values[g] : nil
        keys[g] = key.rawValue
        values[g] = max(value, 1)
        return old
    }

    var storageBytes: Int { keys.capacity * 8 + values.capacity * 4 }
}

/// The policies the command line knows by name.
public enum EvictionPolicyName: String, Sendable, CaseIterable, CustomStringConvertible {
    /// ``LRUPolicy``.
    case lru
    /// ``LFUDAPolicy``.
    case lfuda
    /// ``ARCPolicy``.
    case arc
    /// ``S3FIFOPolicy``.
    case s3fifo
    /// ``WTinyLFUPolicy``.
    case wtinylfu
    /// ``KVAwarePolicy``.
    case kvaware
    /// ``BeladyPolicy``: the offline reference, only in a trace replay.
    case belady

    /// Every policy that can serve requests (all but the offline reference).
    public static var online: [EvictionPolicyName] { allCases.filter { $0 != .belady } }

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
    /// - Throws: `invalidArgument` for ``belady``, which needs the future (see ``TraceReplay``).
    public func make(capacity: Int) throws(MemWallError) -> any EvictionPolicy {
        switch self {
        case .lru: LRUPolicy()
        case .lfuda: LFUDAPolicy(capacity: capacity)
        case .arc: ARCPolicy(capacity: capacity)
        case .s3fifo: S3FIFOPolicy(capacity: capacity)
        case .wtinylfu: WTinyLFUPolicy(capacity: capacity)
        case .kvaware: KVAwarePolicy(capacity: capacity)
        case .belady:
            throw MemWallError(.invalidArgument,
                               "eviction policy 'belady' reads the future: only a trace replay can run it (memwall kv replay)")
        }
    }

    /// The raw value.
    public var description: String { rawValue }
}
