#if canImport(Glibc)
import Glibc
#endif
import CMemWallABI
import FoundationEssentials
import HostCapabilities
import KVPlacement
import KVPool
import MemWallCore
import NUMATransport
import Synchronization
import Topology
import Transport
import URingTransport

// The KV cache across the C ABI: mw_kv_* and mw_transfer_* of include/memwall.h, over
// KVPlacement's runtime API (KVCache.register / lookup / load / store / KVTransfer).

// MARK: - Configuration

/// `mw_kv_open`'s configuration, decoded totally: the document is at most
/// ``maximumBytes``, every key is known, every value has its type and range, and each
/// refusal names the key and what is valid.
struct KVConfiguration: Sendable {
    var tiers: [TierSpec]
    var blockBytes: Int
    var nvmePath: String?
    var scratchDirectory = "/var/tmp"
    var allowWrite = false
    var policy: EvictionPolicyName = .lfuda
    var blockTokens = 16
    var farNode: Int?
    var eventQueue = 65536

    static let maximumBytes = 64 << 10
    static let keys = ["tiers", "block_bytes", "nvme_path", "scratch_dir", "allow_write", "policy",
                       "block_tokens", "far_node", "event_queue"]

    /// One JSON value of the configuration, as far as its type.
    private enum Value: Decodable {
        case bool(Bool), int(Int), number(Double), string(String), null, other

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { self = .null }
            else if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let i = try? c.decode(Int.self) { self = .int(i) }
            else if let d = try? c.decode(Double.self) { self = .number(d) }
            else if let s = try? c.decode(String.self) { self = .string(s) }
            else { self = .other }
        }

        var typeName: String {
            switch self {
            case .bool: "a boolean"
            case .int, .number: "a number"
            case .string: "a string"
            case .null: "null"
            case .other: "an array or object"
            }
        }
    }

    static func parse(_ text: String) throws(MemWallError) -> KVConfiguration {
        let object: [String: Value]
        do {
            object = try JSONDecoder().decode([String: Value].self, from: Data(text.utf8))
        } catch {
            throw MemWallError(.malformedInput,
                "config_json is not one JSON object with string keys (\(error)); e.g. {\"tiers\": \"dram:256,nvme:8192\", \"block_bytes\": 262144}")
        }
        if let unknown = object.keys.sorted().first(where: { !keys.contains($0) }) {
            throw .invalid("config key", unknown, expected: "one of \(keys.joined(separator: ", "))")
        }
        func string(_ key: String) throws(MemWallError) -> String? {
            switch object[key] {
            case nil: return nil
            case .string(let s)?: return s
            case let v?: throw .invalid("config \"\(key)\"", v.typeName, expected: "a string")
            }
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws(MemWallError) -> Int? {
            switch object[key] {
            case nil: return nil
            case .int(let i)? where range.contains(i): return i
            case .int(let i)?: throw .invalid("config \"\(key)\"", i, expected: "an integer from \(range.lowerBound) to \(range.upperBound)")
            case .number(let d)?: throw .invalid("config \"\(key)\"", d, expected: "an integer from \(range.lowerBound) to \(range.upperBound)")
            case let v?: throw .invalid("config \"\(key)\"", v.typeName, expected: "an integer")
            }
        }
        guard let tierText = try string("tiers") else {
            throw MemWallError(.invalidArgument, "config \"tiers\" is missing: give e.g. \"dram:256,far:1024,nvme:8192\"")
        }
        guard tierText.utf8.count <= 1024 else {
            throw .invalid("config \"tiers\"", "(\(tierText.utf8.count) bytes)", expected: "at most \(TierSpec.maximumCount) tiers")
        }
        var specs: [TierSpec] = []
        for part in tierText.split(separator: ",", omittingEmptySubsequences: false) {
            specs.append(try TierSpec.parse(String(part)))
        }
        try TierSpec.validate(specs, allowingShared: true)
        guard let blockBytes = try integer("block_bytes", 4096...(1 << 30)) else {
            throw MemWallError(.invalidArgument, "config \"block_bytes\" is missing: give the bytes per block, a multiple of 4096")
        }
        guard blockBytes % 4096 == 0 else {
            throw .invalid("config \"block_bytes\"", blockBytes, expected: "a multiple of 4096 (O_DIRECT moves whole 4 KiB sectors)")
        }
        var config = KVConfiguration(tiers: specs, blockBytes: blockBytes)
        config.nvmePath = try string("nvme_path")
        if let dir = try string("scratch_dir") { config.scratchDirectory = dir }
        switch object["allow_write"] {
        case nil: break
        case .bool(let b)?: config.allowWrite = b
        case let v?: throw .invalid("config \"allow_write\"", v.typeName, expected: "true or false")
        }
        if let p = try string("policy") {
            config.policy = try EvictionPolicyName.parse(p)
            guard config.policy != .belady else {
                throw .invalid("config \"policy\"", p, expected: "an online policy (belady needs the future trace)")
            }
        }
        if let t = try integer("block_tokens", 1...65536) { config.blockTokens = t }
        config.farNode = try integer("far_node", 0...4095)
        if let q = try integer("event_queue", 0...(1 << 20)) { config.eventQueue = q }
        if let path = config.nvmePath, path.isEmpty || path.utf8.count > 4096 {
            throw .invalid("config \"nvme_path\"", path, expected: "a path of 1 to 4096 bytes")
        }
        if config.nvmePath != nil, !specs.contains(where: { $0.kind == .nvme }) {
            throw .invalid("config \"nvme_path\"", config.nvmePath ?? "", expected: "no nvme_path without an nvme tier in \"tiers\"")
        }
        return config
    }
}

