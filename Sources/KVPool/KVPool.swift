#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import KVPlacement
import MemWallCore
import NUMATransport
import Synchronization
import Transport

/// A host-wide KV-block pool in shared memory: one copy of each block for
/// every process on the host, with no coordinator.
///
/// The pool is a named segment (`/dev/shm/memwall-pool-NAME`, optionally
/// bound to a NUMA node such as a CPU-less CXL node) holding its own index
/// (key → slot, per-slot state, references, checksum, generation, parent
/// link) and the block slots. Any process attaches by name and works on it
/// directly: lookups and reads take no lock; reserving and evicting take a
/// robust process-shared mutex for microseconds; no message goes anywhere.
/// See docs/kv-pool.md for the layout and the protocol.
///
/// - **Store** (``store(_:from:after:)``): reserve (under the lock) → copy the
///   caller's bytes in, computing their checksum in the same pass → publish with
///   release ordering. A reader never sees a block before it is published.
///   Blocks already there (or being written by another live process) are skipped:
///   the pool holds one copy.
/// - **Load** (``load(_:into:)``) copies blocks out, checking each checksum in
///   the same pass; **view** (``view(_:)``) gives the bytes in place, valid while
///   the view lives.
/// - **Crash safety**: every attached process is recorded (pid, start time,
///   epoch); references are counted per process and reservations name their
///   owner, so whatever a process that died held — at any instruction — is
///   found and reclaimed by the next process that attaches or needs room.
/// - **Eviction** takes only published blocks nobody references and with no
///   cached child (chains leave tail first), by a clock sweep.
///
/// Thread-safe. ``close()`` detaches; a pool dropped without it detaches in `deinit`.
public final class KVPool: Sendable {
    /// The pool's name (its segment is ``path``).
    public let name: String
    /// Bytes per block.
    public let blockBytes: Int
    /// Blocks the pool holds.
    public let capacityBlocks: Int
    /// Processes that can be attached at once.
    public let processSlots: Int
    let tables: PoolTables
    /// This process's entry in the process table.
    let me: Int
    let identity: PoolProcessIdentity
    /// Bit 0: closed; the rest: twice the operations and views in flight.
    private let lifecycle = Atomic<UInt64>(0)
    private let detached = Atomic<Bool>(false)
    private let pause: (@Sendable (KVPoolTestPoint) -> Void)?

    /// The segment file.
    public var path: String { tables.segment.path }
    /// Where the pool's pages are meant to be (node, or unbound host memory; "emulated" on a one-node host).
    public var placement: MemoryPlacement { tables.segment.region.placement }
    /// The NUMA node the pool's pages were bound to when it was created, if any.
    public var node: Int? { tables.segment.node }
    /// The device-DAX device the pool lives on, if it is on one.
    public var device: String? { tables.segment.device }

    /// Directory of pool segments: `$MEMWALL_POOL_DIR`, else `/dev/shm` (a tmpfs every process of the host sees).
    public static var directory: String {
        if let d = getenv("MEMWALL_POOL_DIR"), let s = String(validatingCString: d), !s.isEmpty { return s }
        return "/dev/shm"
    }

    /// The segment file of pool `name`.
    /// - Throws: `invalidArgument` for a name that is not 1–64 letters, digits, '.', '_' or '-'.
    public static func path(ofPool name: String) throws(MemWallError) -> String {
        try PoolSegment.path(forName: name, directory: directory)
    }

    /// The segment size that holds exactly `blocks` blocks of `blockBytes` for
    /// `processes` attached processes (the `bytes` to give ``create(name:bytes:blockBytes:node:processes:allocator:)``).
    /// Arguments out of range give the size for the nearest valid ones; `create` checks them.
    public static func segmentBytes(blocks: Int, blockBytes: Int, processes: Int = 32) -> Int {
        PoolLayout(blockBytes: min(max(blockBytes, 4096), 1 << 30), slotCount: min(max(blocks, 1), PoolLayout.maximumSlots),
                   processSlots: min(max(processes, 1), PoolLayout.maximumProcesses)).usedBytes
    }

