#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization
import Transport

/// Scratch files for storage tests: created in a directory, opened, and
/// unlinked at once so that nothing is left behind even if a test crashes.
enum ScratchFile {
    private static let counter = Atomic<Int>(0)

    /// A directory on a real disk where O_DIRECT works (tmpfs would refuse it).
    static var directory: String {
        ProcessInfo.environment("MEMWALL_TEST_DIR") ?? "/var/tmp"
    }

    /// Opens a fresh file of `byteCount` bytes and unlinks it.
    static func make(_ byteCount: Int, in dir: String = directory, requireDirect: Bool = false) throws(MemWallError) -> StorageTarget {
        let n = counter.wrappingAdd(1, ordering: .relaxed).oldValue
        let path = "\(dir)/memwall-test-\(getpid())-\(n).bin"
        let target = try StorageTarget(path: path, createWithSize: Int64(byteCount), requireDirect: requireDirect)
        unlink(path)
        return target
    }
}

enum ProcessInfo {
    static func environment(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        return String(cString: v)
    }
}
