#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import MemWallCore
import Synchronization

/// Where a ``MemoryRegion``'s pages are meant to live.
public struct MemoryPlacement: Sendable, Hashable, CustomStringConvertible {
    /// NUMA node the pages are bound to, or `nil` for "wherever the kernel puts them".
    public var node: Int?
    /// True when the region stands in for memory this host does not have (an
    /// emulated far-memory pool on a one-node machine). Shown wherever it prints.
    public var isEmulated: Bool
    /// Free-form label: "DRAM", "far memory (emulated)", "CXL node 1".
    public var label: String

    /// Creates a placement.
    public init(node: Int?, isEmulated: Bool = false, label: String) {
        self.node = node
        self.isEmulated = isEmulated
        self.label = label
    }

    /// Unbound host memory.
    public static let anyNode = MemoryPlacement(node: nil, label: "host memory")

    /// `"node 1 (CXL)"`, with "[emulated]" when it is emulation.
    public var description: String {
        let base = node.map { "node \($0) (\(label))" } ?? label
        return isEmulated ? base + " [emulated]" : base
    }
}

/// Stable identity of a registered region, used in descriptors, errors and JSON.
public struct RegionID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// Process-unique number.
    public let rawValue: UInt64
    /// Wraps a number.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `"region#7"`.
    public var description: String { "region#\(rawValue)" }

    private static let next = Atomic<UInt64>(1)
    /// A fresh, never reused identifier.
    public static func make() -> RegionID {
        RegionID(rawValue: next.wrappingAdd(1, ordering: .relaxed).oldValue)
    }
}

/// Page-aligned host memory owned by exactly one object.
///
/// The memory is released when the last reference goes away. Transports that
/// register it (io_uring fixed buffers, RDMA memory regions) and in-flight
/// requests hold references, so a buffer the kernel or NIC may still write can
/// never be freed underneath it — by construction, not by convention.
public final class MemoryRegion: Sendable, CustomStringConvertible {
    /// Process-unique identity.
    public let id: RegionID
    /// Length in bytes (a multiple of the page size).
    public let byteCount: Int
    /// Where the pages are meant to live. Changes only when a NUMA move
    /// migrates the pages (the address and length never change).
    public var placement: MemoryPlacement { placementState.withLock { $0 } }
    private let placementState: Mutex<MemoryPlacement>
    // The pointer is immutable and the memory's lifetime is this object's; access
    // to the bytes is synchronised by the transfer protocol (one writer per range).
    nonisolated(unsafe) private let base: UnsafeMutableRawPointer
    private let release: @Sendable (UnsafeMutableRawPointer, Int) -> Void
    /// The sealed memfd behind a region from ``allocateShared(byteCount:placement:)``
    /// (byte 0 of the region is byte 0 of the file), which another process with
    /// ptrace access may map (the intra-host path); nil for private memory.
    /// Open as long as this object lives.
    package let sharedFile: Int32?

    /// Adopts memory allocated elsewhere (NUMA allocator, shared mapping).
    /// - Parameters:
    ///   - release: Called exactly once, from `deinit`, to free the memory.
    public convenience init(adopting base: UnsafeMutableRawPointer, byteCount: Int, placement: MemoryPlacement,
                release: @escaping @Sendable (UnsafeMutableRawPointer, Int) -> Void) {
        self.init(adopting: base, byteCount: byteCount, placement: placement, sharedFile: nil, release: release)
    }

    private init(adopting base: UnsafeMutableRawPointer, byteCount: Int, placement: MemoryPlacement, sharedFile: Int32?,
                 release: @escaping @Sendable (UnsafeMutableRawPointer, Int) -> Void) {
        self.id = .make()
        self.base = base
        self.byteCount = byteCount
        self.placementState = Mutex(placement)
        self.sharedFile = sharedFile
        self.release = release
    }

