#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import KVPlacement
import MemWallCore
import NUMATransport

/// What `memwall pool stat` reports (JSON schema `memwall.pool/1`): blocks and
/// bytes, processes alive and dead with what each holds, what was reclaimed,
/// the counters of every process that used the pool, where the pages are, and
/// the pool's own consistency checks.
public struct KVPoolStatus: Sendable, Codable, Hashable {
    /// One process-table entry in use.
    public struct Process: Sendable, Codable, Hashable {
        /// Entry number (the owner field of reservations).
        public var index: Int
        /// The process id it recorded when it attached.
        public var pid: Int32
        /// Attach counter value when it attached.
        public var epoch: UInt64
        /// False when the process no longer runs (killed, exited without detaching, pid reused).
        public var alive: Bool
        /// References it holds (views open, loads in progress).
        public var references: Int
        /// Blocks it reserved and has not published.
        public var reservations: Int
    }

    /// "memwall.pool/1".
    public var schema = "memwall.pool/1"
    /// The pool's name.
    public var name: String
    /// Its segment file.
    public var path: String
    /// Bytes of the segment (tables and blocks).
    public var segmentBytes: Int
    /// Bytes per block.
    public var blockBytes: Int
    /// Block slots.
    public var slots: Int
    /// Published blocks (readable).
    public var blocks: Int
    /// Slots reserved by a writer and not yet published.
    public var reserved: Int
    /// Slots with nothing in them.
    public var freeSlots: Int
    /// `blocks × blockBytes`: the pool holds one copy of each block, so this is the memory its blocks use.
    public var bytesUsed: Int
    /// `(reserved + freeSlots) × blockBytes`.
    public var bytesFree: Int
    /// Process slots.
    public var processSlots: Int
    /// Entries of processes running now.
    public var processesAlive: Int
    /// Entries of processes no longer running (reclaimed by the next attach).
    public var processesDead: Int
    /// Every entry in use.
    public var processes: [Process]
    /// References held, in all.
    public var references: Int
    /// References held by processes that no longer run.
    public var referencesOfDead: Int
    /// Reservations of processes that no longer run.
    public var reservationsOfDead: Int
    /// Processes reclaimed so far (dead while attached).
    public var reclaimedProcesses: Int
    /// References reclaimed so far.
    public var reclaimedReferences: Int
    /// Half-written reservations reclaimed so far (freed, never served).
    public var reclaimedReservations: Int
    /// Times a process found the lock's owner dead and rebuilt the tables.
    public var repairs: Int
    /// Counters summed over every process that used the pool (`lookups`, `hits`, `stores`,
    /// `duplicates` (stores skipped: already there), `loads`, `views`, `evictions`, `corrupt`).
    public var counters: [String: Int]
    /// NUMA node the pages were bound to at creation (nil: not bound).
    public var node: Int?
    /// True when that node is the emulated far-memory pool of a one-node host.
    public var nodeEmulated: Bool
    /// The device-DAX device the pool lives on (nil: a tmpfs segment).
    public var device: String?
    /// Resident pages of the segment per node, from `move_pages` (empty when not asked, and on a DAX device).
    public var pagesPerNode: [String: Int]
    /// Broken invariants (leaked slots or references, table mismatches); empty when consistent.
    public var problems: [String]
}