// MARK: - The cache behind a handle

/// A cache handle's object: the cache, what keeps its tiers' memory and files alive, the
/// regions registered with it (to find the region of a caller's block pointer), and its
/// bounded queue of events.
final class KVEntry: Sendable {
    let id: UInt64
    let cache: KVCache
    /// The host-wide pool of a `pool:NAME` tier, attached for this cache.
    let pool: KVPool?
    let blockBytes: Int
    let blockTokens: Int
    private let tierNames: [String]
    private let backings: Mutex<[TierBacking]?>
    private let registry = Mutex(Registry())
    private let events: EventBuffer
    private let subscription: KVSubscription

    struct Registered {
        var base: UInt
        var end: UInt
        var region: MemoryRegion
        var entry: RegionEntry
    }

    struct Registry {
        var closed = false
        /// Sorted by base address; regions never overlap (one region per mapping).
        var regions: [Registered] = []
    }

    /// The events not yet taken by `mw_kv_events_json`: at most `capacity`, the oldest dropped
    /// (and counted) first, so a caller that never asks costs bounded memory.
    final class EventBuffer: Sendable {
        private struct Queue {
            var capacity: Int
            var events: [KVEvent] = []
            var head = 0
            var dropped = 0
        }
        private let queue: Mutex<Queue>

        init(capacity: Int) { queue = Mutex(Queue(capacity: capacity)) }

        func append(_ event: KVEvent) {
            queue.withLock { q in
                guard q.capacity > 0 else { q.dropped += 1; return }
                if q.events.count - q.head >= q.capacity {
                    q.head += 1
                    q.dropped += 1
                }
                q.events.append(event)
                // Compact once the skipped prefix is as long as what is kept.
                if q.head >= q.capacity {
                    q.events.removeFirst(q.head)
                    q.head = 0
                }
            }
        }

        func drain() -> [KVEvent] {
            queue.withLock { q in
                defer { q.events.removeAll(); q.head = 0 }
                return Array(q.events[q.head...])
            }
        }

        var dropped: Int { queue.withLock { $0.dropped } }
    }

    private static let nextID = Atomic<UInt64>(1)

