/// Records latencies (nanoseconds) and answers percentiles, the way fio and
/// perftest report them (p50, p99, p99.9, max).
///
/// Buckets are logarithmic with 64 sub-buckets per power of two (error < 1.6 %),
/// so recording is O(1) and memory is fixed whatever the run length.
public struct LatencyHistogram: Sendable {
    private static let subBits = 6
    private static let subCount = 1 << subBits
    private var counts: [UInt64]
    /// Number of samples recorded.
    public private(set) var count: UInt64 = 0
    /// Smallest sample, in nanoseconds.
    public private(set) var min: UInt64 = .max
    /// Largest sample, in nanoseconds.
    public private(set) var max: UInt64 = 0
    private var sum: Double = 0

    /// An empty histogram.
    public init() { counts = Array(repeating: 0, count: 64 * LatencyHistogram.subCount) }

    @inline(__always)
    private static func bucket(_ v: UInt64) -> Int {
        if v < UInt64(subCount) { return Int(v) }
        let msb = 63 - v.leadingZeroBitCount
        let shift = msb - subBits
        let sub = Int((v >> UInt64(shift)) & UInt64(subCount - 1))
        return (shift + 1) * subCount + sub
    }

    private static func lowerBound(_ b: Int) -> UInt64 {
        if b < subCount { return UInt64(b) }
        let shift = b / subCount - 1
        let sub = UInt64(b % subCount)
        return (UInt64(subCount) | sub) << UInt64(shift)
    }

    /// Adds one sample.
    @inline(__always)
    public mutating func record(_ nanoseconds: UInt64) {
        counts[LatencyHistogram.bucket(nanoseconds)] += 1
        count += 1
        sum += Double(nanoseconds)
        if nanoseconds < min { min = nanoseconds }
        if nanoseconds > max { max = nanoseconds }
    }

    /// Adds every sample of another histogram.
    public mutating func merge(_ other: LatencyHistogram) {
        for i in counts.indices { counts[i] += other.counts[i] }
        count += other.count
        sum += other.sum
        if other.count > 0 {
            min = Swift.min(min, other.min)
            max = Swift.max(max, other.max)
        }
    }

    /// Mean in nanoseconds (0 when empty).
    public var mean: Double { count == 0 ? 0 : sum / Double(count) }

    /// The value at percentile `p` (0...100), in nanoseconds; 0 when empty.
    public func percentile(_ p: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        if p >= 100 { return max }
        let rank = UInt64((p / 100 * Double(count)).rounded(.up))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() where c > 0 {
            seen += c
            if seen >= Swift.max(rank, 1) {
                return Swift.min(Swift.max(LatencyHistogram.lowerBound(i), min), max)
            }
        }
        return max
    }
}
