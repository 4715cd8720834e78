#if canImport(Glibc)
import Glibc
#endif
import CMemWallABI
import HostCapabilities
import KVPlacement
import KVPool
import MemWallCore
import Synchronization
import Transport

// The host-wide KV pool across the C ABI: mw_pool_* of include/memwall.h, over KVPool.

/// A pool handle's object.
final class PoolEntry: Sendable {
    let pool: KVPool
    init(_ pool: KVPool) { self.pool = pool }
}

/// A view handle's object: the view (a `~Copyable` reference on one block) until it is closed.
/// `@unchecked`: `bytes` is an immutable pointer into the pool's mapping, which the view (and
/// so this object) keeps alive; the view itself is behind the mutex.
final class PoolViewEntry: @unchecked Sendable {
    private let view: Mutex<KVPoolView?>
    let bytes: UnsafeRawBufferPointer
    let checksum: UInt64

    init(_ v: consuming KVPoolView) {
        bytes = v.bytes
        checksum = v.checksum
        view = Mutex(Optional(v))
    }

    /// Releases the block (once; the handle table refuses a second close before this runs).
    func close() {
        let v = view.withLock { v -> KVPoolView? in v.take() }
        v?.close()
    }
}

/// Process-wide tables of the pool functions.
enum PoolHandles {
    static let pools = HandleTable<PoolEntry>(tag: 0x50, kind: "mw_pool")
    static let views = HandleTable<PoolViewEntry>(tag: 0x56, kind: "mw_pool_view")
}

/// The caller's block pointers, each checked to cover `bytes` of mapped memory.
private func blockPointers(_ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, count: Int, bytes: Int) throws(MemWallError) -> [UnsafeMutableRawPointer] {
    let p = try ABI.required(blocks, "blocks")
    var out: [UnsafeMutableRawPointer] = []
    out.reserveCapacity(count)
    for i in 0..<count {
        guard let b = p[i] else { throw MemWallError(.invalidArgument, "blocks[\(i)] is NULL") }
        do throws(MemWallError) {
            try Regions.checkMapped(b, bytes)
        } catch {
            throw MemWallError(error.code, "blocks[\(i)]: \(error.message)", function: error.function, errno: error.errno)
        }
        out.append(b)
    }
    return out
}

/// Hands `pool` out as a handle; when no handle can be made, detaches again (and, for a
/// pool this call created, removes it: the caller never learned of it).
private func handOut(_ pool: KVPool, to out: UnsafeMutablePointer<OpaquePointer?>, created: Bool) throws(MemWallError) {
    do throws(MemWallError) {
        out.pointee = try PoolHandles.pools.insert(PoolEntry(pool))
    } catch {
        pool.close()
        if created { try? KVPool.destroy(name: pool.name, force: true) }
        throw error
    }
}

/// `processes` of the create functions: 0 for the default (32), else 1…254.
private func processCount(_ processes: UInt32) throws(MemWallError) -> Int {
    processes == 0 ? 32 : try ABI.count(Int(processes), "processes", 1...254)
}

/// The first per-block failure as the call's error (its message names the block).
private func firstFailure(_ r: KVTransferResult) throws(MemWallError) { try r.check() }

@c @implementation
public func mw_pool_create(_ name: UnsafePointer<CChar>?, _ bytes: Int, _ blockBytes: Int, _ node: Int32, _ processes: UInt32,
                           _ poolOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_pool_create") { () throws(MemWallError) in
        let out = try ABI.required(poolOut, "pool_out")
        let n = try ABI.string(name, "name", limit: 64)
        let size = try ABI.count(bytes, "bytes", 1...Regions.maximumBytes)
        let block = try ABI.count(blockBytes, "block_bytes", 1...(1 << 30))
        let attached = try processCount(processes)
        let bound: Int?
        switch node {
        case MW_NODE_ANY: bound = nil
        case MW_NODE_FAR:
            guard let far = Regions.allocator.farNode else {
                throw MemWallError(.notFound, "this host has no far-memory node (several NUMA nodes, none CPU-less); give a node number")
            }
            bound = far.id
        case 0...: bound = Int(node)
        default: throw .invalid("node", node, expected: "a node number, MW_NODE_ANY or MW_NODE_FAR")
        }
        try handOut(try KVPool.create(name: n, bytes: size, blockBytes: block, node: bound, processes: attached,
                                      allocator: Regions.allocator), to: out, created: true)
    }
}

@c @implementation
public func mw_pool_create_on_device(_ name: UnsafePointer<CChar>?, _ device: UnsafePointer<CChar>?, _ bytes: Int, _ blockBytes: Int,
                                     _ processes: UInt32, _ allowWrite: Int32,
                                     _ poolOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_pool_create_on_device") { () throws(MemWallError) in
        let out = try ABI.required(poolOut, "pool_out")
        let n = try ABI.string(name, "name", limit: 64)
        let path = try ABI.string(device, "device", limit: 64)
        let size = bytes == 0 ? nil : try ABI.count(bytes, "bytes", 1...Regions.maximumBytes)
        let block = try ABI.count(blockBytes, "block_bytes", 1...(1 << 30))
        let attached = try processCount(processes)
        guard allowWrite == 0 || allowWrite == 1 else { throw .invalid("allow_write", allowWrite, expected: "0 or 1") }
        try handOut(try KVPool.create(name: n, device: path, bytes: size, blockBytes: block, processes: attached,
                                      allowWrite: allowWrite == 1), to: out, created: true)
    }
}

