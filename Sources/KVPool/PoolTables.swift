#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import KVPlacement
import MemWallCore

/// The shared structures of one mapped segment and every algorithm that
/// reads or changes them: the key table, slot states, references, the pool
/// lock, reclaiming dead processes, repairing after a lock owner died, and the
/// snapshot `pool stat` prints. No process registration (``KVPool`` adds it).
///
/// **Who changes what.**
/// - Under the pool lock (a robust process-shared mutex): the key table, the
///   free-slot stack, the clock hand, parent/child links, the process table,
///   and every slot transition except one: free → reserved, published →
///   evicting → reserved/free, reserved (dead owner) → free.
/// - Without the lock: reserved → published by the slot's owner (a release
///   CAS, after its bytes and checksum are written); references, which each
///   process counts in its own row (`holds[p][slot]`); the clock bit.
/// - Read without the lock: lookups, and taking a reference.
///
/// **A reference** is taken by incrementing `holds[me][slot]` and then
/// re-reading the slot's state word (both sequentially consistent); eviction
/// CASes the state to EVICTING and then reads every attached process's hold
/// on the slot, putting the state back if any is non-zero. Whichever comes
/// second in the single total order sees the other, so a block is never
/// taken away from under a reader, and a reader never keeps a block that is
/// being taken. Because each process counts in its own row, the references of
/// a process that died are exactly its row: the reclaimer zeroes it.
///
/// **Every index read from the segment is checked** (slot numbers from
/// buckets and links, owners from state words) before it is used, and every
/// loop is bounded by the validated layout, so a damaged or hostile segment
/// gives wrong answers or an error, never a crash or an endless loop.
final class PoolTables: Sendable {
    let segment: PoolSegment
    let layout: PoolLayout
    let slotCount: Int
    let processSlots: Int
    let blockBytes: Int
    private let bucketMask: Int
    nonisolated(unsafe) let header: UnsafeMutablePointer<memwall_pool_header>
    nonisolated(unsafe) let processes: UnsafeMutablePointer<memwall_pool_process>
    nonisolated(unsafe) let holds: UnsafeMutablePointer<UInt32>
    nonisolated(unsafe) let slots: UnsafeMutablePointer<memwall_pool_slot>
    nonisolated(unsafe) let buckets: UnsafeMutablePointer<UInt64>
    nonisolated(unsafe) let data: UnsafeMutableRawPointer
    nonisolated(unsafe) private let version: UnsafeMutablePointer<UInt64>

    /// How long a process waits for the pool lock before it reports who holds it (10 s).
    static let lockTimeoutNanoseconds: Int64 = 10_000_000_000

    init(segment: PoolSegment) {
        self.segment = segment
        layout = segment.layout
        slotCount = layout.slotCount
        processSlots = layout.processSlots
        blockBytes = layout.blockBytes
        bucketMask = layout.bucketCount - 1
        let base = segment.region.baseAddress
        header = base.assumingMemoryBound(to: memwall_pool_header.self)
        processes = (base + layout.processTableOffset).assumingMemoryBound(to: memwall_pool_process.self)
        holds = (base + layout.holdsOffset).assumingMemoryBound(to: UInt32.self)
        slots = (base + layout.slotTableOffset).assumingMemoryBound(to: memwall_pool_slot.self)
        buckets = (base + layout.bucketOffset).assumingMemoryBound(to: UInt64.self)
        data = base + layout.dataOffset
        version = memwall_pool_header_index_version(header)
    }

    // MARK: Slot state words: generation << 16 | owner << 8 | kind

    static let free = UInt64(MEMWALL_POOL_SLOT_FREE)
    static let reserved = UInt64(MEMWALL_POOL_SLOT_RESERVED)
    static let published = UInt64(MEMWALL_POOL_SLOT_PUBLISHED)
    static let evicting = UInt64(MEMWALL_POOL_SLOT_EVICTING)

    @inline(__always) static func kind(_ w: UInt64) -> UInt64 { w & 0xFF }
    @inline(__always) static func owner(_ w: UInt64) -> Int { Int((w >> 8) & 0xFF) }
    @inline(__always) static func generation(_ w: UInt64) -> UInt64 { w >> 16 }
    @inline(__always) static func word(_ kind: UInt64, owner: Int, generation: UInt64) -> UInt64 {
        generation << 16 | UInt64(owner & 0xFF) << 8 | kind
    }

