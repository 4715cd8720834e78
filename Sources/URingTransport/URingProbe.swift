#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import CURing
import MemWallCore
import Transport

/// What io_uring can do on this host, found by setting up a real ring.
public struct URingProbe: Sendable, Codable, Hashable {
    /// `io_uring_queue_init` succeeded.
    public var setupWorks: Bool
    /// Why it did not (seccomp, ENOSYS, memlock), when it did not.
    public var setupError: String?
    /// Opcodes the kernel says it supports, by their `IORING_OP_` names, among those MemWall uses.
    public var supportedOpcodes: [String]
    /// Opcodes MemWall uses that the kernel lacks.
    public var missingOpcodes: [String]
    /// Registering a 1 MiB fixed buffer succeeded.
    public var registeredBuffersWork: Bool
    /// Why registration failed, when it did.
    public var registeredBuffersError: String?
    /// RLIMIT_MEMLOCK soft limit in bytes; `nil` when unlimited.
    public var memlockLimitBytes: UInt64?

    /// The opcodes MemWall's storage path needs, or falls back without.
    static let interesting: [(String, io_uring_op)] = [
        ("READ", IORING_OP_READ), ("WRITE", IORING_OP_WRITE),
        ("READ_FIXED", IORING_OP_READ_FIXED), ("WRITE_FIXED", IORING_OP_WRITE_FIXED),
        ("READV", IORING_OP_READV), ("WRITEV", IORING_OP_WRITEV),
        ("FSYNC", IORING_OP_FSYNC), ("ASYNC_CANCEL", IORING_OP_ASYNC_CANCEL),
        ("NOP", IORING_OP_NOP),
    ]

    /// Sets up a small ring, reads its opcode probe, and tries a buffer registration.
    public static func probe() -> URingProbe {
        var limit = rlimit()
        var memlock: UInt64?
        if getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max {
            memlock = UInt64(limit.rlim_cur)
        }
        var ring = io_uring()
        let r = io_uring_queue_init(8, &ring, 0)
        guard r == 0 else {
            let e = Errno(rawValue: -r)
            return URingProbe(setupWorks: false,
                              setupError: "io_uring_queue_init: \(e); a pread/pwrite thread pool will be used",
                              supportedOpcodes: [], missingOpcodes: interesting.map(\.0),
                              registeredBuffersWork: false, registeredBuffersError: nil,
                              memlockLimitBytes: memlock)
        }
        defer { io_uring_queue_exit(&ring) }
        var supported: [String] = []
        var missing: [String] = []
        if let probe = io_uring_get_probe_ring(&ring) {
            for (name, op) in interesting {
                if io_uring_opcode_supported(probe, Int32(op.rawValue)) != 0 { supported.append(name) } else { missing.append(name) }
            }
            io_uring_free_probe(probe)
        } else {
            missing = interesting.map(\.0)
        }
        var regError: String?
        let size = 1 << 20
        if let buf = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), buf != MAP_FAILED {
            var iov = iovec(iov_base: buf, iov_len: size)
            let rr = io_uring_register_buffers(&ring, &iov, 1)
            if rr == 0 {
                io_uring_unregister_buffers(&ring)
            } else {
                let e = Errno(rawValue: -rr)
                regError = "io_uring_register_buffers: \(e)"
                    + (e == .noMemory || e == .notPermitted ? "; raise `ulimit -l` (now \(memlock.map { ByteCount(Int($0)).description } ?? "unlimited"))" : "")
            }
            munmap(buf, size)
        } else {
            regError = "mmap: \(Errno.current)"
        }
        return URingProbe(setupWorks: true, setupError: nil, supportedOpcodes: supported,
                          missingOpcodes: missing, registeredBuffersWork: regError == nil,
                          registeredBuffersError: regError, memlockLimitBytes: memlock)
    }
}

