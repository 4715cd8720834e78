#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

/// A reference tool run beside a benchmark (fio), its output captured.
///
/// The child gets a fixed environment (`PATH` and `LC_ALL=C`, so numbers are
/// printed the way they are parsed), its output is read up to a bound, and a
/// child that outlives its deadline is killed: nothing the tool prints or
/// fails to do can make the benchmark wait or buffer without end.
enum ChildProcess {
    /// What the child did.
    struct Outcome {
        /// Exit status, or 128 + the signal that ended it.
        var status: Int32
        var standardOutput: String
        var standardError: String
        /// Output beyond ``outputLimit`` was dropped.
        var truncated: Bool
    }

    /// Bytes kept of each of standard output and standard error.
    static let outputLimit = 16 << 20

    /// Runs `executable` (looked up in `PATH`) with `arguments` and waits for it.
    /// - Parameter seconds: The child is killed (SIGKILL) when it runs longer.
    /// - Returns: `nil` when `executable` is not installed (not found in `PATH`).
    /// - Throws: `systemCall` when it cannot be started or waited for; `timedOut` when it was killed.
    static func run(_ executable: String, _ arguments: [String], seconds: Int) throws(MemWallError) -> Outcome? {
        try start(executable, arguments)?.finish(seconds: seconds)
    }

    /// A child started by ``start(_:_:inheritEnvironment:)`` and not yet waited for: several
    /// can run at once (`bench pool` starts its worker processes together).
    final class Running {
        let pid: pid_t
        let executable: String
        private let pipes: [Int32]
        private let started = MonotonicClock.nanoseconds()

        fileprivate init(pid: pid_t, executable: String, pipes: [Int32]) {
            self.pid = pid
            self.executable = executable
            self.pipes = pipes
        }

        /// Reads the child's output and waits for it; it is killed (SIGKILL) once it has run
        /// `seconds` since it started.
        /// - Throws: `systemCall` when it cannot be waited for; `timedOut` when it was killed.
        func finish(seconds: Int) throws(MemWallError) -> Outcome {
            let deadline = started + UInt64(seconds) * 1_000_000_000
            var captured: [[UInt8]] = [[], []]
            var truncated = false
            var open = pipes
            var killed = false
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while open.contains(where: { $0 >= 0 }) {
                let now = MonotonicClock.nanoseconds()
                if now >= deadline && !killed {
                    kill(pid, SIGKILL)
                    killed = true
                }
                var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                let waitMs = killed ? 1000 : Int32(min((deadline - min(now, deadline)) / 1_000_000 + 1, 1000))
                let n = poll(&fds, nfds_t(fds.count), waitMs)
                if n < 0 && Errno.current != .interrupted {
                    let e = Errno.current
                    for fd in open where fd >= 0 { close(fd) }
                    kill(pid, SIGKILL)
                    _ = ChildProcess.reap(pid)
                    throw .system("poll", e, "lost the output of \(executable)")
                }
                for k in 0..<2 where open[k] >= 0 && fds[k].revents != 0 {
                    let got = chunk.withUnsafeMutableBytes { read(open[k], $0.baseAddress, $0.count) }
                    if got > 0 {
                        let room = outputLimit - captured[k].count
                        if got > room { truncated = true }
                        captured[k].append(contentsOf: chunk[0..<min(got, max(room, 0))])
                    } else if got == 0 || (got < 0 && Errno.current != .interrupted && Errno.current != .wouldBlock) {
                        close(open[k])
                        open[k] = -1
                    }
                }
            }
            let status = ChildProcess.reap(pid)
            if killed {
                throw MemWallError(.timedOut, "\(executable) ran longer than \(seconds) s and was stopped")
            }
            return Outcome(status: status, standardOutput: String(decoding: captured[0], as: UTF8.self),
                           standardError: String(decoding: captured[1], as: UTF8.self), truncated: truncated)
        }
    }

    /// Starts `executable` (looked up in `PATH`; a path with a '/' is used as it is) with
    /// `arguments`, standard input from /dev/null and its output on pipes.
    /// - Parameter inheritEnvironment: Give the child this process's environment (memwall run
    ///   again, which must see the same settings) instead of the fixed `PATH` and `LC_ALL=C`.
    /// - Returns: `nil` when `executable` is not installed (not found in `PATH`).
    /// - Throws: `systemCall` when it cannot be started.
    static func start(_ executable: String, _ arguments: [String], inheritEnvironment: Bool = false) throws(MemWallError) -> Running? {
        // pipe2 needs _GNU_SOURCE; close-on-exec is set right after instead (the
        // pipes only have to stay out of this child's siblings, and the dup2 below
        // gives the child its own non-close-on-exec copies).
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard pipe(&outPipe) == 0 else { throw .system("pipe", .current, "cannot capture the output of \(executable)") }
        guard pipe(&errPipe) == 0 else {
            let e = Errno.current
            close(outPipe[0]); close(outPipe[1])
            throw .system("pipe", e, "cannot capture the output of \(executable)")
        }
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        let words = [executable] + arguments
        let environment = ["PATH=" + path, "LC_ALL=C"]
        var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) }; for p in envp { free(p) } }
        var pid: pid_t = 0
        let rc = inheritEnvironment ? posix_spawnp(&pid, executable, &actions, nil, &argv, environ)
                                    : posix_spawnp(&pid, executable, &actions, nil, &argv, &envp)
        close(outPipe[1]); close(errPipe[1])
        if rc != 0 {
            close(outPipe[0]); close(errPipe[0])
            if rc == ENOENT { return nil }
            throw .system("posix_spawnp", Errno(rawValue: rc), "cannot start \(executable)")
        }
        return Running(pid: pid, executable: executable, pipes: [outPipe[0], errPipe[0]])
    }

    /// Waits for `pid`: its exit status, or 128 + the signal that ended it.
    fileprivate static func reap(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard Errno.current == .interrupted else { return 127 }
        }
        let signal = status & 0x7F
        return signal != 0 ? 128 + signal : (status >> 8) & 0xFF
    }
}