    init(configuration c: KVConfiguration) throws(MemWallError) {
        id = KVEntry.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        blockBytes = c.blockBytes
        blockTokens = c.blockTokens
        let own = c.tiers.filter { $0.kind != .pool }
        tierNames = own.map(\.name)
        let numa = NUMATransport()
        let allocator = numa.allocator
        var farNode: Int?
        if c.tiers.contains(where: { $0.kind == .farMemory }) {
            let topology = try Topology.load(.live)
            farNode = try TierPlacement.farMemoryNode(for: c.tiers, in: topology, requested: c.farNode)
        }
        let registry = TransportRegistry()
        registry.add(numa, rank: 0)
        registry.add(try URingTransport.makeWithFallback(), rank: 0)
        registry.add(MemoryCopyTransport(), rank: 10)
        let far: ((Int) throws -> MemoryRegion)? = farNode.map { node in
            { bytes in try allocator.allocate(byteCount: bytes, on: node) }
        } ?? allocator.emulatedNode.map { node in
            { bytes in try allocator.allocate(byteCount: bytes, on: node) }
        }
        let existing: ExistingFileUse = c.allowWrite ? .write : .refuse
        let built = try TierStore.build(tiers: own, blockBytes: c.blockBytes, registry: registry,
            storage: { _, bytes throws(MemWallError) in
                if let path = c.nvmePath {
                    return try StorageTarget(path: path, createWithSize: bytes, existing: existing)
                }
                return try StorageTarget.scratch(in: c.scratchDirectory, prefix: "memwall-kv-nvme", byteCount: bytes)
            },
            farMemory: far)
        backings = Mutex(built.backings)
        // A pool:NAME tier: this process attaches to the host-wide pool (detached again at close).
        pool = try c.tiers.first { $0.kind == .pool }.map { t throws(MemWallError) in try KVPool.attach(name: t.name) }
        do throws(MemWallError) {
            cache = try KVCache(tiers: c.tiers, policy: c.policy, blockSize: c.blockTokens, store: built.store, shared: pool)
        } catch {
            pool?.close()
            throw error
        }
        let buffer = EventBuffer(capacity: c.eventQueue)
        events = buffer
        subscription = cache.subscribe { event in buffer.append(event) }
    }

    /// Registers `entry`'s region with the cache; the region's lock is held by the caller
    /// (``RegionEntry/withRegistrations(_:)``), so a close cannot interleave.
    func register(_ entry: RegionEntry, _ regs: inout RegionEntry.Registrations) throws(MemWallError) {
        guard !regs.caches.contains(id) else {
            throw MemWallError(.alreadyExists, "the region is registered with this cache already")
        }
        let region = entry.region
        let base = UInt(bitPattern: region.baseAddress)
        try registry.withLock { (r: inout Registry) throws(MemWallError) in
            guard !r.closed else { throw MemWallError(.misuse, "the KV cache is closed") }
            try cache.register(region)
            let at = r.regions.firstIndex { $0.base > base } ?? r.regions.count
            r.regions.insert(Registered(base: base, end: base + UInt(region.byteCount), region: region, entry: entry), at: at)
        }
        regs.caches.insert(id)
    }

    /// Takes back ``register(_:_:)``.
    func deregister(_ entry: RegionEntry, _ regs: inout RegionEntry.Registrations) throws(MemWallError) {
        guard regs.caches.contains(id) else {
            throw MemWallError(.notFound, "the region is not registered with this cache")
        }
        try registry.withLock { (r: inout Registry) throws(MemWallError) in
            guard !r.closed else { throw MemWallError(.misuse, "the KV cache is closed") }
            try cache.deregister(entry.region)
            r.regions.removeAll { $0.entry === entry }
        }
        regs.caches.remove(id)
    }

