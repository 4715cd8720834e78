/// The offline reference (Belady's MIN): evicts the block whose next use lies
/// farthest in the future. It reads the future from the trace, so it only runs
/// inside a replay (``TraceReplay``), never in a cache serving requests.
///
/// It runs in the same index as every online policy: hits are counted the way
/// the replay counts them (the leading cached blocks of each request), and the
/// structural rules still hold — it stays tail first. That costs it nothing:
/// a block's child is only ever used together with the block, so the child's
/// next use is never earlier than its parent's, and the farthest next use in
/// the cache is always held by a block without cached children.
///
/// "Now" is the index's clock: one tick per admission, so request *i* of the
/// trace is admitted at clock *i* + 1 (the replay admits each request exactly
/// once, in order; hints and prefetches do not tick the clock).
public struct BeladyPolicy: EvictionPolicy {
    private let uses: [UInt64: [Int32]]

    /// - Parameter requests: Every request's block keys, in admission order.
    public init(requests: [[BlockKey]]) {
        var u: [UInt64: [Int32]] = [:]
        for (i, keys) in requests.enumerated() {
            for k in keys { u[k.rawValue, default: []].append(Int32(truncatingIfNeeded: i)) }
        }
        uses = u
    }

    /// `"belady"`.
    public var name: String { "belady" }

    /// Farther next use → lower score; never used again → 0.
    private func score(_ key: BlockKey, clock: UInt64) -> UInt64 {
        guard let list = uses[key.rawValue] else { return 0 }
        let now = Int64(clock) - 1
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if Int64(list[mid]) <= now { lo = mid + 1 } else { hi = mid }
        }
        guard lo < list.count else { return 0 }
        return UInt64(Int32.max - list[lo])
    }

    /// By next use.
    public mutating func scoreForNewBlock(key: BlockKey, clock: UInt64) -> (score: UInt64, hits: UInt32) {
        (score(key, clock: clock), 0)
    }
    /// By next use.
    public mutating func scoreForHit(key: BlockKey, hits: UInt32, clock: UInt64) -> UInt64 { score(key, clock: clock) }
    /// Nothing to remember.
    public mutating func didDrop(key: BlockKey, score: UInt64, hits: UInt32) {}
    /// The future is not metadata a cache would hold; reported as 0 so budgets
    /// compare only online policies (the replay's resident growth shows it).
    public var storageBytes: Int { 0 }
}
