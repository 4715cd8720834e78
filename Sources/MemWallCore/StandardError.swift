#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Writes to standard error through fd 2 (the `stderr` global is not
/// concurrency-safe in Swift 6): the libraries' diagnostic path (what a
/// `deinit` could not free, a submit the kernel refused) and the CLI's
/// progress, so that standard output stays clean for `--json`.
package enum StandardError {
    /// Writes `text` as-is.
    package static func write(_ text: String) {
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
    package static var isTerminal: Bool { isatty(2) == 1 }

    private static let reported = Mutex<Set<String>>([])

    /// Says that a `deinit` (or a `close`) could not free a kernel or NIC
    /// resource — never silently. Each `what`/`function` pair is reported
    /// once per process, so a loop of failing frees does not flood the log.
    /// - Parameters:
    ///   - what: The resource ("an RDMA memory registration").
    ///   - function: The C call that refused.
    ///   - errno: What it said.
    package static func reportUnfreed(_ what: String, function: String, errno: Errno) {
        let key = what + "/" + function
        let first = reported.withLock { $0.insert(key).inserted }
        guard first else { return }
        write("memwall: could not free \(what) (\(function): \(errno)); it stays allocated until the process exits\n")
    }
}
