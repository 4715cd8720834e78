#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import MemWallCore

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
/// refuses it, saying so in ``accessMode`` and ``fallbackReason``.
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

    /// Opens `path` for reading and writing.
    /// - Parameters:
    ///   - path: A regular file or a block device.
    ///   - createWithSize: Create (or extend) a regular file to this many bytes.
    ///   - requireDirect: Fail instead of falling back to buffered I/O.
    ///   - funnel: System-call door (tests inject faults here).
    /// - Throws: `notFound`, `systemCall`, or `unsupported` when O_DIRECT is required but refused.
    public init(path: String, createWithSize: Int64? = nil, requireDirect: Bool = false,
                funnel: SyscallFunnel = .system) throws(MemWallError) {
        self.path = path
        var flags = O_RDWR | O_CLOEXEC
        if createWithSize != nil { flags |= O_CREAT }
        // Linux creates the file before it checks O_DIRECT support, so a refused
        // open can leave an empty file; remember whether it is ours to remove.
        let existedBefore = access(path, F_OK) == 0
        var fd: Int32
        var mode = StorageAccessMode.direct
        var reason: String?
        switch funnel.open(path, flags | memwall_o_direct()) {
        case .success(let f):
            fd = f
        case .failure(let e) where e == .invalidArgument:
            if requireDirect {
                if createWithSize != nil && !existedBefore { unlink(path) }
                throw MemWallError(.unsupported,
                    "the filesystem holding '\(path)' refuses O_DIRECT; use a block device or a filesystem such as ext4/xfs",
                    function: "open", errno: e)
            }
            reason = "the filesystem holding '\(path)' refuses O_DIRECT (\(e.name)); using the page cache"
            mode = .bufferedFallback
            switch funnel.open(path, flags) {
            case .success(let f): fd = f
            case .failure(let e): throw StorageTarget.openError(path, e)
            }
        case .failure(let e):
            throw StorageTarget.openError(path, e)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = Errno.current
            close(fd)
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
                close(fd)
                throw .system("ioctl(BLKGETSIZE64)", e, "cannot read the size of block device '\(path)'")
            }
            _ = memwall_block_device_logical_sector(fd, &sector)
            size = Int64(bytes)
            align = Int(max(sector, 512))
        } else {
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                close(fd)
                throw .invalid("storage path", path, expected: "a regular file or a block device")
            }
            size = Int64(st.st_size)
            if let want = createWithSize, want > size {
                if case .failure(let e) = funnel.ftruncate(fd, want) {
                    close(fd)
                    throw .system("ftruncate", e, "cannot size '\(path)' to \(ByteCount(Int(want)))")
                }
                size = want
            }
        }
        self.fileDescriptor = fd
        self.byteCount = size
        self.alignment = mode == .direct ? align : 1
        self.accessMode = mode
        self.fallbackReason = reason
        self.isBlockDevice = isBlock
    }

    private static func openError(_ path: String, _ e: Errno) -> MemWallError {
        if e == .noEntry {
            return MemWallError(.notFound, "'\(path)' does not exist", function: "open", errno: e)
        }
        return .system("open", e, "cannot open '\(path)' for reading and writing")
    }

    deinit { close(fileDescriptor) }

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
