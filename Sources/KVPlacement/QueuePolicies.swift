/// A policy that orders blocks by lanes and reviews, not by scores alone: the
/// score-only requirements of ``EvictionPolicy`` reduce to access order (used
/// only where no ``EvictionContext`` exists) and dropping is handled by
/// ``EvictionPolicy/didDrop(_:)``.
public protocol QueueEvictionPolicy: EvictionPolicy {}

extension QueueEvictionPolicy {
    /// Access order, no remembered hits.
    public mutating func scoreForNewBlock(key: BlockKey, clock: UInt64) -> (score: UInt64, hits: UInt32) { (clock, 0) }
    /// Access order.
    public mutating func scoreForHit(key: BlockKey, hits: UInt32, clock: UInt64) -> UInt64 { clock }
    /// Nothing: lane-aware policies act in ``EvictionPolicy/didDrop(_:)``.
    public mutating func didDrop(key: BlockKey, score: UInt64, hits: UInt32) {}
}

/// S3-FIFO (Yang et al., SOSP 2023): a small FIFO queue that new blocks enter,
/// a main FIFO queue with lazy reinsertion, and a ghost memory of blocks that
/// left from the small queue.
///
/// Lanes: 0 = small, 1 = main. A block's hit count is its 2-bit frequency
/// (capped at 3). A full tier takes from the small queue while it holds at
/// least 10 % of the tier (the paper's ratio): a block that was hit there
/// moves to main, one that was not leaves and is remembered as a ghost (a
/// "one-hit wonder" never reaches main). Main is FIFO with reinsertion: a
/// block with frequency left goes back to the head with one less. A block
/// stored again while its ghost is remembered goes straight to main.
/// Scores are access times only to order each FIFO; hits never reorder.
public struct S3FIFOPolicy: QueueEvictionPolicy {
    private var ghosts: GhostTable
    private var now: UInt64 = 0

    /// Share of a tier the small queue may hold before it is evicted from (the paper's 10 %).
    public static let smallShare = 0.10
    /// Frequency cap (the paper's two bits).
    public static let maxFrequency: UInt32 = 3

    /// - Parameter capacity: Blocks the cache holds; sizes the ghost memory (as large as the cache).
    public init(capacity: Int) { ghosts = GhostTable(capacity: capacity) }

    /// `"s3fifo"`.
    public var name: String { "s3fifo" }
    /// Small and main.
    public var laneCount: Int { 2 }


    /// Small queue, or main when the block's ghost is remembered.
    public mutating func placeNew(_ context: EvictionContext) -> EvictionPlacement {
        now = context.clock
        let lane = ghosts.take(context.key) != nil ? 1 : 0
        return EvictionPlacement(score: context.clock, lane: lane, hits: 0)
    }

    /// Frequency up by one (capped); place in the FIFO unchanged.
    public mutating func placeHit(_ context: EvictionContext) -> EvictionPlacement {
        now = context.clock
        return EvictionPlacement(score: context.score, lane: context.lane, hits: min(context.hits, Self.maxFrequency))
    }

    /// Small while it holds its share, else main.
    public mutating func victimLane(capacity: Int, blocksIn: (Int) -> Int) -> Int {
        Double(blocksIn(0)) >= Double(capacity) * Self.smallShare ? 0 : 1
    }

    /// Small: hit → main, else leave. Main: frequency left → reinsert with one less, else leave.
    public mutating func review(_ candidate: EvictionCandidate, capacity: Int, blocksIn: (Int) -> Int,
                                peek: (Int) -> EvictionCandidate?) -> EvictionVerdict {
        guard candidate.hits > 0 else { return .evict }
        if candidate.lane == 0 { return .keep(score: now, lane: 1, hits: 0) }
        return .keep(score: now, lane: 1, hits: candidate.hits - 1)
    }

    /// Blocks leaving from the small queue are remembered.
    public mutating func didDrop(_ block: EvictionCandidate) {
        if block.lane == 0 { ghosts.put(block.key, 1) }
    }

    /// The ghost memory.
    public var storageBytes: Int { ghosts.storageBytes }
}