@c @implementation
public func mw_pool_attach(_ name: UnsafePointer<CChar>?, _ poolOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_pool_attach") { () throws(MemWallError) in
        let out = try ABI.required(poolOut, "pool_out")
        try handOut(try KVPool.attach(name: try ABI.string(name, "name", limit: 64)), to: out, created: false)
    }
}

@c @implementation
public func mw_pool_close(_ pool: OpaquePointer?) -> Int32 {
    ABI.run("mw_pool_close") { () throws(MemWallError) in
        try PoolHandles.pools.remove(pool).pool.close()
    }
}

@c @implementation
public func mw_pool_destroy(_ name: UnsafePointer<CChar>?, _ force: Int32) -> Int32 {
    ABI.run("mw_pool_destroy") { () throws(MemWallError) in
        guard force == 0 || force == 1 else { throw .invalid("force", force, expected: "0 or 1") }
        try KVPool.destroy(name: try ABI.string(name, "name", limit: 64), force: force == 1)
    }
}

@c @implementation
public func mw_pool_geometry(_ pool: OpaquePointer?, _ blockBytesOut: UnsafeMutablePointer<Int>?,
                             _ capacityOut: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_pool_geometry") { () throws(MemWallError) in
        let p = try PoolHandles.pools.object(pool).pool
        blockBytesOut?.pointee = p.blockBytes
        capacityOut?.pointee = p.capacityBlocks
    }
}

@c @implementation
public func mw_pool_lookup(_ pool: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                           _ hitCountOut: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_pool_lookup") { () throws(MemWallError) in
        let out = try ABI.required(hitCountOut, "hit_count_out")
        let p = try PoolHandles.pools.object(pool).pool
        out.pointee = try p.lookup(try blockKeys(keys, keyCount)).count
    }
}

@c @implementation
public func mw_pool_store(_ pool: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                          _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ parent: UnsafePointer<UInt64>?,
                          _ storedOut: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_pool_store") { () throws(MemWallError) in
        let p = try PoolHandles.pools.object(pool).pool
        let k = try blockKeys(keys, keyCount)
        guard !k.isEmpty else { throw MemWallError(.invalidArgument, "key_count is 0: give at least one key") }
        let sources = try blockPointers(blocks, count: k.count, bytes: p.blockBytes).map { UnsafeRawPointer($0) }
        let r = try p.store(k, from: sources, after: parent.map { BlockKey(rawValue: $0.pointee) })
        storedOut?.pointee = r.bytes / p.blockBytes
        try firstFailure(r)
    }
}

@c @implementation
public func mw_pool_load(_ pool: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                         _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ loadedOut: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_pool_load") { () throws(MemWallError) in
        let p = try PoolHandles.pools.object(pool).pool
        let k = try blockKeys(keys, keyCount)
        guard !k.isEmpty else { throw MemWallError(.invalidArgument, "key_count is 0: give at least one key") }
        let destinations = try blockPointers(blocks, count: k.count, bytes: p.blockBytes)
        let r = try p.load(k, into: destinations)
        loadedOut?.pointee = r.bytes / p.blockBytes
        try firstFailure(r)
    }
}

@c @implementation
public func mw_pool_view_open(_ pool: OpaquePointer?, _ key: UInt64, _ viewOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_pool_view_open") { () throws(MemWallError) in
        let out = try ABI.required(viewOut, "view_out")
        let p = try PoolHandles.pools.object(pool).pool
        let entry = PoolViewEntry(try p.view(BlockKey(rawValue: key)))
        do throws(MemWallError) {
            out.pointee = try PoolHandles.views.insert(entry)
        } catch {
            entry.close()
            throw error
        }
    }
}

@c @implementation
public func mw_pool_view_bytes(_ view: OpaquePointer?, _ pointerOut: UnsafeMutablePointer<UnsafeRawPointer?>?,
                               _ bytesOut: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_pool_view_bytes") { () throws(MemWallError) in
        let v = try PoolHandles.views.object(view)
        pointerOut?.pointee = v.bytes.baseAddress
        bytesOut?.pointee = v.bytes.count
    }
}

@c @implementation
public func mw_pool_view_verify(_ view: OpaquePointer?) -> Int32 {
    ABI.run("mw_pool_view_verify") { () throws(MemWallError) in
        let v = try PoolHandles.views.object(view)
        guard TierStore.checksum(v.bytes) == v.checksum else {
            throw MemWallError(.corrupted, "the block's bytes in the pool do not match the checksum it was published with")
        }
    }
}

@c @implementation
public func mw_pool_view_close(_ view: OpaquePointer?) -> Int32 {
    ABI.run("mw_pool_view_close") { () throws(MemWallError) in
        try PoolHandles.views.remove(view).close()
    }
}

@c @implementation
public func mw_pool_stat_json(_ name: UnsafePointer<CChar>?, _ pages: Int32,
                              _ jsonOut: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    ABI.run("mw_pool_stat_json") { () throws(MemWallError) in
        let out = try ABI.required(jsonOut, "json_out")
        guard pages == 0 || pages == 1 else { throw .invalid("pages", pages, expected: "0 or 1") }
        let status = try KVPool.status(name: try ABI.string(name, "name", limit: 64), pages: pages == 1)
        let text: String
        do { text = try StableJSON.text(status) } catch {
            throw MemWallError(.internalFailure, "could not encode the pool's status as JSON: \(error)")
        }
        try ReturnedStrings.hand(text, to: out)
    }
}