    // MARK: Create, attach, destroy

    /// Creates pool `name` and attaches this process to it.
    /// - Parameters:
    ///   - bytes: Size of the whole segment; the number of blocks is what fits
    ///     beside the tables (see ``capacityBlocks``).
    ///   - blockBytes: Bytes per block, a multiple of 4096.
    ///   - node: NUMA node to bind the pages to (a CPU-less CXL node), or nil
    ///     for wherever the kernel puts them. On a one-node host the emulated far
    ///     node is accepted and labelled emulated.
    ///   - processes: Processes that can be attached at once (1…254; each costs 4 bytes per block).
    /// - Throws: `alreadyExists` when the name is taken (it is never overwritten);
    ///   `invalidArgument` for a bad name or size; `notFound` for an unknown node;
    ///   `noMemoryOnNode` when the node or the directory has no room.
    public static func create(name: String, bytes: Int, blockBytes: Int, node: Int? = nil,
                              processes: Int = 32,
                              allocator: NUMAAllocator = NUMAAllocator()) throws(MemWallError) -> KVPool {
        let path = try path(ofPool: name)
        let segment: PoolSegment
        do throws(MemWallError) {
            segment = try PoolSegment.create(path: path, segmentBytes: bytes, blockBytes: blockBytes,
                                             processSlots: processes, node: node, allocator: allocator)
        } catch where error.code == .alreadyExists {
            throw MemWallError(.alreadyExists, "KV pool '\(name)' exists already (\(path)); attach to it, or destroy it first (memwall pool destroy \(name))")
        }
        return try KVPool(name: name, segment: segment, pause: nil)
    }

    /// Creates pool `name` on a device-DAX device (`/dev/daxN.M`, e.g. a CXL memory region)
    /// and attaches this process to it. The segment is the device itself, mapped directly;
    /// a name file under ``directory`` points to it, so processes attach by name as usual.
    /// - Parameters:
    ///   - bytes: Use at most this much of the device (nil: all of it).
    ///   - allowWrite: The user's consent to overwrite the device: whatever it held is destroyed.
    /// - Throws: `alreadyExists` without `allowWrite`, or when the name is taken; `invalidArgument`
    ///   for a path that is not a DAX device; `busy` when another process holds the device.
    public static func create(name: String, device: String, bytes: Int? = nil, blockBytes: Int, processes: Int = 32,
                              allowWrite: Bool) throws(MemWallError) -> KVPool {
        let path = try path(ofPool: name)
        guard allowWrite else {
            throw MemWallError(.alreadyExists,
                "\(device) exists and a pool on it destroys what it holds; pass --allow-write to let this run overwrite it")
        }
        let segment: PoolSegment
        do throws(MemWallError) {
            segment = try PoolDevice.create(path: path, device: device, bytes: bytes, blockBytes: blockBytes, processSlots: processes)
        } catch where error.code == .alreadyExists {
            throw MemWallError(.alreadyExists, "KV pool '\(name)' exists already (\(path)); attach to it, or destroy it first (memwall pool destroy \(name))")
        }
        return try KVPool(name: name, segment: segment, pause: nil)
    }

    /// Attaches this process to pool `name`. Reclaims whatever processes that
    /// died held (their references and half-written blocks) before returning.
    /// - Throws: `notFound`; `corrupted` when the segment fails its checks;
    ///   `busy` when every process slot is taken by a live process.
    public static func attach(name: String) throws(MemWallError) -> KVPool {
        try attach(name: name, pause: nil)
    }

    /// ``attach(name:)`` with a hook called at points a crash test kills the process at.
    package static func attach(name: String, pause: (@Sendable (KVPoolTestPoint) -> Void)?) throws(MemWallError) -> KVPool {
        let path = try path(ofPool: name)
        return try KVPool(name: name, segment: try PoolSegment.open(path: path, name: name), pause: pause)
    }