/// ARC (Megiddo and Modha, FAST 2003): a recency list T1 and a frequency list
/// T2 whose split adapts to which list's ghosts are hit.
///
/// Lanes: 0 = T1 (seen once), 1 = T2 (seen at least twice), each LRU by access
/// time. A block stored while its ghost from T1 (B1) is remembered grows T1's
/// target share *p*; one from T2's ghosts (B2) shrinks it; both enter T2. A
/// full tier takes from T1 while T1 is above its target, else from T2.
/// The ghost lists are one direct-mapped table as large as the cache
/// (ARC's |B1| + |B2| ≤ c), with a tag per entry saying which list it is in;
/// a collision forgets the older ghost, so |B1|, |B2| are counted exactly but
/// their contents are approximate.
public struct ARCPolicy: QueueEvictionPolicy {
    private var ghosts: GhostTable
    private var target = 0.0          // p as a share of the tier, 0…1
    private var ghostCount = (b1: 0, b2: 0)
    private var lastFromB2 = false
    private let capacity: Double

    /// - Parameter capacity: Blocks the cache holds (ARC's c).
    public init(capacity: Int) {
        ghosts = GhostTable(capacity: capacity)
        self.capacity = Double(max(capacity, 1))
    }

    /// `"arc"`.
    public var name: String { "arc" }
    /// ARC's *p*: the share of a tier T1 (blocks seen once) may hold before T2 gives way.
    public var recencyTarget: Double { target }
    /// T1 and T2.
    public var laneCount: Int { 2 }


    /// T1, or T2 after adapting the target when the block's ghost is remembered.
    public mutating func placeNew(_ context: EvictionContext) -> EvictionPlacement {
        lastFromB2 = false
        switch ghosts.take(context.key) {
        case 1?:
            ghostCount.b1 -= 1
            target = min(1, target + max(1, Double(ghostCount.b2) / Double(max(ghostCount.b1, 1))) / capacity)
            return EvictionPlacement(score: context.clock, lane: 1, hits: 0)
        case 2?:
            ghostCount.b2 -= 1
            lastFromB2 = true
            target = max(0, target - max(1, Double(ghostCount.b1) / Double(max(ghostCount.b2, 1))) / capacity)
            return EvictionPlacement(score: context.clock, lane: 1, hits: 0)
        default:
            return EvictionPlacement(score: context.clock, lane: 0, hits: 0)
        }
    }

    /// Most recent end of T2.
    public mutating func placeHit(_ context: EvictionContext) -> EvictionPlacement {
        EvictionPlacement(score: context.clock, lane: 1, hits: context.hits)
    }

    /// ARC's REPLACE: T1 when it is above its target (or at it, after a B2 ghost hit).
    public mutating func victimLane(capacity: Int, blocksIn: (Int) -> Int) -> Int {
        let t1 = Double(blocksIn(0))
        let p = target * Double(capacity)
        return t1 > 0 && (t1 > p || (lastFromB2 && t1 >= p)) ? 0 : 1
    }

    /// Leaving blocks join their list's ghosts.
    public mutating func didDrop(_ block: EvictionCandidate) {
        let list: UInt32 = block.lane == 0 ? 1 : 2
        if list == 1 { ghostCount.b1 += 1 } else { ghostCount.b2 += 1 }
        switch ghosts.put(block.key, list) {
        case 1?: ghostCount.b1 -= 1
        case 2?: ghostCount.b2 -= 1
        default: break
        }
    }

    /// The ghost table.
    public var storageBytes: Int { ghosts.storageBytes }
}

/// W-TinyLFU (Einziger, Friedman and Manes, 2017; Caffeine's policy): a small
/// LRU window in front of a segmented-LRU main cache, with admission to main
/// decided by a frequency sketch.
///
/// Lanes: 0 = window (1 % of the tier), 1 = probation, 2 = protected (80 % of
/// main). A full tier whose window is over its share offers the window's LRU
/// block: it enters probation only if the sketch says it is more frequent than
/// probation's LRU block (which then leaves), else it leaves itself — so a cold
/// block cannot push out a warm one. A hit in probation moves a block to
/// protected; protected over its share moves its LRU block back to probation.
/// The sketch is a 4-bit count-min sketch (four counters per key, 16 per
/// 64-bit word, one word per cached block) halved after 10 × capacity
/// increments, so old popularity fades (the paper's reset).
public struct WTinyLFUPolicy: QueueEvictionPolicy {
    private var sketch: FrequencySketch
    private var now: UInt64 = 0

