#if canImport(Glibc)
import Glibc
#endif
import CMemWallABI
import MemWallCore
import NUMATransport
import Synchronization
import Transport

/// A region handle's object: the memory, and the caches it is registered with, so that
/// closing a region a cache still uses is refused rather than leaving the cache a dangling
/// registration (for adopted memory, a pointer the caller is about to free).
final class RegionEntry: Sendable {
    let region: MemoryRegion
    /// True for `mw_region_adopt`: the caller owns the bytes.
    let adopted: Bool
    private let state = Mutex(Registrations())

    struct Registrations {
        var closed = false
        var caches: Set<UInt64> = []
    }

    init(region: MemoryRegion, adopted: Bool) {
        self.region = region
        self.adopted = adopted
    }

    /// Runs `body` on the registration state under the region's lock (a register or
    /// deregister and the bookkeeping happen together, never interleaved with a close).
    /// - Throws: `misuse` when the region was closed; what `body` throws.
    func withRegistrations<R>(_ body: (inout Registrations) throws(MemWallError) -> R) throws(MemWallError) -> R {
        let result = state.withLock { s -> Result<R, MemWallError> in
            guard !s.closed else {
                return .failure(MemWallError(.misuse, "the region was closed while this call was using it"))
            }
            do throws(MemWallError) { return .success(try body(&s)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Marks the region closed unless a cache still has it registered.
    /// - Throws: `busy` naming how many caches hold it.
    func close() throws(MemWallError) {
        try withRegistrations { (s: inout Registrations) throws(MemWallError) in
            guard s.caches.isEmpty else {
                throw MemWallError(.busy,
                    "the region is registered with \(s.caches.count) open KV cache(s); call mw_kv_deregister (or mw_kv_close) first")
            }
            s.closed = true
        }
    }
}

/// Process-wide state of the region functions.
enum Regions {
    static let table = HandleTable<RegionEntry>(tag: 0x52, kind: "mw_region")
    /// One allocator for every region, so the emulated far pool's capacity is counted once.
    static let allocator = NUMAAllocator()
    /// Largest region (64 TiB): any real allocation fits, and sums of a few cannot overflow.
    static let maximumBytes = 1 << 46

    /// Fails with `outOfBounds` unless every page of `bytes` at `pointer` is mapped
    /// (`mincore` answers ENOMEM for an unmapped page); checked a chunk at a time so a
    /// large region needs only a small vector.
    static func checkMapped(_ pointer: UnsafeMutableRawPointer, _ bytes: Int) throws(MemWallError) {
        let page = UInt(PageSize.bytes)
        let first = UInt(bitPattern: pointer) & ~(page - 1)
        let (end, overflow) = UInt(bitPattern: pointer).addingReportingOverflow(UInt(bytes))
        guard !overflow else {
            throw MemWallError(.outOfBounds, "pointer + bytes wraps around the address space")
        }
        let chunkPages: UInt = 16384
        var vector = [UInt8](repeating: 0, count: Int(chunkPages))
        var at = first
        while at < end {
            let length = min(end - at, chunkPages * page)
            let rc = vector.withUnsafeMutableBufferPointer { v in
                mincore(UnsafeMutableRawPointer(bitPattern: at), Int(length), v.baseAddress)
            }
            if rc != 0 {
                let err = Errno.current
                throw MemWallError(err == .noMemory ? .outOfBounds : .systemCall,
                    "\(bytes) bytes at 0x\(String(UInt(bitPattern: pointer), radix: 16)) are not all mapped memory of this process; pass the buffer's real length",
                    function: "mincore", errno: err)
            }
            at += length
        }
    }
}

@c @implementation
public func mw_region_alloc(_ node: Int32, _ bytes: Int, _ flags: UInt32,
                            _ regionOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_region_alloc") { () throws(MemWallError) in
        let out = try ABI.required(regionOut, "region_out")
        let size = try ABI.count(bytes, "bytes", 1...Regions.maximumBytes)
        guard flags & ~UInt32(MW_REGION_HUGE_PAGES) == 0 else {
            throw .invalid("flags", "0x" + String(flags, radix: 16), expected: "0 or MW_REGION_HUGE_PAGES")
        }
        let huge = flags & UInt32(MW_REGION_HUGE_PAGES) != 0
        let region: MemoryRegion
        switch node {
        case MW_NODE_ANY:
            region = try MemoryRegion.allocate(byteCount: size)
        case MW_NODE_FAR:
            guard let far = Regions.allocator.farNode else {
                throw MemWallError(.notFound,
                    "this host has no far-memory node (several NUMA nodes, none CPU-less); give a node number")
            }
            region = try Regions.allocator.allocate(byteCount: size, on: far.id, transparentHugePages: huge)
        case 0...:
            region = try Regions.allocator.allocate(byteCount: size, on: Int(node), transparentHugePages: huge)
        default:
            throw .invalid("node", node, expected: "a node number >= 0, MW_NODE_ANY (-1) or MW_NODE_FAR (-2)")
        }
        out.pointee = try Regions.table.insert(RegionEntry(region: region, adopted: false))
    }
}

@c @implementation
public func mw_region_adopt(_ pointer: UnsafeMutableRawPointer?, _ bytes: Int,
                            _ regionOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_region_adopt") { () throws(MemWallError) in
        let out = try ABI.required(regionOut, "region_out")
        let base = try ABI.required(pointer, "pointer")
        let size = try ABI.count(bytes, "bytes", 1...Regions.maximumBytes)
        try Regions.checkMapped(base, size)
        let region = MemoryRegion(adopting: base, byteCount: size,
                                  placement: MemoryPlacement(node: nil, label: "caller memory")) { _, _ in }
        out.pointee = try Regions.table.insert(RegionEntry(region: region, adopted: true))
    }
}

@c @implementation
public func mw_region_ptr(_ handle: OpaquePointer?, _ pointerOut: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                          _ bytesOut: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_region_ptr") { () throws(MemWallError) in
        let entry = try Regions.table.object(handle)
        pointerOut?.pointee = entry.region.baseAddress
        bytesOut?.pointee = entry.region.byteCount
    }
}

@c @implementation
public func mw_region_node(_ handle: OpaquePointer?, _ nodeOut: UnsafeMutablePointer<Int32>?,
                           _ emulatedOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    ABI.run("mw_region_node") { () throws(MemWallError) in
        let placement = try Regions.table.object(handle).region.placement
        nodeOut?.pointee = Int32(clamping: placement.node ?? -1)
        emulatedOut?.pointee = placement.isEmulated ? 1 : 0
    }
}

@c @implementation
public func mw_region_close(_ handle: OpaquePointer?) -> Int32 {
    ABI.run("mw_region_close") { () throws(MemWallError) in
        _ = try Regions.table.remove(handle) { (entry: RegionEntry) throws(MemWallError) in try entry.close() }
    }
}