    /// The caller's block pointers as buffers inside registered regions.
    /// - Throws: `invalidArgument` naming the first block outside every registered region
    ///   (or NULL), `outOfBounds` for one that runs past its region's end.
    func buffers(_ blocks: UnsafePointer<UnsafeMutableRawPointer?>, count: Int) throws(MemWallError) -> [KVBuffer] {
        try registry.withLock { (r: inout Registry) throws(MemWallError) -> [KVBuffer] in
            guard !r.closed else { throw MemWallError(.misuse, "the KV cache is closed") }
            var out: [KVBuffer] = []
            out.reserveCapacity(count)
            for i in 0..<count {
                guard let p = blocks[i] else {
                    throw MemWallError(.invalidArgument, "blocks[\(i)] is NULL")
                }
                let address = UInt(bitPattern: p)
                // The last region starting at or below the address.
                var lo = 0, hi = r.regions.count
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if r.regions[mid].base <= address { lo = mid + 1 } else { hi = mid }
                }
                guard lo > 0, address < r.regions[lo - 1].end else {
                    throw MemWallError(.invalidArgument,
                        "block \(i) at 0x\(String(address, radix: 16)) is not inside a region registered with this cache; register its memory first (mw_kv_register; in Python KVCache.allocate or KVCache.register)")
                }
                let reg = r.regions[lo - 1]
                guard reg.end - address >= UInt(blockBytes) else {
                    throw MemWallError(.outOfBounds,
                        "block \(i) at 0x\(String(address, radix: 16)) runs \(UInt(blockBytes) - (reg.end - address)) bytes past the end of its registered region (block_bytes \(blockBytes))")
                }
                out.append(KVBuffer(region: reg.region, offset: Int(address - reg.base)))
            }
            return out
        }
    }

    /// Closes the cache: later calls fail with `misuse`; every region is deregistered.
    func close() {
        let regions = registry.withLock { r -> [Registered] in
            r.closed = true
            defer { r.regions.removeAll() }
            return r.regions
        }
        for reg in regions {
            _ = try? reg.entry.withRegistrations { (regs: inout RegionEntry.Registrations) throws(MemWallError) in
                regs.caches.remove(id)
            }
            try? cache.deregister(reg.region)
        }
        cache.unsubscribe(subscription)
        cache.close()
        pool?.close()
        backings.withLock { $0 = nil }
    }

    /// Events since the last call.
    func drainEvents() -> [KVEvent] { events.drain() }

    /// Events dropped because the queue was full.
    var eventsDropped: Int { events.dropped }

    func tierName(_ tier: Int) -> String {
        tierNames.indices.contains(tier) ? tierNames[tier] : "tier\(tier)"
    }
}

/// Process-wide tables of the KV functions.
enum KVHandles {
    static let caches = HandleTable<KVEntry>(tag: 0x4B, kind: "mw_kv")
    static let transfers = HandleTable<TransferEntry>(tag: 0x54, kind: "mw_transfer")
    /// Most keys in one call (the largest cache holds 2^26 blocks; one call moves far fewer).
    static let maximumKeys = 1 << 22
    /// Timeouts at or above this (2^62 ns) wait without limit: adding them to the monotonic
    /// clock would wrap around, turning "very long" into "already expired".
    static let noLimit: UInt64 = 1 << 62
}

/// A transfer handle's object.
final class TransferEntry: Sendable {
    let transfer: KVTransfer
    init(_ transfer: KVTransfer) { self.transfer = transfer }
}

/// The keys of a call as BlockKeys (one copy; a BlockKey is a UInt64).
func blockKeys(_ keys: UnsafePointer<UInt64>?, _ count: Int) throws(MemWallError) -> [BlockKey] {
    let n = try ABI.count(count, "key_count", 0...KVHandles.maximumKeys)
    guard n > 0 else { return [] }
    let p = try ABI.required(keys, "keys")
    return UnsafeBufferPointer(start: p, count: n).map(BlockKey.init(rawValue:))
}

