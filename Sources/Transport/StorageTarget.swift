#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import MemWallCore
import Synchronization

/// How a ``StorageTarget`` reaches its bytes.
public enum StorageAccessMode: String, Sendable, Hashable, Codable {
    /// O_DIRECT: straight between the device and registered memory, no page cache.
    case direct
    /// Through the page cache, because the filesystem refused O_DIRECT
    /// (tmpfs, overlayfs). Labelled in every output that shows it.
    case bufferedFallback = "buffered (O_DIRECT refused)"
}

/// A file or block device opened once for transfers; owns its descriptor.
///
/// It prefers O_DIRECT and falls back to buffered I/O only when the filesystem
/// refuses it, saying so in ``accessMode`` and ``fallbackReason``. It follows
/// the file rules of ``ExistingFileUse``: a file it creates is private (0600,
/// `O_EXCL|O_NOFOLLOW`) and removed when the target goes, at exit and on
/// SIGINT/SIGTERM/SIGHUP; an existing one is used only as allowed; every one
/// is locked (`flock`) while the target lives, and a second user is refused
/// with the holder's pid.
public final class StorageTarget: Sendable, CustomStringConvertible {
    /// Path as given.
    public let path: String
    /// The open file descriptor, valid for this object's lifetime.
    public let fileDescriptor: Int32
    /// Size in bytes (file length, or device capacity).
    public let byteCount: Int64
    /// Offsets, lengths and buffer addresses must be multiples of this under O_DIRECT.
    public let alignment: Int
    /// Direct or buffered.
    public let accessMode: StorageAccessMode
    /// Why O_DIRECT was not used, when it was not.
    public let fallbackReason: String?
    /// True for a block device (e.g. /dev/nvme0n1).
    public let isBlockDevice: Bool
    /// True when this target created the file; it is then removed when the target goes.
    public let createdFile: Bool
    /// False when opened read-only (``ExistingFileUse/read``).
    public let isWritable: Bool
    private let cleanupSlot: Int32?
    /// What holders of this file's descriptor (a ring's fixed-file slot) run as
    /// the target goes, so they let the file go with it rather than later.
    private let closeHooks = Mutex<[@Sendable () -> Void]>([])
    /// The first descriptor: it holds the lock (and the removal registration);
    /// the same as ``fileDescriptor`` when O_DIRECT was refused.
    private let lockDescriptor: Int32

    /// Opens `path`, creating it when it does not exist and `createWithSize` is given.
    /// - Parameters:
    ///   - path: A regular file or a block device.
    ///   - createWithSize: Create a regular file of this many bytes when `path`
    ///     does not exist (or extend a writable existing one to it).
    ///   - existing: What may be done with a path that exists; by default it is refused.
    ///   - requireDirect: Fail instead of falling back to buffered I/O.
    ///   - waitForLock: Wait while another user (another process, or another
    ///     target in this one) holds an existing file, instead of failing with
    ///     `busy` after a brief retry.
    ///   - funnel: System-call door (tests inject faults here: "openat(O_CREAT)" for a
    ///     created file, "open" for the O_DIRECT open, "ftruncate").
    /// - Throws: `alreadyExists` for an existing path that may not be used,
    ///   `busy` naming the process that holds its lock, `notFound` (naming a
    ///   missing directory when that is the cause), `systemCall`, or
    ///   `unsupported` when O_DIRECT is required but refused.
    public convenience init(path: String, createWithSize: Int64? = nil, existing: ExistingFileUse = .refuse,
                            requireDirect: Bool = false, waitForLock: Bool = false,
                            funnel: SyscallFunnel = .system) throws(MemWallError) {
        let opened = try BackingFile.open(path, create: createWithSize != nil, existing: existing,
                                          waitForLock: waitForLock, funnel: funnel)
        try self.init(path: path, opened: opened, size: createWithSize, writable: existing != .read || opened.created,
                      requireDirect: requireDirect, funnel: funnel)
    }

    /// Creates a private scratch file in `directory` (an unpredictable name
    /// starting with `prefix`), removed when the target goes, at exit and on
    /// SIGINT/SIGTERM/SIGHUP.
    /// - Throws: `notFound` naming the directory when it does not exist; as ``init(path:createWithSize:existing:requireDirect:funnel:)``.
    public static func scratch(in directory: String, prefix: String, byteCount: Int64, requireDirect: Bool = false,
                               funnel: SyscallFunnel = .system) throws(MemWallError) -> StorageTarget {
        let (path, opened) = try BackingFile.createScratch(in: directory, prefix: prefix, funnel: funnel)
        return try StorageTarget(path: path, opened: opened, size: byteCount, writable: true,
                                 requireDirect: requireDirect, funnel: funnel)
    }