    /// Allocates `byteCount` bytes (rounded up to whole pages) that other
    /// processes may map: a memfd sealed against shrinking and growing, mapped
    /// shared here. A remote transport's peer on this host then copies into and
    /// out of it with plain loads and stores instead of a system call per
    /// transfer (the intra-host path maps exports of such regions). Otherwise it
    /// behaves as ``allocate(byteCount:placement:transparentHugePages:)``.
    /// - Throws: ``MemWallError`` (`invalidArgument` for a size ≤ 0, `systemCall`
    ///   from `memfd_create`, `ftruncate`, `fcntl` or `mmap`).
    public static func allocateShared(byteCount: Int, placement: MemoryPlacement = .anyNode) throws(MemWallError) -> MemoryRegion {
        guard byteCount > 0 else {
            throw .invalid("region size", byteCount, expected: "a positive number of bytes")
        }
        let length = PageSize.roundUp(byteCount)
        let fd = memwall_shared_memory_create("memwall-region", UInt64(length))
        guard fd >= 0 else {
            throw .system("memfd_create", .current, "cannot create \(ByteCount(length)) of shareable memory")
        }
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = Errno.current
            close(fd)
            throw .system("mmap", e, "cannot map \(ByteCount(length)) of shareable memory")
        }
        return MemoryRegion(adopting: p, byteCount: length, placement: placement, sharedFile: fd) { ptr, len in
            munmap(ptr, len)
            close(fd)
        }
    }

    /// Records that the pages now live elsewhere (called by the NUMA transport
    /// after it migrated them in place).
    package func updatePlacement(_ newPlacement: MemoryPlacement) {
        placementState.withLock { $0 = newPlacement }
    }

    /// Allocates `byteCount` bytes (rounded up to whole pages) of anonymous,
    /// page-aligned memory, suitable for O_DIRECT and for registration.
    /// - Parameter transparentHugePages: Align the region to the huge-page size
    ///   (2 MiB on x86-64) and advise `MADV_HUGEPAGE` (advice only: a kernel
    ///   with THP off keeps 4 KiB pages). The kernel then pins, maps and copies
    ///   the region in huge pages — what `process_vm_readv`/`writev`, RDMA
    ///   registration and TLB-heavy copies gain most from (numpy advises the same
    ///   for its arrays of 4 MiB and more).
    /// - Throws: ``MemWallError`` (`invalidArgument` for a size ≤ 0, `systemCall` from `mmap`).
    public static func allocate(byteCount: Int, placement: MemoryPlacement = .anyNode,
                                transparentHugePages: Bool = false) throws(MemWallError) -> MemoryRegion {
        guard byteCount > 0 else {
            throw .invalid("region size", byteCount, expected: "a positive number of bytes")
        }
        let length = PageSize.roundUp(byteCount)
        let align = transparentHugePages ? PageSize.hugeBytes : 0
        // Over-map by one huge page, then give back what lies outside the aligned range.
        let p = mmap(nil, length + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw .system("mmap", .current, "cannot allocate \(ByteCount(length)) of host memory")
        }
        var base = p
        if align > 0 {
            let head = (align - Int(bitPattern: UInt(bitPattern: p)) % align) % align
            if head > 0 { munmap(p, head) }
            munmap(p + head + length, align - head)
            base = p + head
            _ = madvise(base, length, memwall_madv_hugepage())
        }
        return MemoryRegion(adopting: base, byteCount: length, placement: placement) { ptr, len in
            munmap(ptr, len)
        }
    }

    deinit { release(base, byteCount) }

    /// Base address, for transports that hand it to the kernel or a NIC. Valid
    /// as long as this object is alive.
    public var baseAddress: UnsafeMutableRawPointer { base }

    /// Checks that `offset ..< offset+length` lies inside the region.
    /// - Throws: `outOfBounds` naming the range and the region's size.
    public func checkBounds(offset: Int, length: Int) throws(MemWallError) {
        guard offset >= 0, length >= 0, offset <= byteCount, length <= byteCount - offset else {
            throw MemWallError(.outOfBounds,
                "range \(offset)..<\(offset &+ length) is outside \(id) of \(ByteCount(byteCount)); valid offsets are 0..<\(byteCount)")
        }
    }

    /// Read access to a range of the bytes.
    public func withUnsafeBytes<R, E: Error>(offset: Int = 0, length: Int? = nil,
                                             _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let len = length ?? (byteCount - offset)
        precondition(offset >= 0 && len >= 0 && offset + len <= byteCount, "range outside region")
        return try body(UnsafeRawBufferPointer(start: base + offset, count: len))
    }

    /// Write access to a range of the bytes.
    public func withUnsafeMutableBytes<R, E: Error>(offset: Int = 0, length: Int? = nil,
                                                    _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let len = length ?? (byteCount - offset)
        precondition(offset >= 0 && len >= 0 && offset + len <= byteCount, "range outside region")
        return try body(UnsafeMutableRawBufferPointer(start: base + offset, count: len))
    }

    /// `"region#3: 64 MiB on node 1 (CXL)"`.
    public var description: String { "\(id): \(ByteCount(byteCount)) on \(placement)" }
}

/// The system page size, read once.
public enum PageSize {
    /// Bytes per page (4096 on x86-64).
    public static let bytes: Int = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// `n` rounded up to a whole number of pages.
    public static func roundUp(_ n: Int) -> Int { (n + bytes - 1) / bytes * bytes }
    /// Bytes per transparent huge page (`/sys/kernel/mm/transparent_hugepage/hpage_pmd_size`;
    /// 2 MiB where the kernel does not say).
    public static let hugeBytes: Int = {
        let fd = open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 2 << 20 }
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: 32)
        let n = b.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0, let v = Int(String(decoding: b[0 ..< n], as: UTF8.self).filter(\.isNumber)),
              v >= bytes, v <= 1 << 30, v & (v - 1) == 0 else { return 2 << 20 }
        return v
    }()
}