private func loadPolicy(_ policy: Int32, _ timeout: UInt64) throws(MemWallError) -> KVLoadPolicy {
    switch policy {
    case MW_LOAD_WAIT: return .wait
    case MW_LOAD_BEST_EFFORT: return .bestEffort
    // Beyond 2^62 ns (146 years) a deadline would wrap the monotonic clock: that is "no limit".
    case MW_LOAD_TIMEOUT: return timeout >= KVHandles.noLimit ? .wait : .timeout(nanoseconds: timeout)
    default: throw .invalid("load_policy", policy, expected: "MW_LOAD_WAIT (0), MW_LOAD_BEST_EFFORT (1) or MW_LOAD_TIMEOUT (2)")
    }
}

private func writePolicy(_ policy: Int32) throws(MemWallError) -> KVWritePolicy {
    switch policy {
    case MW_WRITE_BACK: return .writeBack
    case MW_WRITE_THROUGH: return .writeThrough
    default: throw .invalid("write_policy", policy, expected: "MW_WRITE_BACK (0) or MW_WRITE_THROUGH (1)")
    }
}

private func startStore(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ count: Int,
                        _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ parent: UnsafePointer<UInt64>?,
                        _ policy: Int32) throws(MemWallError) -> KVTransfer {
    let entry = try KVHandles.caches.object(kv)
    let k = try blockKeys(keys, count)
    guard !k.isEmpty else { throw MemWallError(.invalidArgument, "key_count is 0: give at least one key") }
    let buffers = try entry.buffers(try ABI.required(blocks, "blocks"), count: k.count)
    return try entry.cache.store(k, from: buffers, after: parent.map { BlockKey(rawValue: $0.pointee) },
                                 policy: try writePolicy(policy))
}

private func startLoad(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ count: Int,
                       _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ policy: Int32,
                       _ timeout: UInt64) throws(MemWallError) -> KVTransfer {
    let entry = try KVHandles.caches.object(kv)
    let k = try blockKeys(keys, count)
    guard !k.isEmpty else { throw MemWallError(.invalidArgument, "key_count is 0: give at least one key") }
    let p = try loadPolicy(policy, timeout)
    let buffers = try entry.buffers(try ABI.required(blocks, "blocks"), count: k.count)
    return try entry.cache.load(k, into: buffers, policy: p)
}

// MARK: - Exported functions

@c @implementation
public func mw_kv_open(_ configJSON: UnsafePointer<CChar>?, _ kvOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_kv_open") { () throws(MemWallError) in
        let out = try ABI.required(kvOut, "kv_out")
        let text = try ABI.string(configJSON, "config_json", limit: KVConfiguration.maximumBytes)
        let entry = try KVEntry(configuration: try KVConfiguration.parse(text))
        do throws(MemWallError) {
            out.pointee = try KVHandles.caches.insert(entry)
        } catch {
            entry.close()
            throw error
        }
    }
}

@c @implementation
public func mw_kv_close(_ kv: OpaquePointer?) -> Int32 {
    ABI.run("mw_kv_close") { () throws(MemWallError) in
        try KVHandles.caches.remove(kv).close()
    }
}

@c @implementation
public func mw_kv_block_bytes(_ kv: OpaquePointer?, _ out: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_kv_block_bytes") { () throws(MemWallError) in
        let o = try ABI.required(out, "block_bytes_out")
        o.pointee = try KVHandles.caches.object(kv).blockBytes
    }
}

@c @implementation
public func mw_kv_register(_ kv: OpaquePointer?, _ region: OpaquePointer?) -> Int32 {
    ABI.run("mw_kv_register") { () throws(MemWallError) in
        let entry = try KVHandles.caches.object(kv)
        let r = try Regions.table.object(region)
        try r.withRegistrations { (regs: inout RegionEntry.Registrations) throws(MemWallError) in
            try entry.register(r, &regs)
        }
    }
}

@c @implementation
public func mw_kv_deregister(_ kv: OpaquePointer?, _ region: OpaquePointer?) -> Int32 {
    ABI.run("mw_kv_deregister") { () throws(MemWallError) in
        let entry = try KVHandles.caches.object(kv)
        let r = try Regions.table.object(region)
        try r.withRegistrations { (regs: inout RegionEntry.Registrations) throws(MemWallError) in
            try entry.deregister(r, &regs)
        }
    }
}