extension PoolTables {
    /// Reads everything under the lock (the caller holds it). O(slots × processes + buckets).
    func snapshot(name: String, pages: Bool) throws(MemWallError) -> KVPoolStatus {
        var problems: [String] = []
        var published = 0, reservedCount = 0, freeCount = 0
        var reservationsBy = [Int](repeating: 0, count: processSlots)
        var realChildren = [UInt32](repeating: 0, count: slotCount)
        for s in 0..<slotCount {
            let w = memwall_shared_load(state(s))
            switch PoolTables.kind(w) {
            case PoolTables.free: freeCount += 1
            case PoolTables.published: published += 1
            case PoolTables.reserved:
                reservedCount += 1
                let o = PoolTables.owner(w)
                if o < processSlots { reservationsBy[o] += 1 } else { problems.append("slot \(s) is reserved by process entry \(o), which does not exist") }
            case PoolTables.evicting: problems.append("slot \(s) is being evicted outside the lock")
            default: problems.append("slot \(s) has an unknown state word \(String(w, radix: 16))")
            }
            let p = Int(slot(s).pointee.parent_slot)
            if PoolTables.kind(w) != PoolTables.free, p < slotCount { realChildren[p] += 1 }
        }
        for s in 0..<slotCount where slot(s).pointee.children != realChildren[s] {
            problems.append("slot \(s) counts \(slot(s).pointee.children) cached children, \(realChildren[s]) link to it")
            if problems.count > 50 { break }
        }
        var entries: [KVPoolStatus.Process] = []
        var references = 0, referencesOfDead = 0, reservationsOfDead = 0
        var counters = [Int](repeating: 0, count: Int(MEMWALL_POOL_COUNTERS))
        for c in 0..<counters.count { counters[c] = Int(truncatingIfNeeded: memwall_shared_load_relaxed(memwall_pool_header_retired(header, Int32(c)))) }
        for p in 0..<processSlots {
            var held = 0
            for s in 0..<slotCount { held += Int(memwall_shared_load32_relaxed(hold(p, s))) }
            guard isAttached(p) else {
                if held > 0 { problems.append("process entry \(p) is free but counts \(held) references (leaked)") }
                if reservationsBy[p] > 0 { problems.append("process entry \(p) is free but owns \(reservationsBy[p]) reservations (leaked)") }
                continue
            }
            let id = identity(p)
            let alive = id.liveness == .alive
            references &+= held
            if !alive {
                referencesOfDead &+= held
                reservationsOfDead += reservationsBy[p]
            }
            let e = process(p)
            for c in 0..<counters.count { counters[c] &+= Int(truncatingIfNeeded: memwall_shared_load_relaxed(memwall_pool_process_counter(e, Int32(c)))) }
            entries.append(KVPoolStatus.Process(index: p, pid: id.pid, epoch: memwall_shared_load_relaxed(memwall_pool_process_epoch(e)),
                                                alive: alive, references: held, reservations: reservationsBy[p]))
        }
        var indexed = 0
        for b in 0..<layout.bucketCount where memwall_shared_load(buckets + b) != 0 { indexed += 1 }
        if indexed != published + reservedCount {
            problems.append("the key table has \(indexed) entries for \(published + reservedCount) blocks")
        }
        var stacked = 0
        var at = memwall_pool_header_free_head(header).pointee
        while at != MEMWALL_POOL_NONE && stacked <= slotCount {
            guard Int(at) < slotCount else { problems.append("the free stack points outside the slots"); break }
            stacked += 1
            at = slot(Int(at)).pointee.next_free
        }
        if stacked != freeCount || Int(memwall_pool_header_free_count(header).pointee) != freeCount {
            problems.append("the free stack has \(stacked) slots (counted \(memwall_pool_header_free_count(header).pointee)), \(freeCount) are free")
        }
        var perNode: [String: Int] = [:]
        if pages && segment.device == nil {
            // move_pages reports only pages mapped in this process: map the segment's (existing) pages first.
            _ = madvise(segment.region.baseAddress, segment.region.byteCount, 22)   // MADV_POPULATE_READ, Linux 5.14
            let loc = try NUMAAllocator(emulateFarMemory: false).pageLocations(of: segment.region)
            for (n, c) in loc.pagesPerNode { perNode[String(n)] = c }
            if loc.notPresent > 0 { perNode["absent"] = loc.notPresent }
        }
        return KVPoolStatus(
            name: name, path: segment.path, segmentBytes: segment.region.byteCount, blockBytes: blockBytes,
            slots: slotCount, blocks: published, reserved: reservedCount, freeSlots: freeCount,
            bytesUsed: published * blockBytes, bytesFree: (reservedCount + freeCount) * blockBytes,
            processSlots: processSlots, processesAlive: entries.filter(\.alive).count, processesDead: entries.filter { !$0.alive }.count,
            processes: entries, references: references, referencesOfDead: referencesOfDead, reservationsOfDead: reservationsOfDead,
            reclaimedProcesses: Int(truncatingIfNeeded: memwall_shared_load_relaxed(memwall_pool_header_reclaimed(header, 0))),
            reclaimedReferences: Int(truncatingIfNeeded: memwall_shared_load_relaxed(memwall_pool_header_reclaimed(header, 1))),
            reclaimedReservations: Int(truncatingIfNeeded: memwall_shared_load_relaxed(memwall_pool_header_reclaimed(header, 2))),
            repairs: Int(truncatingIfNeeded: memwall_shared_load_relaxed(memwall_pool_header_reclaimed(header, 3))),
            counters: Dictionary(uniqueKeysWithValues: KVPoolCounter.allCases.map { ($0.label, counters[$0.rawValue]) }),
            node: segment.node, nodeEmulated: segment.nodeIsEmulated, device: segment.device, pagesPerNode: perNode, problems: problems)
    }
}
