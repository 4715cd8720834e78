#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import MemWallCore

/// What a ``StorageTarget`` may do with a path that already exists. Nothing
/// existing is written unless the user said so (`--allow-write` in the CLI).
public enum ExistingFileUse: Sendable, Hashable {
    /// An existing path is refused: the target must be created by this run.
    case refuse
    /// An existing file or device is opened read-only (a shared lock).
    case read
    /// An existing file or device is opened for writing, destroying its
    /// contents (an exclusive lock); the user consented.
    case write
}

/// A file's device and inode: two paths or descriptors name one file when these are equal.
public struct FileIdentity: Hashable, Sendable {
    /// `st_dev`.
    public var device: UInt64
    /// `st_ino`.
    public var inode: UInt64

    /// The identity of the file `path` names (links followed); nil when it cannot be stat'ed.
    public init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        self.init(st)
    }

    /// The identity of the file open on `descriptor`; nil when fstat fails.
    public init?(descriptor: Int32) {
        var st = stat()
        guard fstat(descriptor, &st) == 0 else { return nil }
        self.init(st)
    }

    private init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

/// The file rules every file MemWall writes follows, in one place: new files
/// are created `O_EXCL|O_NOFOLLOW` with mode 0600 and registered for removal
/// (when their owner lets go, at exit, and on SIGINT/SIGTERM/SIGHUP, see
/// `CMemWallCleanup.h`); existing ones are opened only with consent; every
/// one is `flock`ed while used, and a conflicting lock names its holder.
/// Package-visible so the KV pool's shared segments follow the same rules.
package enum BackingFile {
    /// A file descriptor, whether this run created the file, and its removal slot.
    package struct Opened {
        package var fd: Int32
        package var created: Bool
        package var cleanupSlot: Int32?
    }

    /// Opens `path`: creates it when absent and `create` is true; otherwise
    /// opens it as `existing` allows. The result is locked.
    package static func open(_ path: String, create: Bool, existing: ExistingFileUse, waitForLock: Bool,
                             funnel: SyscallFunnel) throws(MemWallError) -> Opened {
        var st = stat()
        if lstat(path, &st) == 0 || Errno.current != .noEntry {
            return try openExisting(path, existing, waitForLock: waitForLock, funnel: funnel)
        }
        guard create else {
            try checkDirectory(of: path)
            throw MemWallError(.notFound, "'\(path)' does not exist", function: "open", errno: .noEntry)
        }
        let (dir, name) = split(path)
        return try createExclusive(directory: dir, name: name, displayPath: path, funnel: funnel)
    }

    /// Creates a file with a private, unpredictable name in `directory`.
    static func createScratch(in directory: String, prefix: String,
                              funnel: SyscallFunnel) throws(MemWallError) -> (path: String, opened: Opened) {
        var rng = SystemRandomNumberGenerator()
        // 64 random bits: a name nobody can plant in advance; retry on the rare collision.
        for _ in 0 ..< 8 {
            let name = "\(prefix)-\(getpid())-\(String(rng.next() as UInt64, radix: 36)).bin"
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            do throws(MemWallError) {
                return (path, try createExclusive(directory: directory, name: name, displayPath: path, funnel: funnel))
            } catch where error.errno == .exists {
                continue
            }
        }
        throw MemWallError(.alreadyExists, "could not find a free scratch file name in '\(directory)' after 8 tries")
    }

    /// `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600, relative to an open directory so
    /// that the name registered for removal is the one created.
    private static func createExclusive(directory: String, name: String, displayPath: String,
                                        funnel: SyscallFunnel) throws(MemWallError) -> Opened {
        let dirfd = Glibc.open(directory, memwall_o_path() | O_DIRECTORY | O_CLOEXEC)
        guard dirfd >= 0 else { throw directoryError(directory, .current) }
        let flags = O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        let fd: Int32
        switch funnel.call("openat(O_CREAT)", { Int(openat(dirfd, name, flags, 0o600)) }) {
        case .success(let f):
            fd = Int32(f)
        case .failure(let e):
            close(dirfd)
            if e == .exists {
                throw MemWallError(.alreadyExists,
                    "'\(displayPath)' appeared while it was being created (a file or a link someone else made); nothing was written to it",
                    function: "open", errno: e)
            }
            throw MemWallError(.systemCall, "cannot create '\(displayPath)'", function: "open", errno: e)
        }
        let slot = memwall_cleanup_register(dirfd, name, fd)
        if slot < 0 {
            let e = Errno.current
            unlinkat(dirfd, name, 0)
            close(dirfd)
            close(fd)
            throw .system("memwall_cleanup_register", e, "cannot register '\(displayPath)' for removal at exit")
        }
        let opened = Opened(fd: fd, created: true, cleanupSlot: slot)
        do throws(MemWallError) {
            try lock(fd, exclusive: true, path: displayPath)
        } catch {
            release(opened)
            throw error
        }
        return opened
    }

    private static func openExisting(_ path: String, _ use: ExistingFileUse, waitForLock: Bool,
                                     funnel: SyscallFunnel) throws(MemWallError) -> Opened {
        guard use != .refuse else {
            throw MemWallError(.alreadyExists,
                "'\(path)' exists and memwall writes only to files it creates; pass --allow-write to let this run overwrite it (its contents are destroyed)")
        }
        // The user named this path, so a link to a device (/dev/disk/by-id/…) is followed.
        let fd: Int32
        switch funnel.open(path, (use == .write ? O_RDWR : O_RDONLY) | O_CLOEXEC) {
        case .success(let f): fd = f
        case .failure(let e):
            if e == .noEntry { throw MemWallError(.notFound, "'\(path)' does not exist", function: "open", errno: e) }
            throw .system("open", e, "cannot open '\(path)' for \(use == .write ? "reading and writing" : "reading")")
        }
        do throws(MemWallError) {
            try lock(fd, exclusive: use == .write, path: path, wait: waitForLock)
        } catch {
            close(fd)
            throw error
        }
        return Opened(fd: fd, created: false, cleanupSlot: nil)
    }

    /// Opens an existing file that processes share (a KV pool segment), for
    /// reading and writing, without following a link, and locks it: shared
    /// (several processes attach at once) or, with `exclusive`, alone (its
    /// creator while it initializes, `destroy`). The file must be a regular
    /// file owned by this user: a name in a world-writable directory such as
    /// /dev/shm could have been planted by someone else.
    /// - Throws: `notFound`; `invalidArgument` for a link, a non-regular file
    ///   or another user's file; `busy` naming the holder of a conflicting lock.
    package static func openShared(_ path: String, exclusive: Bool, funnel: SyscallFunnel) throws(MemWallError) -> Opened {
        let fd: Int32
        switch funnel.open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC) {
        case .success(let f): fd = f
        case .failure(let e):
            if e == .noEntry { throw MemWallError(.notFound, "'\(path)' does not exist", function: "open", errno: e) }
            if e.rawValue == ELOOP {
                throw MemWallError(.invalidArgument, "'\(path)' is a symbolic link; a shared segment is never reached through one", function: "open", errno: e)
            }
            throw .system("open", e, "cannot open '\(path)' for reading and writing")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = Errno.current
            close(fd)
            throw .system("fstat", e, "cannot inspect '\(path)'")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == geteuid() else {
            close(fd)
            throw MemWallError(.invalidArgument,
                "'\(path)' is not a regular file owned by this user (uid \(geteuid())); it was not made by memwall for you, so it is left alone")
        }
        do throws(MemWallError) {
            try lock(fd, exclusive: exclusive, path: path)
        } catch {
            close(fd)
            throw error
        }
        return Opened(fd: fd, created: false, cleanupSlot: nil)
    }

    /// Keeps a file this run created after the run ends (a segment other
    /// processes attach to later): it is no longer removed at exit or on a signal.
    package static func keep(_ opened: inout Opened) {
        if let slot = opened.cleanupSlot { memwall_cleanup_forget(slot) }
        opened.cleanupSlot = nil
    }

    /// Removes a file this run created (if its name is still ours) and closes it.
    package static func release(_ opened: Opened) {
        // Removed while still open and locked, so no other run can take the name meanwhile.
        if let slot = opened.cleanupSlot { _ = memwall_cleanup_remove(slot) }
        close(opened.fd)
    }

    /// `flock(LOCK_NB)`: a file is used by one writing run at a time; a conflict
    /// names the holder.
    ///
    /// Why flock and /proc/locks rather than a pid written in a side file: the
    /// kernel drops the lock when its holder dies (no stale lock files to clean
    /// up), a second open of the same file in this process conflicts too (two
    /// tiers cannot share one file), and /proc/locks reports the holder's pid
    /// as the kernel sees it, with no extra file in the user's directory.
    ///
    /// Some holders are brief: udev locks a block device while it probes it
    /// (systemd's block-device locking rule), and an io_uring ring that had
    /// the file registered drops it a moment after the ring is closed. So a
    /// conflict is retried for up to ``lockPatience`` before it is an error;
    /// flock has no timed wait, hence the 10 ms polls.
    ///
    /// With `wait`, the caller queues for the file instead (the lab's test
    /// suites, which share one device and must not write it at the same time).
    package static func lock(_ fd: Int32, exclusive: Bool, path: String, wait: Bool = false) throws(MemWallError) {
        let deadline = MonotonicClock.nanoseconds() + lockPatience
        while flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB)) != 0 {
            let e = Errno.current
            if e == .interrupted { continue }
            if e == .wouldBlock && MonotonicClock.nanoseconds() < deadline {
                usleep(10_000)
                continue
            }
            if e == .wouldBlock {
                throw MemWallError(.busy, "'\(path)' is in use by \(holder(of: fd)); wait for it to finish or use another file",
                                   function: "flock", errno: e)
            }
            throw .system("flock", e, "cannot lock '\(path)'")
        }
    }

    /// How long a lock conflict may last before it is reported (2 s).
    static let lockPatience: UInt64 = 2_000_000_000

    /// "pid 1234 (memwall)", from the kernel's lock table.
    static func holder(of fd: Int32) -> String {
        var st = stat()
        guard fstat(fd, &st) == 0, let table = readSmallFile("/proc/locks") else {
            return "another process (its pid could not be read from /proc/locks)"
        }
        let dev = UInt64(st.st_dev)
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)
        let minor = (dev & 0xff) | ((dev >> 12) & ~0xff)
        let exactID = String(major, radix: 16) + ":" + String(minor, radix: 16) + ":" + String(UInt64(st.st_ino))
        var candidates: [(pid: Int32, exact: Bool)] = []
        for line in table.split(separator: "\n") {
            let f = line.split(separator: " ")
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters carry "->" after the number.
            guard f.count >= 6, f[1] == "FLOCK", let pid = Int32(f[4]) else { continue }
            let id = f[5].split(separator: ":")
            guard id.count == 3, UInt64(id[2]) == UInt64(st.st_ino) else { continue }
            let norm = String(UInt64(id[0], radix: 16) ?? .max, radix: 16) + ":" + String(UInt64(id[1], radix: 16) ?? .max, radix: 16) + ":" + id[2]
            candidates.append((pid, norm == exactID))
        }
        guard let best = candidates.first(where: \.exact) ?? candidates.first else {
            return "another process (not listed in /proc/locks)"
        }
        if best.pid == getpid() {
            return "this process (the same file is given twice: two tiers or targets cannot share a file)"
        }
        let comm = readSmallFile("/proc/\(best.pid)/comm")?.trimmingWhitespace() ?? "?"
        return "pid \(best.pid) (\(comm))"
    }

    /// Says what is wrong with the directory part of `path`, when something is.
    static func checkDirectory(of path: String) throws(MemWallError) {
        let dir = split(path).directory
        var st = stat()
        guard stat(dir, &st) == 0 else { throw directoryError(dir, .current) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw directoryError(dir, Errno(rawValue: ENOTDIR)) }
    }

    private static func directoryError(_ dir: String, _ e: Errno) -> MemWallError {
        if e == .noEntry {
            return MemWallError(.notFound, "directory '\(dir)' does not exist; create it or give another one", function: "open", errno: e)
        }
        if e.rawValue == ENOTDIR {
            return MemWallError(.invalidArgument, "invalid directory '\(dir)': expected a directory (it is a file)", function: "open", errno: e)
        }
        return .system("open", e, "cannot use directory '\(dir)'")
    }

    private static func split(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let dir = String(path[..<slash])
        return (dir.isEmpty ? "/" : dir, String(path[path.index(after: slash)...]))
    }

    /// The first 1 MiB of a small file (procfs), or nil.
    private static func readSmallFile(_ path: String) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        // The funnel resumes after EINTR; procfs files end with a read of 0.
        while bytes.count < 1 << 20,
              case .success(let n) = chunk.withUnsafeMutableBytes({ b in
                  b.baseAddress.map { SyscallFunnel.system.read(fd, $0, b.count) } ?? .success(0)
              }), n > 0 {
            bytes += chunk[0 ..< n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