@c @implementation
public func mw_kv_lookup(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                         _ hitCountOut: UnsafeMutablePointer<Int>?, _ tiersOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    ABI.run("mw_kv_lookup") { () throws(MemWallError) in
        let out = try ABI.required(hitCountOut, "hit_count_out")
        let entry = try KVHandles.caches.object(kv)
        let k = try blockKeys(keys, keyCount)
        let found = entry.cache.lookup(k)
        out.pointee = found.count
        if let tiersOut {
            for i in 0..<k.count { tiersOut[i] = i < found.tiers.count ? Int32(clamping: found.tiers[i]) : -1 }
        }
    }
}

@c @implementation
public func mw_kv_store(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                        _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ parent: UnsafePointer<UInt64>?,
                        _ writePolicy: Int32) -> Int32 {
    ABI.run("mw_kv_store") { () throws(MemWallError) in
        try startStore(kv, keys, keyCount, blocks, parent, writePolicy).wait().check()
    }
}

@c @implementation
public func mw_kv_load(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                       _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ loadPolicy: Int32,
                       _ timeoutNs: UInt64) -> Int32 {
    ABI.run("mw_kv_load") { () throws(MemWallError) in
        try startLoad(kv, keys, keyCount, blocks, loadPolicy, timeoutNs).wait().check()
    }
}

@c @implementation
public func mw_kv_store_async(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                              _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ parent: UnsafePointer<UInt64>?,
                              _ writePolicy: Int32, _ transferOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_kv_store_async") { () throws(MemWallError) in
        let out = try ABI.required(transferOut, "transfer_out")
        let transfer = try startStore(kv, keys, keyCount, blocks, parent, writePolicy)
        out.pointee = try KVHandles.transfers.insert(TransferEntry(transfer))
    }
}

@c @implementation
public func mw_kv_load_async(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                             _ blocks: UnsafePointer<UnsafeMutableRawPointer?>?, _ loadPolicy: Int32,
                             _ timeoutNs: UInt64, _ transferOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_kv_load_async") { () throws(MemWallError) in
        let out = try ABI.required(transferOut, "transfer_out")
        let transfer = try startLoad(kv, keys, keyCount, blocks, loadPolicy, timeoutNs)
        out.pointee = try KVHandles.transfers.insert(TransferEntry(transfer))
    }
}

@c @implementation
public func mw_kv_prefetch(_ kv: OpaquePointer?, _ keys: UnsafePointer<UInt64>?, _ keyCount: Int,
                           _ transferOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    ABI.run("mw_kv_prefetch") { () throws(MemWallError) in
        let out = try ABI.required(transferOut, "transfer_out")
        let entry = try KVHandles.caches.object(kv)
        let transfer = try entry.cache.startPrefetch(try blockKeys(keys, keyCount))
        out.pointee = try KVHandles.transfers.insert(TransferEntry(transfer))
    }
}

@c @implementation
public func mw_transfer_poll(_ transfer: OpaquePointer?) -> Int32 {
    var done: Int32 = 0
    let status = ABI.run("mw_transfer_poll") { () throws(MemWallError) in
        done = try KVHandles.transfers.object(transfer).transfer.isDone ? 1 : 0
    }
    return status == MW_OK ? done : status
}

@c @implementation
public func mw_transfer_wait(_ transfer: OpaquePointer?, _ timeoutNs: Int64) -> Int32 {
    ABI.run("mw_transfer_wait") { () throws(MemWallError) in
        let t = try KVHandles.transfers.object(transfer).transfer
        if timeoutNs < 0 || UInt64(timeoutNs) >= KVHandles.noLimit {
            _ = t.wait()
        } else if t.wait(timeoutNanoseconds: UInt64(timeoutNs)) == nil {
            throw MemWallError(.timedOut, "the transfer is still in flight after \(timeoutNs) ns; wait again or poll")
        }
    }
}