    /// The window's share of a tier (Caffeine's default 1 %).
    public static let windowShare = 0.01
    /// Protected's share of main (Caffeine's 80 %).
    public static let protectedShare = 0.80

    /// - Parameter capacity: Blocks the cache holds; sizes the sketch.
    public init(capacity: Int) { sketch = FrequencySketch(capacity: capacity) }

    /// `"wtinylfu"`.
    public var name: String { "wtinylfu" }
    /// Window, probation, protected.
    public var laneCount: Int { 3 }


    /// Counted, into the window.
    public mutating func placeNew(_ context: EvictionContext) -> EvictionPlacement {
        now = context.clock
        sketch.increment(context.key)
        return EvictionPlacement(score: context.clock, lane: 0, hits: 0)
    }

    /// Counted; probation → protected; recency refreshed.
    public mutating func placeHit(_ context: EvictionContext) -> EvictionPlacement {
        now = context.clock
        sketch.increment(context.key)
        return EvictionPlacement(score: context.clock, lane: context.lane == 0 ? 0 : 2, hits: context.hits)
    }

    /// Window when over its share, protected when over its share, else probation.
    public mutating func victimLane(capacity: Int, blocksIn: (Int) -> Int) -> Int {
        let window = max(1.0, Double(capacity) * Self.windowShare)
        if Double(blocksIn(0)) > window { return 0 }
        if Double(blocksIn(2)) > (Double(capacity) - window) * Self.protectedShare { return 2 }
        return 1
    }

    /// Window: admitted to probation only if more frequent than probation's victim.
    /// Protected: back to probation. Probation: leaves.
    public mutating func review(_ candidate: EvictionCandidate, capacity: Int, blocksIn: (Int) -> Int,
                                peek: (Int) -> EvictionCandidate?) -> EvictionVerdict {
        switch candidate.lane {
        case 0:
            guard let rival = peek(1) else { return .keep(score: candidate.score, lane: 1, hits: candidate.hits) }
            return sketch.estimate(candidate.key) > sketch.estimate(rival.key)
                ? .keep(score: now, lane: 1, hits: candidate.hits) : .evict
        case 2:
            return .keep(score: candidate.score, lane: 1, hits: candidate.hits)
        default:
            return .evict
        }
    }

    /// The sketch.
    public var storageBytes: Int { sketch.storageBytes }
}

/// A count-min sketch of 4-bit counters (TinyLFU's frequency estimate).
struct FrequencySketch {
    private var table: [UInt64]
    private var additions = 0
    private let sampleSize: Int

    init(capacity: Int) {
        var n = 1
        while n < max(capacity, 16) { n <<= 1 }
        table = Array(repeating: 0, count: n)
        sampleSize = 10 * max(capacity, 16)
    }

    /// Counter `i` (0…3) of `key`: a word and a nibble from independent bits of one mix per row.
    @inline(__always) private func counter(_ key: BlockKey, _ i: Int) -> (word: Int, shift: UInt64) {
        let h = BlockKey.mix(key.rawValue &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15)
        return (Int(truncatingIfNeeded: h) & (table.count - 1), (h >> 60) << 2)
    }

    /// The smallest of the key's four counters.
    func estimate(_ key: BlockKey) -> UInt32 {
        var m: UInt64 = 15
        for i in 0..<4 {
            let (w, s) = counter(key, i)
            m = min(m, (table[w] >> s) & 0xF)
        }
        return UInt32(m)
    }

    /// Adds one occurrence; halves every counter after `sampleSize` additions.
    mutating func increment(_ key: BlockKey) {
        var added = false
        for i in 0..<4 {
            let (w, s) = counter(key, i)
            if (table[w] >> s) & 0xF < 15 {
                table[w] &+= 1 << s
                added = true
            }
        }
        guard added else { return }
        additions += 1
        if additions >= sampleSize {
            for w in table.indices { table[w] = (table[w] >> 1) & 0x7777_7777_7777_7777 }
            additions /= 2
        }
    }

    var storageBytes: Int { table.capacity * 8 }
}
