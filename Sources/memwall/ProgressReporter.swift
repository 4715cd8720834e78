import MemWallCore

/// A progress line on standard error for long runs: redrawn in place on a
/// terminal, printed every few seconds otherwise (CI logs stay readable).
struct ProgressReporter: Sendable {
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
    init(_ label: String, total: Int, enabled: Bool = true) {
        self.label = label
        self.total = Swift.max(total, 1)
        self.enabled = enabled
        self.interval = StandardError.isTerminal ? 100_000_000 : 5_000_000_000
    }

    /// Reports that `done` of `total` steps are finished, with a short note.
    mutating func update(_ done: Int, _ note: String = "") {
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