    /// Removes pool `name`.
    /// - Parameter force: Remove the name even while processes are attached
    ///   (they keep using the segment; its memory goes when the last detaches).
    /// - Throws: `notFound`; `busy` naming an attached process (without `force`);
    ///   `invalidArgument` when the file is not a memwall pool (it is left alone).
    public static func destroy(name: String, force: Bool = false) throws(MemWallError) {
        try PoolSegment.destroy(path: try path(ofPool: name), name: name, force: force)
    }

    /// The state of pool `name`, read without attaching (nothing is reclaimed;
    /// dead processes and what they hold are reported as such).
    /// - Parameter pages: Also ask the kernel where the segment's pages are (`move_pages`).
    public static func status(name: String, pages: Bool = true) throws(MemWallError) -> KVPoolStatus {
        let path = try path(ofPool: name)
        let tables = PoolTables(segment: try PoolSegment.open(path: path, name: name))
        return try tables.withLock { () throws(MemWallError) in try tables.snapshot(name: name, pages: pages) }
    }

    private init(name: String, segment: PoolSegment, pause: (@Sendable (KVPoolTestPoint) -> Void)?) throws(MemWallError) {
        guard let identity = PoolProcessIdentity.current() else {
            throw MemWallError(.unsupported, "cannot read /proc/self/stat: a KV pool needs procfs to tell live processes from dead ones")
        }
        let tables = PoolTables(segment: segment)
        let me = try tables.withLock { () throws(MemWallError) -> Int in
            _ = tables.reclaimDead(except: nil)
            guard let free = (0..<tables.processSlots).first(where: { !tables.isAttached($0) }) else {
                throw MemWallError(.busy, "all \(tables.processSlots) process slots of KV pool '\(name)' are taken by live processes; detach one, or create the pool with more --processes")
            }
            let e = tables.process(free)
            for s in 0..<tables.slotCount where memwall_shared_load32_relaxed(tables.hold(free, s)) != 0 {
                memwall_shared_store32(tables.hold(free, s), 0)
            }
            let epoch = memwall_shared_add(memwall_pool_header_next_epoch(tables.header), 1)
            memwall_shared_store_relaxed(memwall_pool_process_pid(e), UInt64(UInt32(bitPattern: identity.pid)))
            memwall_shared_store_relaxed(memwall_pool_process_start_time(e), identity.startTime)
            memwall_shared_store_relaxed(memwall_pool_process_epoch(e), epoch)
            memwall_shared_store_relaxed(memwall_pool_process_attached(e), WallClock.unixNanoseconds())
            memwall_shared_store(memwall_pool_process_state(e), epoch << 8 | 1)
            return free
        }
        self.name = name
        self.tables = tables
        self.me = me
        self.identity = identity
        self.pause = pause
        blockBytes = tables.blockBytes
        capacityBlocks = tables.slotCount
        processSlots = tables.processSlots
    }

    deinit { detach() }

    /// Detaches: later calls fail with `misuse`. Views still open keep the
    /// process attached until they are closed. A second close does nothing.
    public func close() {
        let before = lifecycle.bitwiseOr(1, ordering: .acquiringAndReleasing).oldValue
        if before == 0 { detach() }
    }

    /// Leaves the process table (once): references still counted are dropped,
    /// counters folded into the pool's, the file's lock released.
    private func detach() {
        guard !detached.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? tables.withLock { () throws(MemWallError) in
            // Only this process writes its entry; it is still ours unless someone judged us dead.
            if tables.isAttached(me) && tables.identity(me) == identity {
                for s in 0..<tables.slotCount where memwall_shared_load32_relaxed(tables.hold(me, s)) != 0 {
                    memwall_shared_store32(tables.hold(me, s), 0)
                }
                tables.retire(process: me)
            }
        }
        tables.segment.closeFile()
    }

    /// Counts an operation (or view) in flight; false once closed.
    private func enter() -> Bool {
        let now = lifecycle.wrappingAdd(2, ordering: .acquiring).newValue
        if now & 1 == 0 { return true }
        leave()
        return false
    }

