#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import KVPlacement
import MemWallCore
import NUMATransport
import Synchronization
import Transport

/// One pool segment mapped into this process: the shared file (or DAX
/// device) and the lock on it, the mapping, and the layout its header was
/// checked to describe.
///
/// File rules (``BackingFile``): a segment is created `O_EXCL|O_NOFOLLOW`,
/// mode 0600, and removed again if creation fails; attaching opens it without
/// following links, only when this user owns it, under a shared `flock`
/// (several processes at once); creation and `destroy` hold the lock
/// exclusively, so nobody attaches to a half-initialized segment and a segment
/// in use is not destroyed unless asked to.
final class PoolSegment: Sendable {
    /// The file under ``KVPool/directory``.
    let path: String
    /// The whole mapping (MAP_SHARED); unmapped when the last user lets go.
    let region: MemoryRegion
    let layout: PoolLayout
    /// NUMA node the pages were bound to at creation (nil: not bound), and whether it was emulated.
    let node: Int?
    let nodeIsEmulated: Bool
    /// The device-DAX device holding the segment (its name file under ``path`` points to it), or nil for tmpfs.
    let device: String?
    private let fd: Mutex<Int32>

    init(path: String, region: MemoryRegion, layout: PoolLayout, node: Int?, emulated: Bool, device: String? = nil, fd: Int32) {
        self.path = path
        self.region = region
        self.layout = layout
        self.node = node
        self.nodeIsEmulated = emulated
        self.device = device
        self.fd = Mutex(fd)
    }

    deinit { closeFile() }

    /// Closes the file, which drops this process's `flock` (the mapping stays until the object goes).
    func closeFile() {
        let f = fd.withLock { f -> Int32 in defer { f = -1 }; return f }
        if f >= 0 { close(f) }
    }

    var header: UnsafeMutablePointer<memwall_pool_header> {
        region.baseAddress.assumingMemoryBound(to: memwall_pool_header.self)
    }

    // MARK: Names

    /// Checks a pool name and gives its file: `DIRECTORY/memwall-pool-NAME`.
    /// - Throws: `invalidArgument` for an empty name, one longer than 64 bytes,
    ///   one starting with '.', or one with characters other than letters, digits, '.', '_' and '-'.
    static func path(forName name: String, directory: String) throws(MemWallError) -> String {
        guard KVPoolName.isValid(name) else {
            throw .invalid("pool name", name, expected: KVPoolName.rule)
        }
        return (directory.hasSuffix("/") ? directory : directory + "/") + "memwall-pool-" + name
    }

    // MARK: Create

    /// Creates, binds, faults in and initializes a segment; on return it is
    /// READY and held under a shared lock. On any failure the file is removed.
    static func create(path: String, segmentBytes: Int, blockBytes: Int, processSlots: Int,
                       node: Int?, allocator: NUMAAllocator) throws(MemWallError) -> PoolSegment {
        let layout = try PoolLayout.plan(segmentBytes: segmentBytes, blockBytes: blockBytes, processSlots: processSlots)
        var placement: NUMAAllocator.Node?
        if let node { placement = try allocator.node(node) }
        try checkRoom(path: path, bytes: segmentBytes)
        var opened = try BackingFile.open(path, create: true, existing: .refuse, waitForLock: false, funnel: .system)
        do throws(MemWallError) {
            if node != nil { try checkBindable(opened.fd, path: path) }
            try CCall.minusOne(ftruncate(opened.fd, off_t(segmentBytes)), "ftruncate", "cannot size '\(path)' to \(ByteCount(segmentBytes))")
            let region = try map(opened.fd, bytes: segmentBytes, path: path,
                                 placement: placement.map { nodePlacement($0.id, emulated: $0.isEmulated) } ?? .anyNode)
            try allocator.place(region, on: node)
            initialize(region, layout: layout, segmentBytes: segmentBytes, node: node, emulated: placement?.isEmulated ?? false)
            // The segment outlives this process from now on; attachers share the lock.
            BackingFile.keep(&opened)
            try BackingFile.lock(opened.fd, exclusive: false, path: path)
            return PoolSegment(path: path, region: region, layout: layout, node: node,
                               emulated: placement?.isEmulated ?? false, fd: opened.fd)
        } catch {
            BackingFile.release(opened)
            if error.code == .systemCall, error.function?.hasPrefix("madvise") == true {
                throw MemWallError(.noMemoryOnNode,
                    "could not fault in \(ByteCount(segmentBytes)) for pool '\(path)' (\(error.message)); a smaller --size, or more room in \(directory(of: path)), will do",
                    function: error.function, errno: error.errno)
            }
            throw error
        }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let d = String(path[..<slash])
        return d.isEmpty ? "/" : d
    }

