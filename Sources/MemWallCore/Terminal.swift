#if canImport(Glibc)
import Glibc
#endif

/// Writes to standard error through fd 2 (the `stderr` global is not
/// concurrency-safe in Swift 6), used for progress and diagnostics so that
/// standard output stays clean for `--json`.
public enum StandardError {
    /// Writes `text` as-is.
    public static func write(_ text: String) {
        var t = text
        t.withUTF8 { buf in
            guard let base = buf.baseAddress else { return }
            var off = 0
            while off < buf.count {
                let n = Glibc.write(2, base + off, buf.count - off)
                if n <= 0 { return }
                off += n
            }
        }
    }

    /// Whether standard error is a terminal (progress then redraws one line).
    public static var isTerminal: Bool { isatty(2) == 1 }
}

/// A progress line on standard error for long runs: redrawn in place on a
/// terminal, printed every few seconds otherwise (CI logs stay readable).
public struct ProgressReporter: Sendable {
    private let label: String
    private let total: Int
    private var lastPrint: UInt64 = 0
    private let interval: UInt64
    private let enabled: Bool
    private var finished = false

    /// - Parameters:
    ///   - label: What is being done, e.g. "bench storage".
    ///   - total: Number of steps.
    ///   - enabled: Off for `--quiet` and for JSON-only runs that want silence.
    public init(_ label: String, total: Int, enabled: Bool = true) {
        self.label = label
        self.total = Swift.max(total, 1)
        self.enabled = enabled
        self.interval = StandardError.isTerminal ? 100_000_000 : 5_000_000_000
    }

    /// Reports that `done` of `total` steps are finished, with a short note.
    public mutating func update(_ done: Int, _ note: String = "") {
        guard enabled, !finished else { return }
        let now = MonotonicClock.nanoseconds()
        guard done >= total || now &- lastPrint >= interval else { return }
        lastPrint = now
        finished = done >= total
        let pct = done * 100 / total
        let line = "[\(label)] \(done)/\(total) (\(pct)%) \(note)"
        if StandardError.isTerminal {
            StandardError.write("\r\u{1B}[K" + line + (done >= total ? "\n" : ""))
        } else {
            StandardError.write(line + "\n")
        }
    }
}