    @inline(__always) func slot(_ s: Int) -> UnsafeMutablePointer<memwall_pool_slot> { slots + s }
    @inline(__always) func state(_ s: Int) -> UnsafeMutablePointer<UInt64> { memwall_pool_slot_state(slots + s) }
    @inline(__always) func hold(_ p: Int, _ s: Int) -> UnsafeMutablePointer<UInt32> { holds + (p * slotCount + s) }
    @inline(__always) func process(_ p: Int) -> UnsafeMutablePointer<memwall_pool_process> { processes + p }
    @inline(__always) func payload(_ s: Int) -> UnsafeMutableRawPointer { data + s * blockBytes }

    /// Whether a process-table entry is attached (state word `epoch << 8 | 1`).
    func isAttached(_ p: Int) -> Bool { memwall_shared_load(memwall_pool_process_state(process(p))) & 0xFF == 1 }

    /// The identity an attached entry records.
    func identity(_ p: Int) -> PoolProcessIdentity {
        let e = process(p)
        return PoolProcessIdentity(pid: Int32(truncatingIfNeeded: memwall_shared_load_relaxed(memwall_pool_process_pid(e))),
                                   startTime: memwall_shared_load_relaxed(memwall_pool_process_start_time(e)))
    }

    // MARK: The key table

    /// Bucket word: hash tag (the low 32 bits of the mixed key, whose low bits are
    /// the home bucket) << 32 | slot + 1; 0 is empty.
    @inline(__always) private static func hash(_ key: UInt64) -> UInt64 { BlockKey.mix(key) }

    /// The slot holding `key` (reserved or published) and its state word, read
    /// without the lock. Hits are exact: the state word is read before and after
    /// the key and must not change, so the key belongs to that occupant. A miss
    /// while a writer shifts buckets is retried (the table's version is odd, or
    /// changed), at most four times, then reported as a miss.
    @inline(__always)
    func find(_ key: UInt64) -> (slot: Int, state: UInt64)? {
        let h = PoolTables.hash(key)
        let tag = h & 0xFFFF_FFFF
        for _ in 0..<4 {
            let v0 = memwall_shared_load(version)
            var i = Int(truncatingIfNeeded: tag) & bucketMask
            for _ in 0..<PoolLayout.probeLimit {
                let b = memwall_shared_load(buckets + i)
                if b == 0 { break }
                if b >> 32 == tag {
                    let s = Int(truncatingIfNeeded: b & 0xFFFF_FFFF) - 1
                    if s >= 0 && s < slotCount {
                        let st = state(s)
                        let w = memwall_shared_load(st)
                        let k = PoolTables.kind(w)
                        if (k == PoolTables.published || k == PoolTables.reserved),
                           memwall_shared_load_relaxed(memwall_pool_slot_key(slot(s))) == key,
                           memwall_shared_load(st) == w {
                            return (s, w)
                        }
                    }
                }
                i = (i + 1) & bucketMask
            }
            let v1 = memwall_shared_load(version)
            if v0 == v1 && v0 & 1 == 0 { return nil }
        }
        return nil
    }

    /// Adds `key` → `s` (under the lock; the caller made sure the key is absent).
    /// - Returns: false when no empty bucket lies within ``PoolLayout/probeLimit`` of its home.
    func insert(_ key: UInt64, slot s: Int) -> Bool {
        let tag = PoolTables.hash(key) & 0xFFFF_FFFF
        var i = Int(truncatingIfNeeded: tag) & bucketMask
        for _ in 0..<PoolLayout.probeLimit {
            if memwall_shared_load_relaxed(buckets + i) == 0 {
                memwall_shared_store(buckets + i, tag << 32 | UInt64(s + 1))
                return true
            }
            i = (i + 1) & bucketMask
        }
        return false
    }