    private func leave() {
        if lifecycle.wrappingSubtract(2, ordering: .acquiringAndReleasing).newValue == 1 { detach() }
    }

    private func closedError() -> MemWallError {
        MemWallError(.misuse, "KV pool '\(name)' was closed in this process; attach again")
    }

    @inline(__always)
    private func count(_ c: KVPoolCounter, _ n: Int = 1) {
        memwall_shared_add(memwall_pool_process_counter(tables.process(me), Int32(c.rawValue)), UInt64(n))
    }

    // MARK: Lookup

    /// Leading `keys` whose blocks are published in the pool. Takes no lock
    /// and no reference (a block found may be evicted before it is loaded: the
    /// load then reports it `notFound`). Marks the blocks found as recently used.
    /// - Throws: `misuse` after ``close()``.
    public func lookup(_ keys: [BlockKey]) throws(MemWallError) -> KVLookup {
        guard lifecycle.load(ordering: .relaxed) & 1 == 0 else { throw closedError() }
        var n = 0
        for k in keys {
            guard let (s, w) = tables.find(k.rawValue), PoolTables.kind(w) == PoolTables.published else { break }
            let used = memwall_pool_slot_used(tables.slot(s))
            if memwall_shared_load32_relaxed(used) == 0 { memwall_shared_store32_relaxed(used, 1) }
            n += 1
        }
        count(.lookups, keys.count)
        count(.hits, n)
        return KVLookup(count: n, tiers: Array(repeating: 0, count: n))
    }

    // MARK: References

    private enum Acquired {
        case held(slot: Int, state: UInt64)
        case notFound
        case busy
    }

    /// Takes a reference on `key`'s published block (see ``PoolTables``).
    private func acquire(_ key: BlockKey) -> Acquired {
        for _ in 0..<16 {
            guard let (s, w) = tables.find(key.rawValue) else { return .notFound }
            guard PoolTables.kind(w) == PoolTables.published else { return .notFound }
            let h = tables.hold(me, s)
            _ = memwall_shared_add32_seq(h, 1)
            if memwall_shared_load_seq(tables.state(s)) == w {
                let used = memwall_pool_slot_used(tables.slot(s))
                if memwall_shared_load32_relaxed(used) == 0 { memwall_shared_store32_relaxed(used, 1) }
                return .held(slot: s, state: w)
            }
            _ = memwall_shared_sub32(h, 1)
        }
        return .busy
    }

    fileprivate func releaseReference(_ s: Int) {
        _ = memwall_shared_sub32(tables.hold(me, s), 1)
        leave()
    }

    // MARK: Load and view

    /// Copies the blocks `keys` into the caller's buffers (one per key), one
    /// pass each that copies and checksums, and checks every checksum.
    /// - Returns: Per-block failures: `notFound` (not in the pool, or evicted
    ///   meanwhile), `corrupted` (checksum mismatch), `busy` (it kept changing under us).
    /// - Throws: Before anything moves: `invalidArgument` when keys and buffers
    ///   differ in number, `outOfBounds` for a buffer that does not hold a block; `misuse` after close.
    public func load(_ keys: [BlockKey], into buffers: [KVBuffer]) throws(MemWallError) -> KVTransferResult {
        try checkBuffers(keys.count, buffers, "load")
        return try withExtendedLifetime(buffers) { () throws(MemWallError) in
            try load(keys, into: buffers.map { $0.region.baseAddress + $0.offset })
        }
    }