/// Whether O_DIRECT really works in a directory: a file is created, a pattern
/// written with O_DIRECT, read back and compared, and the file removed.
public struct DirectIOProbe: Sendable, Codable, Hashable {
    /// The directory tested.
    public var directory: String
    /// Opening with O_DIRECT succeeded and the pattern round-tripped.
    public var works: Bool
    /// Why not, when not (e.g. tmpfs refuses O_DIRECT with EINVAL).
    public var reason: String?
    /// Filesystem type name when known (ext4, xfs, tmpfs, overlay, …).
    public var filesystem: String

    /// Runs the check.
    /// - Throws: `notFound` when `directory` does not exist, `invalidArgument`
    ///   when it is not a directory or not writable: bad input, not a probe result.
    public static func probe(directory: String) throws(MemWallError) -> DirectIOProbe {
        var st = stat()
        guard stat(directory, &st) == 0 else {
            throw MemWallError(.notFound, "--dir '\(directory)' does not exist; give an existing, writable directory",
                               function: "stat", errno: .current)
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw .invalid("--dir", directory, expected: "a directory (it is a file)")
        }
        guard access(directory, W_OK) == 0 else {
            throw MemWallError(.invalidArgument, "--dir '\(directory)' is not writable by this user; give a writable directory",
                               function: "access", errno: .current)
        }
        let path = directory + "/.memwall-odirect-probe-\(getpid())"
        defer { unlink(path) }
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | memwall_o_direct(), 0o600)
        if fd < 0 {
            let e = Errno.current
            let plain = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            let fs = plain >= 0 ? filesystemName(plain) : "unknown"
            if plain >= 0 { close(plain) }
            return DirectIOProbe(directory: directory, works: false,
                                 reason: "open(O_DIRECT): \(e); the page cache will be used there", filesystem: fs)
        }
        defer { close(fd) }
        let fs = filesystemName(fd)
        let size = 4096
        guard let buf = mmap(nil, size * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), buf != MAP_FAILED else {
            return DirectIOProbe(directory: directory, works: false, reason: "mmap: \(Errno.current)", filesystem: fs)
        }
        defer { munmap(buf, size * 2) }
        let pattern = buf.assumingMemoryBound(to: UInt8.self)
        for i in 0..<size { pattern[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        if case .failure(let e) = SyscallFunnel.system.pwriteFully(fd, buf, size, 0) {
            return DirectIOProbe(directory: directory, works: false, reason: "pwrite(O_DIRECT): \(e)", filesystem: fs)
        }
        switch SyscallFunnel.system.preadFully(fd, buf + size, size, 0) {
        case .failure(let e):
            return DirectIOProbe(directory: directory, works: false, reason: "pread(O_DIRECT): \(e)", filesystem: fs)
        case .success(let n) where n != size:
            return DirectIOProbe(directory: directory, works: false, reason: "pread(O_DIRECT) returned \(n) of \(size) bytes", filesystem: fs)
        case .success:
            break
        }
        guard memcmp(buf, buf + size, size) == 0 else {
            return DirectIOProbe(directory: directory, works: false, reason: "data read back with O_DIRECT differs from what was written", filesystem: fs)
        }
        return DirectIOProbe(directory: directory, works: true, reason: nil, filesystem: fs)
    }

    /// Maps statfs magic numbers of common filesystems to names.
    static func filesystemName(_ fd: Int32) -> String {
        var magic: Int64 = 0
        guard memwall_filesystem_magic(fd, &magic) == 0 else { return "unknown" }
        let names: [Int64: String] = [
            0xEF53: "ext4", 0x5846_5342: "xfs", 0x0102_1994: "tmpfs", 0x794C_7630: "overlay",
            0x9123_683E: "btrfs", 0x6969: "nfs", 0x2FC1_2FC1: "zfs", 0x0102_1997: "9p",
            0x6573_5546: "fuse", 0xF2F5_2010: "f2fs", 0x6264_6576: "devtmpfs", 0x6A65_6A65: "virtiofs",
        ]
        return names[magic] ?? "0x" + String(magic, radix: 16)
    }
}