    /// Removes the bucket pointing at slot `s` for `key` (under the lock), by
    /// backward-shift deletion: no tombstones, so probes stay short. Readers
    /// that race with the shift may miss; the odd version makes them retry.
    func remove(_ key: UInt64, slot s: Int) {
        let tag = PoolTables.hash(key) & 0xFFFF_FFFF
        var i = Int(truncatingIfNeeded: tag) & bucketMask
        let wanted = tag << 32 | UInt64(s + 1)
        var found = -1
        for _ in 0..<PoolLayout.probeLimit {
            let b = memwall_shared_load_relaxed(buckets + i)
            if b == 0 { break }
            if b == wanted { found = i; break }
            i = (i + 1) & bucketMask
        }
        guard found >= 0 else { return }
        // Odd while buckets move (the release stores below order it before them).
        let odd = memwall_shared_load_relaxed(version) | 1
        memwall_shared_store_relaxed(version, odd)
        var hole = found
        var j = (found + 1) & bucketMask
        for _ in 0..<bucketMask {
            let b = memwall_shared_load_relaxed(buckets + j)
            if b == 0 { break }
            let home = Int(truncatingIfNeeded: b >> 32) & bucketMask
            // The entry at j may fill the hole if its home is not in (hole, j] (cyclically).
            if (j &- home) & bucketMask >= (j &- hole) & bucketMask {
                memwall_shared_store(buckets + hole, b)
                hole = j
            }
            j = (j + 1) & bucketMask
        }
        memwall_shared_store(buckets + hole, 0)
        memwall_shared_store(version, odd &+ 1)
    }

    // MARK: The lock

    /// Runs `body` holding the pool lock. If the previous owner died holding
    /// it, the structures it may have left half-changed are rebuilt from the
    /// slot states first (``repair()``).
    /// - Throws: `busy` when the lock is held longer than ``lockTimeoutNanoseconds``;
    ///   `corrupted` when the mutex in the segment is not a usable mutex.
    func withLock<R>(_ body: () throws(MemWallError) -> R) throws(MemWallError) -> R {
        let lock = memwall_pool_header_lock(header)
        let rc = memwall_pool_mutex_lock(lock, PoolTables.lockTimeoutNanoseconds)
        switch rc {
        case 0:
            break
        case EOWNERDEAD:
            repair()
            _ = memwall_pool_mutex_consistent(lock)
        case ETIMEDOUT:
            throw MemWallError(.busy, "the lock of KV pool '\(segment.path)' was held for more than \(PoolTables.lockTimeoutNanoseconds / 1_000_000_000) s; a process attached to it is stuck (memwall pool stat shows them)",
                               function: "pthread_mutex_timedlock", errno: Errno(rawValue: rc))
        default:
            throw MemWallError(.corrupted, "the lock of KV pool '\(segment.path)' is not usable; destroy the pool and create it again",
                               function: "pthread_mutex_timedlock", errno: Errno(rawValue: rc))
        }
        defer { _ = memwall_pool_mutex_unlock(lock) }
        return try body()
    }

    // MARK: Slots (under the lock)

    /// Processes attached now (stable under the lock: attaching and leaving take it).
    func attachedProcesses() -> [Int] { (0..<processSlots).filter(isAttached) }

    /// A free slot from the stack, or nil. A stack entry that is not free (a
    /// damaged segment) makes the stack be rebuilt from the slot states.
    func popFree() -> (slot: Int, state: UInt64)? {
        let head = memwall_pool_header_free_head(header)
        let count = memwall_pool_header_free_count(header)
        for attempt in 0..<2 {
            let s = Int(head.pointee)
            if s < slotCount {
                let w = memwall_shared_load(state(s))
                if PoolTables.kind(w) == PoolTables.free {
                    head.pointee = slot(s).pointee.next_free
                    count.pointee = count.pointee > 0 ? count.pointee - 1 : 0
                    return (s, w)
                }
            } else if head.pointee == MEMWALL_POOL_NONE && count.pointee == 0 {
                return nil
            }
            if attempt == 0 { rebuildFreeStack() }
        }
        return nil
    }

    private func pushFree(_ s: Int) {
        let head = memwall_pool_header_free_head(header)
        slot(s).pointee.next_free = head.pointee
        head.pointee = UInt32(s)
        memwall_pool_header_free_count(header).pointee &+= 1
    }

    private func rebuildFreeStack() {
        var head = MEMWALL_POOL_NONE
        var count: UInt32 = 0
        for s in stride(from: slotCount - 1, through: 0, by: -1) where PoolTables.kind(memwall_shared_load(state(s))) == PoolTables.free {
            slot(s).pointee.next_free = head
            head = UInt32(s)
            count += 1
        }
        memwall_pool_header_free_head(header).pointee = head
        memwall_pool_header_free_count(header).pointee = count
    }