/// A finished transfer's result; `busy` while it is in flight.
private func finished(_ transfer: OpaquePointer?) throws(MemWallError) -> KVTransferResult {
    let t = try KVHandles.transfers.object(transfer).transfer
    guard t.isDone, let result = t.wait(timeoutNanoseconds: 0) else {
        throw MemWallError(.busy, "the transfer is still in flight; mw_transfer_wait for it first")
    }
    return result
}

@c @implementation
public func mw_transfer_result(_ transfer: OpaquePointer?, _ resultOut: UnsafeMutablePointer<mw_transfer_summary>?) -> Int32 {
    ABI.run("mw_transfer_result") { () throws(MemWallError) in
        let out = try ABI.required(resultOut, "result_out")
        let r = try finished(transfer)
        out.pointee = mw_transfer_summary(blocks: r.blocks, failed: r.failed.count, bytes: UInt64(clamping: r.bytes))
    }
}

@c @implementation
public func mw_transfer_failure(_ transfer: OpaquePointer?, _ i: Int,
                                _ failureOut: UnsafeMutablePointer<mw_block_failure>?) -> Int32 {
    ABI.run("mw_transfer_failure") { () throws(MemWallError) in
        let out = try ABI.required(failureOut, "failure_out")
        let r = try finished(transfer)
        guard i >= 0, i < r.failed.count else {
            throw .invalid("failure index", UInt(bitPattern: i), expected: "0 ..< \(r.failed.count) (the transfer's failed count)")
        }
        let f = r.failed[i]
        out.pointee.index = f.index
        out.pointee.key = f.key.rawValue
        out.pointee.status = ABI.status(of: f.error.code)
        copyMessage("block \(f.key) (#\(f.index) of \(r.blocks)): \(f.error.description)", into: &out.pointee.message)
    }
}