    private init(path: String, opened: BackingFile.Opened, size want: Int64?, writable: Bool,
                 requireDirect: Bool, funnel: SyscallFunnel) throws(MemWallError) {
        self.path = path
        let fd = opened.fd
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = Errno.current
            BackingFile.release(opened)
            throw .system("fstat", e, "cannot stat '\(path)'")
        }
        let isBlock = (st.st_mode & S_IFMT) == S_IFBLK
        var size: Int64
        var align = 4096
        if isBlock {
            var bytes: UInt64 = 0
            var sector: Int32 = 512
            if memwall_block_device_size(fd, &bytes) != 0 {
                let e = Errno.current
                BackingFile.release(opened)
                throw .system("ioctl(BLKGETSIZE64)", e, "cannot read the size of block device '\(path)'")
            }
            _ = memwall_block_device_logical_sector(fd, &sector)
            size = Int64(bytes)
            align = Int(max(sector, 512))
        } else {
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                BackingFile.release(opened)
                throw .invalid("storage path", path, expected: "a regular file or a block device")
            }
            size = Int64(st.st_size)
            if let want, want > size, writable {
                if case .failure(let e) = funnel.ftruncate(fd, want) {
                    BackingFile.release(opened)
                    throw .system("ftruncate", e, "cannot size '\(path)' to \(ByteCount(Int(want)))")
                }
                size = want
            }
        }
        // O_DIRECT is asked for by a second open of the same file (fcntl's
        // F_SETFL is not checked the way open is: tmpfs on Linux 6.1 accepts it
        // and then fails every read). The first descriptor keeps the lock and,
        // for a created file, was made O_EXCL, so a refusal leaves no stray file;
        // the second must be the same inode, or the name was swapped meanwhile.
        var mode = StorageAccessMode.direct
        var reason: String?
        var ioFD = fd
        let reopen = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | memwall_o_direct() | (opened.created ? O_NOFOLLOW : 0)
        switch funnel.open(path, reopen) {
        case .success(let f):
            guard let id = FileIdentity(descriptor: f), id == FileIdentity(descriptor: fd) else {
                close(f)
                BackingFile.release(opened)
                throw MemWallError(.alreadyExists, "'\(path)' was replaced while it was being opened; nothing was written to it")
            }
            ioFD = f
        case .failure(let e) where e == .invalidArgument:
            if requireDirect {
                BackingFile.release(opened)
                throw MemWallError(.unsupported,
                    "the filesystem holding '\(path)' refuses O_DIRECT; use a block device or a filesystem such as ext4/xfs",
                    function: "open", errno: e)
            }
            reason = "the filesystem holding '\(path)' refuses O_DIRECT (\(e.name)); using the page cache"
            mode = .bufferedFallback
        case .failure(let e):
            BackingFile.release(opened)
            throw .system("open", e, "cannot open '\(path)' with O_DIRECT")
        }
        self.lockDescriptor = fd
        self.fileDescriptor = ioFD
        self.byteCount = size
        self.alignment = mode == .direct ? align : 1
        self.accessMode = mode
        self.fallbackReason = reason
        self.isBlockDevice = isBlock
        self.createdFile = opened.created
        self.isWritable = writable
        self.cleanupSlot = opened.cleanupSlot
    }

    /// Runs `body` when this target goes, before its descriptors are closed.
    /// Whoever registered the descriptor with the kernel (an io_uring fixed
    /// file) drops that registration here, so the file is not held open by
    /// the ring after the target is gone. `body` must not touch the target.
    package func onClose(_ body: @escaping @Sendable () -> Void) {
        closeHooks.withLock { $0.append(body) }
    }

    deinit {
        for hook in closeHooks.withLock({ $0 }) { hook() }
        if fileDescriptor != lockDescriptor { close(fileDescriptor) }
        BackingFile.release(BackingFile.Opened(fd: lockDescriptor, created: createdFile, cleanupSlot: cleanupSlot))
    }

    /// Whether both targets are the same file or device (one inode), however
    /// they were named; tiers and targets that must not overlap are checked with it.
    public func isSameFile(as other: StorageTarget) -> Bool {
        guard let a = FileIdentity(descriptor: fileDescriptor) else { return false }
        return a == FileIdentity(descriptor: other.fileDescriptor)
    }

    /// Checks O_DIRECT's alignment rule for one descriptor.
    /// - Throws: `misaligned` naming the value and the required multiple.
    public func checkAlignment(bufferAddress: UnsafeRawPointer, offset: Int64, length: Int) throws(MemWallError) {
        guard accessMode == .direct else { return }
        let a = alignment
        if Int(bitPattern: bufferAddress) % a != 0 {
            throw MemWallError(.misaligned,
                "buffer address \(bufferAddress) is not a multiple of \(a) bytes, which O_DIRECT on '\(path)' requires")
        }
        if offset % Int64(a) != 0 {
            throw MemWallError(.misaligned,
                "file offset \(offset) is not a multiple of \(a) bytes, which O_DIRECT on '\(path)' requires")
        }
        if length % a != 0 {
            throw MemWallError(.misaligned,
                "length \(length) is not a multiple of \(a) bytes, which O_DIRECT on '\(path)' requires")
        }
    }

    /// `"/dev/nvme0n1 (1 GiB, direct)"`.
    public var description: String {
        "\(path) (\(ByteCount(Int(byteCount))), \(accessMode.rawValue))"
    }
}