    /// A tmpfs holds what its size limit allows; say so before creating rather than failing halfway.
    private static func checkRoom(path: String, bytes: Int) throws(MemWallError) {
        var st = statvfs()
        let dir = directory(of: path)
        guard statvfs(dir, &st) == 0 else {
            let e = Errno.current
            if e == .noEntry {
                throw MemWallError(.notFound, "directory '\(dir)' for pool segments does not exist (set MEMWALL_POOL_DIR to a tmpfs directory)", function: "statvfs", errno: e)
            }
            throw .system("statvfs", e, "cannot inspect '\(dir)'")
        }
        let free = Int(st.f_bavail) &* Int(st.f_frsize)
        guard free >= bytes else {
            throw MemWallError(.noMemoryOnNode, "'\(dir)' has \(ByteCount(free)) free; a pool of \(ByteCount(bytes)) does not fit (choose a smaller --size)")
        }
    }

    /// Only shared memory (tmpfs) pages follow a mapping's NUMA policy; a file
    /// on another filesystem would be placed by the page cache, not the binding.
    private static func checkBindable(_ fd: Int32, path: String) throws(MemWallError) {
        var magic: Int64 = 0
        try CCall.minusOne(memwall_filesystem_magic(fd, &magic), "fstatfs", "cannot inspect the filesystem of '\(path)'")
        let tmpfs: Int64 = 0x0102_1994, hugetlbfs: Int64 = 0x9584_58F6
        guard magic == tmpfs || magic == hugetlbfs else {
            throw MemWallError(.unsupported,
                "'\(directory(of: path))' is not a tmpfs (filesystem magic \(String(magic, radix: 16))): its pages would not follow a NUMA binding; set MEMWALL_POOL_DIR to a tmpfs directory such as /dev/shm")
        }
    }

    static func nodePlacement(_ node: Int, emulated: Bool) -> MemoryPlacement {
        MemoryPlacement(node: node, isEmulated: emulated, label: emulated ? "KV pool, far memory (emulated)" : "KV pool")
    }