    /// Takes an unreferenced published block with no cached child away (a
    /// clock sweep, at most two turns): its slot, in state EVICTING, for the caller to reuse.
    func evictOne() -> (slot: Int, state: UInt64)? {
        let attached = attachedProcesses()
        let hand = memwall_pool_header_clock_hand(header)
        for _ in 0..<(2 * slotCount) {
            let s = Int(hand.pointee % UInt64(slotCount))
            hand.pointee &+= 1
            let w = memwall_shared_load(state(s))
            guard PoolTables.kind(w) == PoolTables.published, slot(s).pointee.children == 0 else { continue }
            let used = memwall_pool_slot_used(slot(s))
            if memwall_shared_load32_relaxed(used) != 0 {
                memwall_shared_store32_relaxed(used, 0)
                continue
            }
            let taking = PoolTables.word(PoolTables.evicting, owner: 0, generation: PoolTables.generation(w))
            guard memwall_shared_cas(state(s), w, taking) else { continue }
            if attached.contains(where: { memwall_shared_load32_seq(hold($0, s)) != 0 }) {
                memwall_shared_store(state(s), w)
                continue
            }
            remove(memwall_shared_load_relaxed(memwall_pool_slot_key(slot(s))), slot: s)
            unlinkFromParent(s)
            return (s, taking)
        }
        return nil
    }

    /// Makes slot `s` (free, or taken by ``evictOne()``) a reservation of
    /// process `owner` for `key`, child of `parentSlot`.
    /// - Returns: The reserved state word, or nil when the key table had no room (the slot is freed again).
    func reserve(_ s: Int, from w: UInt64, key: UInt64, parentKey: UInt64, parentSlot: Int?, owner: Int, pid: Int32) -> UInt64? {
        let mine = PoolTables.word(PoolTables.reserved, owner: owner, generation: PoolTables.generation(w) &+ 1)
        memwall_shared_store(state(s), mine)
        let sp = slot(s)
        memwall_shared_store_relaxed(memwall_pool_slot_key(sp), key)
        memwall_shared_store_relaxed(memwall_pool_slot_parent_key(sp), parentKey)
        memwall_shared_store_relaxed(memwall_pool_slot_checksum(sp), 0)
        memwall_shared_store32_relaxed(memwall_pool_slot_used(sp), 0)
        memwall_shared_store32_relaxed(memwall_pool_slot_stored_by(sp), UInt32(bitPattern: pid))
        sp.pointee.children = 0
        sp.pointee.parent_slot = MEMWALL_POOL_NONE
        guard insert(key, slot: s) else {
            freeSlot(s, from: mine, indexed: false)
            return nil
        }
        if let parentSlot, parentSlot < slotCount, parentSlot != s {
            sp.pointee.parent_slot = UInt32(parentSlot)
            slot(parentSlot).pointee.children &+= 1
        }
        return mine
    }

    /// Frees slot `s` whose state is `w` (a dead owner's reservation, an
    /// eviction taken, a damaged entry): out of the key table, unlinked from its
    /// parent and children, a new generation, onto the free stack.
    func freeSlot(_ s: Int, from w: UInt64, indexed: Bool = true) {
        if indexed { remove(memwall_shared_load_relaxed(memwall_pool_slot_key(slot(s))), slot: s) }
        unlinkFromParent(s)
        if slot(s).pointee.children != 0 {
            for c in 0..<slotCount where slot(c).pointee.parent_slot == UInt32(s) { slot(c).pointee.parent_slot = MEMWALL_POOL_NONE }
            slot(s).pointee.children = 0
        }
        memwall_shared_store(state(s), PoolTables.word(PoolTables.free, owner: 0, generation: PoolTables.generation(w) &+ 1))
        pushFree(s)
    }

    private func unlinkFromParent(_ s: Int) {
        let p = Int(slot(s).pointee.parent_slot)
        if p < slotCount, slot(p).pointee.children > 0 { slot(p).pointee.children -= 1 }
        slot(s).pointee.parent_slot = MEMWALL_POOL_NONE
    }

    // MARK: Dead processes (under the lock)

    /// What reclaiming found.
    struct Reclaimed: Sendable, Hashable {
        var processes = 0
        var references = 0
        var reservations = 0
    }

    /// Reclaims every attached process that no longer runs.
    func reclaimDead(except me: Int?) -> Reclaimed {
        var total = Reclaimed()
        for p in attachedProcesses() where p != me && identity(p).liveness == .dead {
            let r = reclaim(process: p)
            total.processes += 1
            total.references += r.references
            total.reservations += r.reservations
        }
        return total
    }