/// `text` into a fixed C char array, NUL-terminated, cut at a character boundary.
private func copyMessage<T>(_ text: String, into field: inout T) {
    withUnsafeMutableBytes(of: &field) { raw in
        guard raw.count > 0 else { return }
        var bytes = Array(text.utf8.prefix(raw.count - 1))
        while let last = bytes.last, bytes.count == raw.count - 1, last & 0xC0 == 0x80 { bytes.removeLast() }
        if bytes.count == raw.count - 1, let last = bytes.last, last >= 0xC0 { bytes.removeLast() }
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
}

@c @implementation
public func mw_transfer_close(_ transfer: OpaquePointer?) -> Int32 {
    ABI.run("mw_transfer_close") { () throws(MemWallError) in
        _ = try KVHandles.transfers.remove(transfer) { (t: TransferEntry) throws(MemWallError) in
            guard t.transfer.isDone else {
                throw MemWallError(.busy, "the transfer is still in flight and its buffers in use; mw_transfer_wait for it, then close it")
            }
        }
    }
}

@c @implementation
public func mw_kv_event_fd(_ kv: OpaquePointer?, _ fdOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    ABI.run("mw_kv_event_fd") { () throws(MemWallError) in
        let out = try ABI.required(fdOut, "fd_out")
        out.pointee = try KVHandles.caches.object(kv).cache.completionFileDescriptor
    }
}

/// `mw_kv_stats_json`'s document (schema memwall.kv-stats/1).
private struct KVStatsDocument: Encodable {
    struct Tier: Encodable {
        var name: String
        var kind: String
        var capacityBlocks: Int
        var occupancyBlocks: Int
        var hits: Int
    }
    var schema = "memwall.kv-stats/1"
    var blockBytes: Int
    var blockTokens: Int
    var tiers: [Tier]
    var lookups: Int
    var hits: Int
    var misses: Int
    var hitRate: Double
    var stores: Int
    var promotions: Int
    var demotions: Int
    var drops: Int
    var uncached: Int
    var copiesOnWrite: Int
    var bytesMovedByPath: [String: Int]
    var eventsDropped: Int
    /// The host-wide pool of a `pool:NAME` tier: what this cache found in, read from and wrote to it.
    var shared: Shared?

    struct Shared: Encodable {
        var pool: String
        var position: Int
        var lookupHits: Int
        var blocksLoaded: Int
        var blocksStored: Int
    }
}

@c @implementation
public func mw_kv_stats_json(_ kv: OpaquePointer?, _ jsonOut: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    ABI.run("mw_kv_stats_json") { () throws(MemWallError) in
        let out = try ABI.required(jsonOut, "json_out")
        let entry = try KVHandles.caches.object(kv)
        let s = entry.cache.statistics
        let tiers = entry.cache.tiers.enumerated().map { i, t in
            KVStatsDocument.Tier(name: t.name, kind: t.kind.rawValue, capacityBlocks: t.capacityBlocks,
                                 occupancyBlocks: s.occupancy.indices.contains(i) ? s.occupancy[i] : 0,
                                 hits: s.hitsByTier.indices.contains(i) ? s.hitsByTier[i] : 0)
        }
        let document = KVStatsDocument(blockBytes: entry.blockBytes, blockTokens: entry.blockTokens, tiers: tiers,
                                       lookups: s.lookups, hits: s.hits, misses: s.misses, hitRate: s.hitRate,
                                       stores: s.stores, promotions: s.promotions, demotions: s.demotions,
                                       drops: s.drops, uncached: s.uncached, copiesOnWrite: s.copiesOnWrite,
                                       bytesMovedByPath: entry.cache.bytesMovedByPath, eventsDropped: entry.eventsDropped,
                                       shared: entry.cache.shared.map { p in
                                           let st = entry.cache.sharedStatistics
                                           return KVStatsDocument.Shared(pool: p.name, position: entry.cache.sharedPosition ?? 0,
                                                                         lookupHits: st.lookupHits, blocksLoaded: st.blocksLoaded,
                                                                         blocksStored: st.blocksStored)
                                       })
        let text: String
        do { text = try StableJSON.text(document) } catch {
            throw MemWallError(.internalFailure, "cannot encode the KV statistics: \(error)")
        }
        try ReturnedStrings.hand(text, to: out)
    }
}

@c @implementation
public func mw_kv_events_json(_ kv: OpaquePointer?, _ jsonOut: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    ABI.run("mw_kv_events_json") { () throws(MemWallError) in
        let out = try ABI.required(jsonOut, "json_out")
        let entry = try KVHandles.caches.object(kv)
        let events = entry.drainEvents()
        var items: [JSONValue] = []
        items.reserveCapacity(events.count)
        func stored(_ key: BlockKey, _ parent: BlockKey?, _ tier: Int) -> JSONValue {
            .object([("type", .string("BlockStored")), ("block_hashes", .array([.uint(key.rawValue)])),
                     ("parent_block_hash", parent.map { .uint($0.rawValue) } ?? .null),
                     ("token_ids", .null), ("block_size", .int(entry.blockTokens)), ("lora_id", .null),
                     ("medium", .string(entry.tierName(tier)))])
        }
        func removed(_ key: BlockKey, _ tier: Int) -> JSONValue {
            .object([("type", .string("BlockRemoved")), ("block_hashes", .array([.uint(key.rawValue)])),
                     ("medium", .string(entry.tierName(tier)))])
        }
        for e in events {
            switch e {
            case let .stored(key, parent, tier, _):
                items.append(stored(key, parent, tier))
            case let .moved(key, parent, from, to):
                // vLLM has no "moved": the block appears in its new medium before it leaves the
                // old one, so a consumer never sees it absent.
                items.append(stored(key, parent, to))
                items.append(removed(key, from))
            case let .removed(key, _, tier):
                items.append(removed(key, tier))
            }
        }
        try ReturnedStrings.hand(JSONValue.array(items).serialized(), to: out)
    }
}