    /// ``load(_:into:)`` into raw destinations of ``blockBytes`` each (the C ABI's path, and a
    /// ``KVCache``'s when the pool is its shared tier); each must hold ``blockBytes`` writable bytes.
    public func load(_ keys: [BlockKey], into destinations: [UnsafeMutableRawPointer]) throws(MemWallError) -> KVTransferResult {
        guard keys.count == destinations.count else {
            throw MemWallError(.invalidArgument, "load got \(keys.count) keys and \(destinations.count) buffers; give one buffer per key")
        }
        guard enter() else { throw closedError() }
        defer { leave() }
        var failed: [KVBlockFailure] = []
        var bytes = 0
        var corrupt = 0
        for (i, key) in keys.enumerated() {
            switch acquire(key) {
            case .notFound:
                failed.append(KVBlockFailure(index: i, key: key, error: MemWallError(.notFound, "not in KV pool '\(name)'")))
            case .busy:
                failed.append(KVBlockFailure(index: i, key: key, error: MemWallError(.busy, "its slot in KV pool '\(name)' kept changing while it was read")))
            case .held(let s, _):
                let expected = memwall_shared_load_relaxed(memwall_pool_slot_checksum(tables.slot(s)))
                let sum = memwall_copy_checksum(destinations[i], tables.payload(s), blockBytes, 0)
                _ = memwall_shared_sub32(tables.hold(me, s), 1)
                if sum == expected {
                    bytes += blockBytes
                } else {
                    corrupt += 1
                    failed.append(KVBlockFailure(index: i, key: key, error: MemWallError(.corrupted,
                        "its bytes in KV pool '\(name)' do not match their checksum (\(String(sum, radix: 16)) != \(String(expected, radix: 16)))")))
                }
            }
        }
        count(.loads, bytes / blockBytes)
        if corrupt > 0 { count(.corrupt, corrupt) }
        return KVTransferResult(blocks: keys.count, failed: failed, bytes: bytes)
    }

    /// The block `key` in place, without a copy: its bytes stay valid, and the
    /// block stays in the pool, until the view is closed (or dropped).
    /// - Throws: `notFound` when the block is not published; `busy` when its slot
    ///   kept changing; `misuse` after close.
    public func view(_ key: BlockKey) throws(MemWallError) -> KVPoolView {
        guard enter() else { throw closedError() }
        pause?(.beforeView)
        switch acquire(key) {
        case .notFound:
            leave()
            throw MemWallError(.notFound, "block \(key) is not in KV pool '\(name)'")
        case .busy:
            leave()
            throw MemWallError(.busy, "block \(key): its slot in KV pool '\(name)' kept changing while it was read; try again")
        case .held(let s, _):
            count(.views)
            let v = KVPoolView(pool: self, slot: s, key: key,
                               bytes: UnsafeRawBufferPointer(start: tables.payload(s), count: blockBytes),
                               checksum: memwall_shared_load_relaxed(memwall_pool_slot_checksum(tables.slot(s))))
            pause?(.viewHeld)
            return v
        }
    }

    // MARK: Store

    /// Writes the caller's buffers (one per key) as the blocks `keys`, a
    /// prefix chain whose first block's parent is `parent`.
    ///
    /// Reserves every block not in the pool under the lock (evicting
    /// unreferenced blocks tail first when the pool is full), then — without
    /// the lock — copies each in with non-temporal stores while computing its
    /// checksum, and publishes it. Blocks already published, or being written
    /// by another live process, are skipped without error: the pool keeps one
    /// copy of each block. A reservation of a process that died is reclaimed
    /// and the block written here.
    /// - Returns: Per-block failures: `outOfBounds` when no slot could be had
    ///   (every block referenced, being written, or a parent of a cached block;
    ///   the rest of the chain fails with it).
    /// - Throws: Before anything moves: as ``load(_:into:)``.
    public func store(_ keys: [BlockKey], from buffers: [KVBuffer], after parent: BlockKey? = nil) throws(MemWallError) -> KVTransferResult {
        try checkBuffers(keys.count, buffers, "store")
        return try withExtendedLifetime(buffers) { () throws(MemWallError) in
            try store(keys, from: buffers.map { UnsafeRawPointer($0.region.baseAddress + $0.offset) }, after: parent)
        }
    }