    /// Drops everything process `p` held — its references (its row), its
    /// reservations (half-written blocks are freed, never published) — folds
    /// its counters into the pool's, and frees its entry.
    @discardableResult
    func reclaim(process p: Int) -> Reclaimed {
        var r = Reclaimed(processes: 1)
        for s in 0..<slotCount {
            let h = hold(p, s)
            let n = memwall_shared_load32_relaxed(h)
            if n != 0 {
                r.references += Int(n)
                memwall_shared_store32(h, 0)
            }
        }
        for s in 0..<slotCount {
            let w = memwall_shared_load(state(s))
            if PoolTables.kind(w) == PoolTables.reserved && PoolTables.owner(w) == p {
                freeSlot(s, from: w)
                r.reservations += 1
            }
        }
        retire(process: p)
        memwall_shared_add(memwall_pool_header_reclaimed(header, 0), 1)
        memwall_shared_add(memwall_pool_header_reclaimed(header, 1), UInt64(r.references))
        memwall_shared_add(memwall_pool_header_reclaimed(header, 2), UInt64(r.reservations))
        return r
    }

    /// Folds an entry's counters into the pool's and frees the entry.
    func retire(process p: Int) {
        let e = process(p)
        for c in 0..<Int(MEMWALL_POOL_COUNTERS) {
            let v = memwall_shared_load_relaxed(memwall_pool_process_counter(e, Int32(c)))
            memwall_shared_add(memwall_pool_header_retired(header, Int32(c)), v)
            memwall_shared_store_relaxed(memwall_pool_process_counter(e, Int32(c)), 0)
        }
        memwall_shared_store(memwall_pool_process_state(e), 0)
    }

    /// After the lock's previous owner died: everything it may have left half
    /// done is rebuilt from the slot states, which are always whole words.
    /// Slots being evicted are freed; reservations of processes that are not
    /// attached and alive are freed; parent links are kept only where the
    /// parent slot still holds the parent's key; the key table and the free
    /// stack are rebuilt; then dead processes are reclaimed.
    func repair() {
        let v = memwall_shared_load_relaxed(version)
        memwall_shared_store_relaxed(version, v | 1)
        for s in 0..<slotCount {
            let w = memwall_shared_load(state(s))
            let k = PoolTables.kind(w)
            var keep = k == PoolTables.published || k == PoolTables.free
            if k == PoolTables.reserved {
                let o = PoolTables.owner(w)
                keep = o < processSlots && isAttached(o) && identity(o).liveness == .alive
            }
            if !keep { memwall_shared_store(state(s), PoolTables.word(PoolTables.free, owner: 0, generation: PoolTables.generation(w) &+ 1)) }
            slot(s).pointee.children = 0
        }
        for b in 0...bucketMask { memwall_shared_store(buckets + b, 0) }
        for s in 0..<slotCount {
            let k = PoolTables.kind(memwall_shared_load(state(s)))
            guard k != PoolTables.free else { slot(s).pointee.parent_slot = MEMWALL_POOL_NONE; continue }
            let key = memwall_shared_load_relaxed(memwall_pool_slot_key(slot(s)))
            if findLocked(key) != nil || !insert(key, slot: s) {
                // A second slot with the same key, or no room: it is not served; the clock may take it.
                memwall_shared_store(state(s), PoolTables.word(PoolTables.free, owner: 0, generation: PoolTables.generation(memwall_shared_load(state(s))) &+ 1))
                slot(s).pointee.parent_slot = MEMWALL_POOL_NONE
                continue
            }
            let p = Int(slot(s).pointee.parent_slot)
            if p < slotCount, p != s, PoolTables.kind(memwall_shared_load(state(p))) != PoolTables.free,
               memwall_shared_load_relaxed(memwall_pool_slot_key(slot(p))) == memwall_shared_load_relaxed(memwall_pool_slot_parent_key(slot(s))) {
                slot(p).pointee.children &+= 1
            } else {
                slot(s).pointee.parent_slot = MEMWALL_POOL_NONE
            }
        }
        rebuildFreeStack()
        memwall_shared_store(version, (v | 1) &+ 1)
        memwall_shared_add(memwall_pool_header_reclaimed(header, 3), 1)
        _ = reclaimDead(except: nil)
    }

    /// ``find(_:)`` under the lock (nothing moves meanwhile, but the same bounded walk).
    func findLocked(_ key: UInt64) -> (slot: Int, state: UInt64)? { find(key) }
}
