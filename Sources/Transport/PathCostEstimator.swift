import MemWallCore
import Synchronization

/// A path's observed cost: fixed latency plus bytes over bandwidth.
public struct PathEstimate: Sendable, Hashable {
    /// Exponentially weighted bandwidth of large transfers, bytes per second.
    public var bytesPerSecond: Double
    /// Exponentially weighted latency of small transfers, nanoseconds.
    public var latencyNanoseconds: Double
    /// Number of reports folded in.
    public var samples: Int

    /// Predicted time to move `bytes`, in nanoseconds.
    public func predictedNanoseconds(bytes: Int) -> Double {
        latencyNanoseconds + (bytesPerSecond > 0 ? Double(bytes) / bytesPerSecond * 1e9 : 0)
    }
}

/// EWMA bandwidth and latency per (target kind, operation), fed by every
/// finished request, read by the placement engine to price a move.
public final class PathCostEstimator: Sendable {
    /// Requests at or under this size update latency; larger ones update bandwidth.
    public static let smallTransferLimit = 64 * 1024
    /// Weight of the newest sample.
    public let alpha: Double
    /// One slot per (target kind, operation): indexed, not hashed, since every
    /// finished request updates it.
    private let table = Mutex<[PathEstimate?]>(Array(repeating: nil, count: LocationKind.allCases.count * 2))

    private static func slot(_ target: LocationKind, _ operation: TransferOperation) -> Int {
        let k = switch target { case .memory: 0; case .storage: 1; case .remote: 2 }
        return k * 2 + (operation == .read ? 0 : 1)
    }

    /// - Parameter alpha: Weight of each new sample, in (0, 1].
    public init(alpha: Double = 0.2) { self.alpha = min(max(alpha, 0.01), 1) }

    /// Folds in one finished request.
    public func record(target: LocationKind, operation: TransferOperation, report: TransferReport) {
        let key = Self.slot(target, operation)
        let ns = Double(max(report.nanoseconds, 1))
        table.withLock { t in
            var e = t[key] ?? PathEstimate(bytesPerSecond: 0, latencyNanoseconds: 0, samples: 0)
            if report.bytes <= PathCostEstimator.smallTransferLimit || e.samples == 0 {
                e.latencyNanoseconds = e.latencyNanoseconds == 0 ? ns : (1 - alpha) * e.latencyNanoseconds + alpha * ns
            }
            if report.bytes > PathCostEstimator.smallTransferLimit || e.bytesPerSecond == 0 {
                let bw = Double(report.bytes) * 1e9 / ns
                e.bytesPerSecond = e.bytesPerSecond == 0 ? bw : (1 - alpha) * e.bytesPerSecond + alpha * bw
            }
            e.samples += 1
            t[key] = e
        }
    }

    /// The current estimate, or `nil` before any request finished on that path.
    public func estimate(target: LocationKind, operation: TransferOperation) -> PathEstimate? {
        table.withLock { $0[Self.slot(target, operation)] }
    }
}
