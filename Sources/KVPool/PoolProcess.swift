#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

/// A process as the pool's process table records it: its pid and the time it
/// started (field 22 of `/proc/PID/stat`, clock ticks after boot). The pair
/// names one process for the machine's uptime: a pid the kernel hands out again
/// comes with another start time.
struct PoolProcessIdentity: Sendable, Hashable {
    var pid: Int32
    var startTime: UInt64

    /// What the pool needs to know about a recorded process.
    enum Liveness: Sendable, Hashable {
        /// It runs (or cannot be inspected, e.g. another user's process: assumed alive).
        case alive
        /// It exited, was killed, is a zombie, or its pid now belongs to another process.
        case dead
    }

    /// This process, or nil when procfs cannot say (no /proc: a pool cannot be used safely).
    static func current() -> PoolProcessIdentity? {
        let pid = getpid()
        guard let s = procStat(of: pid) else { return nil }
        return PoolProcessIdentity(pid: pid, startTime: s.startTime)
    }

    /// Whether the process this record names still runs.
    ///
    /// `kill(pid, 0)` failing with ESRCH means gone; a zombie (killed but not
    /// yet reaped by its parent) holds nothing any more and counts as dead; a
    /// start time that differs means the pid was reused.
    var liveness: Liveness {
        if pid <= 0 { return .dead }
        if kill(pid, 0) != 0 && Errno.current.rawValue == ESRCH { return .dead }
        guard let s = PoolProcessIdentity.procStat(of: pid) else {
            // Vanished between the two calls, or /proc hides it: the kill answer decides.
            return kill(pid, 0) != 0 && Errno.current.rawValue == ESRCH ? .dead : .alive
        }
        if s.state == UInt8(ascii: "Z") || s.state == UInt8(ascii: "X") || s.startTime != startTime { return .dead }
        return .alive
    }

    /// State letter and start time from `/proc/PID/stat` (bounded read; the
    /// command name may hold spaces and parentheses, so fields are counted after
    /// its last ')').
    static func procStat(of pid: Int32) -> (state: UInt8, startTime: UInt64)? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = buffer.withUnsafeMutableBytes { b in b.baseAddress.map { SyscallFunnel.system.read(fd, $0, b.count) } ?? .success(0) }
        guard case .success(let count) = n, count > 0 else { return nil }
        let bytes = buffer[0..<count]
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
        // Field 3 (state) is the first after the name; field 22 (starttime) the 20th.
        guard fields.count >= 20, let state = fields[0].first,
              let start = UInt64(String(decoding: fields[19], as: UTF8.self)) else { return nil }
        return (state, start)
    }

    /// Identity of this process's pid namespace (the inode of `/proc/self/ns/pid`);
    /// 0 when it cannot be read. Pids recorded in a pool mean something only to
    /// processes in the same namespace.
    static func pidNamespace() -> UInt64 {
        var st = Glibc.stat()
        guard fstatat(AT_FDCWD, "/proc/self/ns/pid", &st, 0) == 0 else { return 0 }
        return UInt64(st.st_ino)
    }
}