    /// ``store(_:from:after:)`` from raw sources of ``blockBytes`` each (the C ABI's path, and a
    /// ``KVCache``'s when the pool is its shared tier); each must hold ``blockBytes`` readable bytes.
    public func store(_ keys: [BlockKey], from sources: [UnsafeRawPointer], after parent: BlockKey?) throws(MemWallError) -> KVTransferResult {
        guard keys.count == sources.count else {
            throw MemWallError(.invalidArgument, "store got \(keys.count) keys and \(sources.count) buffers; give one buffer per key")
        }
        guard enter() else { throw closedError() }
        defer { leave() }
        var failed: [KVBlockFailure] = []
        var planned: [(index: Int, slot: Int, state: UInt64)] = []
        var duplicates = 0
        try tables.withLock { () throws(MemWallError) in
            pause?(.lockHeld)
            var parentSlot: Int? = parent.flatMap { tables.findLocked($0.rawValue)?.slot }
            var parentKey = parent?.rawValue ?? 0
            var reclaimedOnce = false
            for (i, key) in keys.enumerated() {
                defer { parentKey = key.rawValue }
                if let (s, w) = tables.findLocked(key.rawValue) {
                    let owner = PoolTables.owner(w)
                    if PoolTables.kind(w) == PoolTables.published || owner == me || owner >= processSlots
                        || tables.identity(owner).liveness == .alive {
                        duplicates += 1
                        parentSlot = s
                        continue
                    }
                    tables.reclaim(process: owner)   // a dead writer's half-written block: ours to write now
                }
                var got = tables.popFree() ?? tables.evictOne()
                if got == nil && !reclaimedOnce {
                    reclaimedOnce = true
                    if tables.reclaimDead(except: me).processes > 0 { got = tables.popFree() ?? tables.evictOne() }
                }
                guard let (s, w) = got,
                      let mine = tables.reserve(s, from: w, key: key.rawValue, parentKey: parentKey, parentSlot: parentSlot,
                                                owner: me, pid: identity.pid) else {
                    for j in i..<keys.count {
                        failed.append(KVBlockFailure(index: j, key: keys[j], error: MemWallError(.outOfBounds,
                            "KV pool '\(name)' has no slot to give: every block is referenced, being written, or the parent of a cached block")))
                    }
                    break
                }
                if got.map({ PoolTables.kind($0.state) == PoolTables.evicting }) == true { count(.evictions) }
                planned.append((i, s, mine))
                parentSlot = s
            }
        }
        var bytes = 0
        for (n, p) in planned.enumerated() {
            let destination = tables.payload(p.slot)
            if n == 0, pause != nil {
                memcpy(destination, sources[p.index], blockBytes / 2)
                pause?(.writing)
            }
            let sum = memwall_copy_checksum(destination, sources[p.index], blockBytes, 1)
            let sp = tables.slot(p.slot)
            memwall_shared_store_relaxed(memwall_pool_slot_checksum(sp), sum)
            memwall_shared_store_relaxed(memwall_pool_slot_stored_ns(sp), WallClock.unixNanoseconds())
            let published = PoolTables.word(PoolTables.published, owner: 0, generation: PoolTables.generation(p.state))
            if memwall_shared_cas(tables.state(p.slot), p.state, published) {
                bytes += blockBytes
            } else {
                failed.append(KVBlockFailure(index: p.index, key: keys[p.index], error: MemWallError(.busy,
                    "its reservation in KV pool '\(name)' was taken away before it was published (this process was judged dead)")))
            }
        }
        count(.stores, bytes / blockBytes)
        if duplicates > 0 { count(.duplicates, duplicates) }
        failed.sort { $0.index < $1.index }
        return KVTransferResult(blocks: keys.count, failed: failed, bytes: bytes)
    }

    private func checkBuffers(_ keys: Int, _ buffers: [KVBuffer], _ what: String) throws(MemWallError) {
        guard keys == buffers.count else {
            throw MemWallError(.invalidArgument, "\(what) got \(keys) keys and \(buffers.count) buffers; give one buffer per key")
        }
        for (i, b) in buffers.enumerated() where b.offset < 0 || b.offset > b.region.byteCount - blockBytes {
            throw MemWallError(.outOfBounds, "\(what): buffer #\(i) at offset \(b.offset) of \(b.region) does not hold a \(ByteCount(blockBytes)) block")
        }
    }