    /// Maps the file through a second open file description (`/proc/self/fd/N`):
    /// a mapping keeps the description it was made from alive, and an `flock`
    /// lasts as long as its description, so mapping through the locked one
    /// would keep the lock until the mapping goes — a detached process would
    /// still look attached to `destroy`.
    static func map(_ fd: Int32, bytes: Int, path: String, placement: MemoryPlacement) throws(MemWallError) -> MemoryRegion {
        let second = Glibc.open("/proc/self/fd/\(fd)", O_RDWR | O_CLOEXEC)
        defer { if second >= 0 { close(second) } }
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, second >= 0 ? second : fd, 0)
        guard let p, p != MAP_FAILED else { throw .system("mmap", .current, "cannot map pool segment '\(path)' (\(ByteCount(bytes)))") }
        return MemoryRegion(adopting: p, byteCount: bytes, placement: placement) { ptr, len in munmap(ptr, len) }
    }

    /// Writes a fresh segment's header and tables. A tmpfs file is zero, so only what is not
    /// zero is written; a device (`device`) holds whatever was there, so the tables are cleared.
    static func initialize(_ region: MemoryRegion, layout: PoolLayout, segmentBytes: Int, node: Int?, emulated: Bool,
                           device: String? = nil) {
        let base = region.baseAddress
        let h = base.assumingMemoryBound(to: memwall_pool_header.self)
        if let device {
            memset(base, 0, layout.dataOffset)
            let bytes = Array(device.utf8.prefix(63))
            withUnsafeMutableBytes(of: &h.pointee.device) { d in
                for (i, b) in bytes.enumerated() { d[i] = b }
            }
        }
        h.pointee.magic = MEMWALL_POOL_MAGIC
        h.pointee.version = MEMWALL_POOL_VERSION
        h.pointee.header_bytes = UInt32(MemoryLayout<memwall_pool_header>.size)
        h.pointee.segment_bytes = UInt64(segmentBytes)
        h.pointee.block_bytes = UInt64(layout.blockBytes)
        h.pointee.slot_count = UInt32(layout.slotCount)
        h.pointee.process_slots = UInt32(layout.processSlots)
        h.pointee.bucket_count = UInt32(layout.bucketCount)
        h.pointee.node = Int32(node ?? -1)
        h.pointee.process_table_offset = UInt64(layout.processTableOffset)
        h.pointee.holds_offset = UInt64(layout.holdsOffset)
        h.pointee.slot_table_offset = UInt64(layout.slotTableOffset)
        h.pointee.bucket_offset = UInt64(layout.bucketOffset)
        h.pointee.data_offset = UInt64(layout.dataOffset)
        h.pointee.pid_namespace = PoolProcessIdentity.pidNamespace()
        h.pointee.created_unix_ns = WallClock.unixNanoseconds()
        h.pointee.flags = (emulated ? 1 : 0) | (device != nil ? 2 : 0)
        h.pointee.creator_pid = UInt32(bitPattern: getpid())
        h.pointee.layout_checksum = memwall_checksum(base, PoolLayout.offsetOfLayoutChecksum)
        _ = memwall_pool_mutex_init(memwall_pool_header_lock(h))
        let slots = (base + layout.slotTableOffset).assumingMemoryBound(to: memwall_pool_slot.self)
        for s in 0..<layout.slotCount {
            slots[s].parent_slot = MEMWALL_POOL_NONE
            slots[s].next_free = s + 1 < layout.slotCount ? UInt32(s + 1) : MEMWALL_POOL_NONE
        }
        h.pointee.free_head = 0
        h.pointee.free_count = UInt32(layout.slotCount)
        h.pointee.next_epoch = 1
        // Last, with release ordering: an attacher that sees READY sees everything above.
        memwall_shared_store(memwall_pool_header_state(h), MEMWALL_POOL_READY)
    }

    // MARK: Attach

    /// Opens, maps and checks an existing segment (shared lock).
    /// - Throws: `notFound`; `corrupted` for a segment that fails any check;
    ///   `busy` while its creator still initializes it; `unsupported` from another pid namespace.
    static func open(path: String, name: String) throws(MemWallError) -> PoolSegment {
        let opened: BackingFile.Opened
        do throws(MemWallError) {
            opened = try BackingFile.openShared(path, exclusive: false, funnel: .system)
        } catch where error.code == .notFound {
            throw MemWallError(.notFound, "no KV pool named '\(name)' (\(path) does not exist); create it with memwall pool create \(name) --size SIZE --block-bytes B")
        }
        let device: String?
        do throws(MemWallError) {
            device = try PoolDevice.linkedDevice(opened.fd, path: path)
        } catch {
            close(opened.fd)
            throw error
        }
        if let device {
            close(opened.fd)
            return try PoolDevice.open(device: device, path: path, name: name)
        }
        do throws(MemWallError) {
            var st = stat()
            try CCall.minusOne(fstat(opened.fd, &st), "fstat", "cannot inspect '\(path)'")
            let bytes = Int(st.st_size)
            guard bytes >= PoolLayout.headerBytes else {
                throw MemWallError(.corrupted, "'\(path)' is \(bytes) bytes, too small to be a KV pool segment; destroy it and create it again")
            }
            let region = try map(opened.fd, bytes: bytes, path: path, placement: .anyNode)
            return try checked(region, bytes: bytes, fd: opened.fd, path: path, name: name, device: nil)
        } catch {
            close(opened.fd)
            throw error
        }
    }

    /// Checks a mapped segment (see ``PoolLayout/validate(_:mappedBytes:path:)``) and wraps it.
    static func checked(_ region: MemoryRegion, bytes: Int, fd: Int32, path: String, name: String, device: String?) throws(MemWallError) -> PoolSegment {
        let h = region.baseAddress.assumingMemoryBound(to: memwall_pool_header.self)
        let state = memwall_shared_load(memwall_pool_header_state(h))
        let copy = h.pointee
        if state == MEMWALL_POOL_DESTROYED {
            throw MemWallError(.notFound, "KV pool '\(name)' was destroyed while this process was opening it")
        }
        if state == MEMWALL_POOL_INITIALIZING && copy.magic == 0 {
            throw MemWallError(.corrupted, "KV pool '\(name)' was never finished (its creator died while creating it); destroy it and create it again")
        }
        let layout = try PoolLayout.validate(copy, mappedBytes: bytes, path: path)
        guard state == MEMWALL_POOL_READY else {
            throw MemWallError(.corrupted, "KV pool '\(name)' is not ready (state word \(state)); destroy it and create it again")
        }
        let ns = PoolProcessIdentity.pidNamespace()
        guard copy.pid_namespace == 0 || ns == 0 || copy.pid_namespace == ns else {
            throw MemWallError(.unsupported,
                "KV pool '\(name)' was created in another pid namespace; its process table means nothing here (attach from the namespace that created it)")
        }
        let node: Int? = copy.node >= 0 ? Int(copy.node) : nil
        let emulated = copy.flags & 1 != 0
        if let node { region.updatePlacement(nodePlacement(node, emulated: emulated)) }
        if let device { region.updatePlacement(MemoryPlacement(node: nil, label: "KV pool on \(device) (device-DAX)")) }
        return PoolSegment(path: path, region: region, layout: layout, node: node, emulated: emulated, device: device, fd: fd)
    }

    // MARK: Destroy

    /// Removes a segment's name. Without `force` it must be unused (an
    /// exclusive lock); with it, processes still attached keep working on the
    /// unnamed segment until they let go. Only a memwall pool (its magic) or a
    /// creation that never finished (an all-zero header) is removed.
    static func destroy(path: String, name: String, force: Bool) throws(MemWallError) {
        var opened: BackingFile.Opened
        do throws(MemWallError) {
            opened = try BackingFile.openShared(path, exclusive: true, funnel: .system)
        } catch where error.code == .notFound {
            throw MemWallError(.notFound, "no KV pool named '\(name)' (\(path) does not exist)")
        } catch where error.code == .busy && force {
            opened = try BackingFile.openShared(path, exclusive: false, funnel: .system)
        } catch where error.code == .busy {
            throw MemWallError(.busy, "KV pool '\(name)' is attached: \(error.message); detach them first, or pass --force to remove its name anyway")
        }
        defer { close(opened.fd) }
        let device: String?
        do throws(MemWallError) {
            device = try PoolDevice.linkedDevice(opened.fd, path: path)
        } catch {
            // A name file of ours whose device path is damaged: the name is all there is to remove.
            try CCall.minusOne(unlink(path), "unlink", "cannot remove '\(path)'")
            return
        }
        if let device {
            try PoolDevice.destroy(device: device, path: path, name: name, force: force)
            return
        }
        var first = [UInt8](repeating: 0, count: MemoryLayout<memwall_pool_header>.size)
        let got = first.withUnsafeMutableBytes { b in
            b.baseAddress.map { SyscallFunnel.system.preadFully(opened.fd, $0, b.count, 0) } ?? .success(0)
        }
        let n = min(first.count, (try? got.get()) ?? 0)
        let magic = n >= 8 ? first.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } : 0
        guard magic == MEMWALL_POOL_MAGIC || first[0..<n].allSatisfy({ $0 == 0 }) else {
            throw MemWallError(.invalidArgument, "'\(path)' is not a memwall KV pool (its magic number is wrong); it is left alone")
        }
        if n >= Int(MEMWALL_POOL_STATE_OFFSET) + 8 {
            // Anyone who opened the file before the unlink and gets the lock after us sees this and refuses.
            var destroyed = MEMWALL_POOL_DESTROYED
            _ = withUnsafeBytes(of: &destroyed) { b in pwrite(opened.fd, b.baseAddress, 8, off_t(MEMWALL_POOL_STATE_OFFSET)) }
        }
        try CCall.minusOne(unlink(path), "unlink", "cannot remove '\(path)'")
    }
}

/// Wall-clock time (for "when" fields a person reads; durations use ``MonotonicClock``).
enum WallClock {
    static func unixNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(max(0, ts.tv_sec)) &* 1_000_000_000 &+ UInt64(max(0, ts.tv_nsec))
    }
}