    // MARK: Reclaim and status

    /// Reclaims every attached process that is no longer running (attach and a
    /// full pool do this by themselves).
    /// - Returns: Processes, references and reservations reclaimed.
    @discardableResult
    public func reclaimDeadProcesses() throws(MemWallError) -> KVPoolReclaim {
        guard enter() else { throw closedError() }
        defer { leave() }
        let r = try tables.withLock { () throws(MemWallError) in tables.reclaimDead(except: me) }
        return KVPoolReclaim(processes: r.processes, references: r.references, reservations: r.reservations)
    }

    /// The pool's state now (see ``KVPoolStatus``), under the lock.
    public func status(pages: Bool = false) throws(MemWallError) -> KVPoolStatus {
        guard enter() else { throw closedError() }
        defer { leave() }
        return try tables.withLock { () throws(MemWallError) in try tables.snapshot(name: name, pages: pages) }
    }
}

/// The pool as a ``KVCache`` tier (`pool:NAME` in its tier list): lookups, loads and stores
/// as above, on the pool every attached process shares.
extension KVPool: SharedKVTier {}

/// A published block read in place: ``bytes`` point into the shared segment
/// and stay valid — the block cannot be evicted — until the view is closed
/// (``close()``, or the end of its lifetime: it is `~Copyable`, so exactly one
/// owner releases it exactly once). It may be handed to another thread or task
/// (`@unchecked`: ownership is unique, the bytes are an immutable pointer into the
/// mapping the pool keeps alive, and releasing is one atomic on this process's row).
public struct KVPoolView: ~Copyable, @unchecked Sendable {
    /// The block.
    public let key: BlockKey
    /// Its bytes, in the pool's pages (read-only: a published block never changes).
    public let bytes: UnsafeRawBufferPointer
    /// The checksum it was published with (`memwall_checksum`).
    public let checksum: UInt64
    private let pool: KVPool
    private let slot: Int

    fileprivate init(pool: KVPool, slot: Int, key: BlockKey, bytes: UnsafeRawBufferPointer, checksum: UInt64) {
        self.pool = pool
        self.slot = slot
        self.key = key
        self.bytes = bytes
        self.checksum = checksum
    }

    /// Recomputes the checksum over the bytes in place (one read pass) and compares.
    public func verify() -> Bool { TierStore.checksum(bytes) == checksum }

    /// Releases the block (the bytes must not be used afterwards).
    public consuming func close() {}

    deinit { pool.releaseReference(slot) }
}

/// Points where a crash test stops a process (`memwall pool worker --stop-at`).
package enum KVPoolTestPoint: String, Sendable, CaseIterable {
    /// Holding the pool lock, before reserving.
    case lockHeld = "lock"
    /// Half of a reserved block's bytes written, not published.
    case writing = "writing"
    /// Before taking a view's reference.
    case beforeView = "before-view"
    /// Holding a view's reference.
    case viewHeld = "view"
}

/// What ``KVPool/reclaimDeadProcesses()`` found.
public struct KVPoolReclaim: Sendable, Hashable, Codable {
    /// Process entries of processes no longer running.
    public var processes: Int
    /// References they held.
    public var references: Int
    /// Blocks they had reserved and not published (freed, never served).
    public var reservations: Int
}

/// The per-process counters a pool keeps (words of `memwall_pool_process.counters`).
enum KVPoolCounter: Int, CaseIterable {
    case lookups = 0, hits, stores, duplicates, loads, views, evictions, corrupt

    var label: String {
        switch self {
        case .lookups: "lookups"
        case .hits: "hits"
        case .stores: "stores"
        case .duplicates: "duplicates"
        case .loads: "loads"
        case .views: "views"
        case .evictions: "evictions"
        case .corrupt: "corrupt"
        }
    }
}
