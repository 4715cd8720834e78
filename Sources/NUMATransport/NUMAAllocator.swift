#if canImport(Glibc)
import Glibc
#endif
@preconcurrency import CNUMA
import CMemWallShim
import MemWallCore
import Synchronization
import Transport

/// Allocates host memory bound to a NUMA node, moves it between nodes, and
/// says where its pages really are.
///
/// A CXL type-3 expander appears to Linux as a CPU-less node; this is how
/// MemWall puts bytes there. On a machine with one node an emulated
/// far-memory pool (ordinary DRAM with a capacity limit) takes the far node's
/// place, and says so in every placement and description.
public final class NUMAAllocator: Sendable {
    /// One memory node as the allocator sees it.
    public struct Node: Sendable, Hashable, CustomStringConvertible {
        /// Node number (the emulated pool gets the first unused number).
        public var id: Int
        /// Capacity in bytes.
        public var totalBytes: Int
        /// Free bytes when last asked.
        public var freeBytes: Int
        /// CPUs on the node; empty for a CPU-less (CXL-style) node.
        public var cpus: [Int]
        /// True for the emulated far-memory pool.
        public var isEmulated: Bool

        /// True when no CPU sits on the node (how CXL memory appears).
        public var isCPUless: Bool { cpus.isEmpty }

        /// "node 1 (far memory, CPU-less, 1 GiB)".
        public var description: String {
            let kind = isEmulated ? "far memory, emulated" : (isCPUless ? "far memory, CPU-less" : "DRAM")
            return "node \(id) (\(kind), \(ByteCount(totalBytes)))"
        }

        /// The placement label regions on this node carry.
        var placement: MemoryPlacement {
            MemoryPlacement(node: id, isEmulated: isEmulated,
                            label: isEmulated ? "far memory (emulated)" : (isCPUless ? "CXL / CPU-less" : "DRAM"))
        }
    }

    /// How ``move(_:to:strategy:)`` relocates a region.
    public enum MoveStrategy: String, Sendable, Hashable, CaseIterable {
        /// Copy below ``NUMAAllocator/copyBelowBytes``, migrate at or above it.
        case automatic
        /// Kernel page migration in place (`mbind` with `MPOL_MF_MOVE`).
        case migratePages
        /// Allocate on the destination and copy (a new region).
        case copy
    }

    /// What a move did.
    public struct MoveReport: Sendable {
        /// The region that now holds the bytes: the same object after migration, a new one after a copy.
        public var region: MemoryRegion
        /// Strategy actually used.
        public var strategy: MoveStrategy
        /// Wall time in nanoseconds.
        public var nanoseconds: UInt64
    }

    /// Where a region's pages are, as the kernel reports them (`move_pages` status query).
    public struct PageLocations: Sendable, Hashable {
        /// Resident pages per node.
        public var pagesPerNode: [Int: Int]
        /// Pages not faulted in yet.
        public var notPresent: Int
        /// Total pages asked about.
        public var pageCount: Int
        /// The node holding every resident page, if there is exactly one.
        public var singleNode: Int? { pagesPerNode.count == 1 ? pagesPerNode.keys.first : nil }
    }

    /// Whether the kernel has NUMA support (libnuma's `numa_available`).
    public let kernelNUMA: Bool
    /// The real nodes with memory, in order.
    public let realNodes: [Int]
    /// The emulated far pool's node number, when there is one.
    public let emulatedNode: Int?
    /// Capacity of the emulated pool.
    public let emulatedCapacity: Int
    /// Moves of regions smaller than this copy; larger ones migrate pages.
    public let copyBelowBytes: Int
    private let emulatedUsed = EmulatedPoolUsage()
    let funnel: SyscallFunnel

    /// Discovers the nodes.
    /// - Parameters:
    ///   - emulateFarMemory: Add an emulated far pool when the host has one
    ///     node (`nil`: only then; `true`: always; `false`: never).
    ///   - emulatedCapacity: Bytes the emulated pool may hand out (default 1 GiB).
    ///   - copyBelowBytes: Threshold of the automatic move strategy.
    ///   - funnel: System-call door for `mbind`, `move_pages`, `madvise`.
    public init(emulateFarMemory: Bool? = nil, emulatedCapacity: Int = 1 << 30,
                copyBelowBytes: Int = 1 << 20, funnel: SyscallFunnel = .system) {
        self.funnel = funnel
        self.copyBelowBytes = copyBelowBytes
        kernelNUMA = numa_available() >= 0
        var nodes: [Int] = []
        if kernelNUMA {
            let maxNode = Int(numa_max_node())
            for n in 0...max(maxNode, 0) where numa_node_size64(Int32(n), nil) > 0 { nodes.append(n) }
        }
        if nodes.isEmpty { nodes = [0] }
        realNodes = nodes
        let emulate = emulateFarMemory ?? (nodes.count == 1)
        emulatedNode = emulate ? (nodes.max() ?? 0) + 1 : nil
        self.emulatedCapacity = emulatedCapacity
    }

    /// Every node, real ones first.
    public var nodes: [Node] {
        var out = realNodes.map { n -> Node in
            var free: Int64 = 0
            let total = kernelNUMA ? numa_node_size64(Int32(n), &free) : Int64(sysconf(Int32(_SC_PHYS_PAGES))) * Int64(PageSize.bytes)
            if !kernelNUMA { free = Int64(sysconf(Int32(_SC_AVPHYS_PAGES))) * Int64(PageSize.bytes) }
            return Node(id: n, totalBytes: Int(total), freeBytes: Int(free), cpus: NUMAAllocator.cpus(ofNode: n), isEmulated: false)
        }
        if let e = emulatedNode {
            out.append(Node(id: e, totalBytes: emulatedCapacity,
                            freeBytes: emulatedCapacity - emulatedUsed.bytes.load(ordering: .relaxed), cpus: [], isEmulated: true))
        }
        return out
    }

    /// The node with this number.
    /// - Throws: `notFound`, listing the valid nodes.
    public func node(_ id: Int) throws(MemWallError) -> Node {
        let all = nodes
        guard let n = all.first(where: { $0.id == id }) else {
            throw MemWallError(.notFound,
                "NUMA node \(id) does not exist on this host; valid nodes: \(all.map(\.description).joined(separator: ", "))")
        }
        return n
    }

    /// The far-memory node to use: a real CPU-less node if there is one, else the emulated pool.
    public var farNode: Node? {
        let all = nodes
        return all.first(where: { !$0.isEmulated && $0.isCPUless }) ?? all.first(where: \.isEmulated)
    }

    /// Allocates `byteCount` bytes (rounded up to pages) whose pages all live on `node`.
    ///
    /// Pages are faulted in at once under a strict binding, so the region is
    /// really on the node when this returns (verify with ``pageLocations(of:)``).
    /// - Throws: `notFound` for an unknown node (valid ones are listed),
    ///   `noMemoryOnNode` when the node has less free memory, `invalidArgument`
    ///   for a size ≤ 0, `systemCall` from `mmap`/`mbind`.
    /// - Parameter transparentHugePages: Ask for 2 MiB pages (`MADV_HUGEPAGE`)
    ///   before faulting in, so large buffers cost fewer TLB misses.
    public func allocate(byteCount: Int, on nodeID: Int, transparentHugePages: Bool = false) throws(MemWallError) -> MemoryRegion {
        guard byteCount > 0 else {
            throw .invalid("region size", byteCount, expected: "a positive number of bytes")
        }
        let node = try node(nodeID)
        let length = PageSize.roundUp(byteCount)
        if node.isEmulated { return try allocateEmulated(length, node, transparentHugePages) }
        guard length <= node.freeBytes else {
            throw MemWallError(.noMemoryOnNode,
                "node \(nodeID) has \(ByteCount(node.freeBytes)) free of \(ByteCount(node.totalBytes)); cannot place \(ByteCount(length)) there")
        }
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw .system("mmap", .current, "cannot reserve \(ByteCount(length)) for node \(nodeID)")
        }
        do throws(MemWallError) {
            if kernelNUMA { try bind(p, length, to: nodeID, move: false) }
            // Advice only: a kernel without THP keeps 4 KiB pages.
            if transparentHugePages { _ = madvise(p, length, memwall_madv_hugepage()) }
            try populate(p, length, nodeID)
        } catch {
            munmap(p, length)
            throw error
        }
        return MemoryRegion(adopting: p, byteCount: length, placement: node.placement) { ptr, len in munmap(ptr, len) }
    }

    private func allocateEmulated(_ length: Int, _ node: Node, _ hugePages: Bool) throws(MemWallError) -> MemoryRegion {
        let capacity = emulatedCapacity
        let reserved = emulatedUsed.bytes.wrappingAdd(length, ordering: .relaxed).newValue
        guard reserved <= capacity else {
            emulatedUsed.bytes.wrappingSubtract(length, ordering: .relaxed)
            throw MemWallError(.noMemoryOnNode,
                "emulated far-memory node \(node.id) has \(ByteCount(max(0, capacity - reserved + length))) free of \(ByteCount(capacity)); cannot place \(ByteCount(length)) there")
        }
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else {
            emulatedUsed.bytes.wrappingSubtract(length, ordering: .relaxed)
            throw .system("mmap", .current, "cannot reserve \(ByteCount(length)) for the emulated far-memory pool")
        }
        do throws(MemWallError) {
            if hugePages { _ = madvise(p, length, memwall_madv_hugepage()) }
            try populate(p, length, node.id)
        } catch {
            munmap(p, length)
            emulatedUsed.bytes.wrappingSubtract(length, ordering: .relaxed)
            throw error
        }
        return MemoryRegion(adopting: p, byteCount: length, placement: node.placement) { [emulatedUsed] ptr, len in
            munmap(ptr, len)
            emulatedUsed.bytes.wrappingSubtract(len, ordering: .relaxed)
        }
    }

    /// Places a fresh mapping someone else made (a shared segment that several
    /// processes map, see `KVPool`) on `nodeID`: a strict binding of its range,
    /// then every page faulted in, so the pages are on the node when this returns
    /// (verify with ``pageLocations(of:)``). For a shared file mapping (tmpfs)
    /// the binding is the file's own policy, so it holds for every process that
    /// maps the file. `nil` or the emulated node only faults the pages in.
    /// The mapping must be new: on a kernel without `MADV_POPULATE_WRITE` its
    /// pages are touched by writing a zero byte.
    /// - Throws: `notFound` for an unknown node, `noMemoryOnNode`, `systemCall` from `mbind`/`madvise`.
    public func place(_ region: MemoryRegion, on nodeID: Int?) throws(MemWallError) {
        guard let nodeID else {
            try populate(region.baseAddress, region.byteCount, -1)
            return
        }
        let node = try node(nodeID)
        if !node.isEmulated && kernelNUMA {
            guard region.byteCount <= node.freeBytes else {
                throw MemWallError(.noMemoryOnNode,
                    "node \(nodeID) has \(ByteCount(node.freeBytes)) free of \(ByteCount(node.totalBytes)); cannot place \(ByteCount(region.byteCount)) there")
            }
            try bind(region.baseAddress, region.byteCount, to: nodeID, move: false)
        }
        try populate(region.baseAddress, region.byteCount, nodeID)
        region.updatePlacement(node.placement)
    }

    /// Sets a strict single-node policy on a range; with `move`, migrates pages already there.
    func bind(_ p: UnsafeMutableRawPointer, _ length: Int, to nodeID: Int, move: Bool) throws(MemWallError) {
        let bitsPerWord = UInt.bitWidth
        var mask = [UInt](repeating: 0, count: nodeID / bitsPerWord + 2)
        mask[nodeID / bitsPerWord] |= 1 << UInt(nodeID % bitsPerWord)
        let flags = UInt32(MPOL_MF_STRICT) | (move ? UInt32(MPOL_MF_MOVE) : 0)
        let maxNode = UInt(mask.count * bitsPerWord)
        let r = mask.withUnsafeBufferPointer { m in
            funnel.call("mbind") { Int(mbind(p, UInt(length), Int32(MPOL_BIND), m.baseAddress, maxNode, flags)) }
        }
        if case .failure(let e) = r {
            if e == .noMemory {
                throw MemWallError(.noMemoryOnNode, "node \(nodeID) could not take \(ByteCount(length))", function: "mbind", errno: e)
            }
            throw .system("mbind", e, move
                ? "could not migrate \(ByteCount(length)) to node \(nodeID) (pages busy or pinned, or migration not permitted here)"
                : "could not bind \(ByteCount(length)) to node \(nodeID)")
        }
    }

    /// Migrates every page of `region` to `nodeID` and makes the node its policy.
    ///
    /// `mbind(MPOL_MF_MOVE)` sets the policy and moves what it can in one call;
    /// pages the kernel could not take at that moment (still on a per-CPU LRU
    /// list right after an earlier migration, or briefly pinned) are then moved
    /// one by one with `move_pages`, whose per-page status says why any page stays.
    func migrate(_ region: MemoryRegion, to nodeID: Int) throws(MemWallError) {
        let bitsPerWord = UInt.bitWidth
        var mask = [UInt](repeating: 0, count: nodeID / bitsPerWord + 2)
        mask[nodeID / bitsPerWord] |= 1 << UInt(nodeID % bitsPerWord)
        let maxNode = UInt(mask.count * bitsPerWord)
        let r = mask.withUnsafeBufferPointer { m in
            funnel.call("mbind") {
                Int(mbind(region.baseAddress, UInt(region.byteCount), Int32(MPOL_BIND), m.baseAddress, maxNode, UInt32(MPOL_MF_MOVE)))
            }
        }
        if case .failure(let e) = r {
            if e == .noMemory {
                throw MemWallError(.noMemoryOnNode, "node \(nodeID) could not take \(ByteCount(region.byteCount))", function: "mbind", errno: e)
            }
            throw .system("mbind", e, "could not migrate \(region) to node \(nodeID)")
        }
        let pageCount = region.byteCount / PageSize.bytes
        for round in 0..<4 {
            let loc = try pageLocations(of: region, pageStatus: true)
            let stray = loc.status.enumerated().filter { $0.element >= 0 && Int($0.element) != nodeID }.map(\.offset)
            if stray.isEmpty { return }
            var pages = stray.map { Optional(region.baseAddress + $0 * PageSize.bytes) }
            var nodes = [Int32](repeating: Int32(nodeID), count: stray.count)
            var status = [Int32](repeating: 0, count: stray.count)
            let moved = pages.withUnsafeMutableBufferPointer { pg in
                nodes.withUnsafeMutableBufferPointer { nd in
                    status.withUnsafeMutableBufferPointer { st in
                        funnel.call("move_pages") {
                            Int(move_pages(0, UInt(stray.count), pg.baseAddress, nd.baseAddress, st.baseAddress, Int32(MPOL_MF_MOVE)))
                        }
                    }
                }
            }
            if case .failure(let e) = moved {
                throw .system("move_pages", e, "could not migrate \(stray.count) of \(pageCount) pages of \(region) to node \(nodeID)")
            }
            if round == 3, let bad = status.first(where: { $0 < 0 }) {
                let e = Errno(rawValue: -bad)
                if e == .noMemory {
                    throw MemWallError(.noMemoryOnNode, "node \(nodeID) has no room for \(stray.count) more pages of \(region)", function: "move_pages", errno: e)
                }
                throw .system("move_pages", e, "\(status.filter { $0 < 0 }.count) of \(pageCount) pages of \(region) would not move to node \(nodeID)")
            }
            usleep(1000)
        }
    }

    /// Faults every page in now, so allocation failures surface here and not
    /// as a fault on first touch in the middle of a transfer.
    private func populate(_ p: UnsafeMutableRawPointer, _ length: Int, _ nodeID: Int) throws(MemWallError) {
        let madvPopulateWrite: Int32 = 23  // MADV_POPULATE_WRITE, Linux 5.14
        let r = funnel.call("madvise") { Int(madvise(p, length, madvPopulateWrite)) }
        switch r {
        case .success:
            return
        case .failure(let e) where e == .invalidArgument:
            // Older kernel: touch one byte per page.
            var off = 0
            while off < length { p.storeBytes(of: 0, toByteOffset: off, as: UInt8.self); off += PageSize.bytes }
        case .failure(let e) where e == .noMemory:
            throw MemWallError(.noMemoryOnNode, "node \(nodeID) ran out of memory while placing \(ByteCount(length))",
                               function: "madvise(MADV_POPULATE_WRITE)", errno: e)
        case .failure(let e):
            throw .system("madvise(MADV_POPULATE_WRITE)", e, "could not fault in \(ByteCount(length)) on node \(nodeID)")
        }
    }

    /// Where the region's pages are right now, from the kernel (`move_pages`
    /// with no target nodes only reports).
    /// - Throws: `systemCall` when the kernel refuses the query.
    public func pageLocations(of region: MemoryRegion) throws(MemWallError) -> PageLocations {
        try pageLocations(of: region, pageStatus: false).summary
    }

    func pageLocations(of region: MemoryRegion, pageStatus: Bool) throws(MemWallError) -> (summary: PageLocations, status: [Int32]) {
        let count = region.byteCount / PageSize.bytes
        guard kernelNUMA else {
            return (PageLocations(pagesPerNode: [0: count], notPresent: 0, pageCount: count), Array(repeating: 0, count: count))
        }
        var pages = [UnsafeMutableRawPointer?](repeating: nil, count: count)
        for i in 0..<count { pages[i] = region.baseAddress + i * PageSize.bytes }
        var status = [Int32](repeating: 0, count: count)
        let r = pages.withUnsafeMutableBufferPointer { pg in
            status.withUnsafeMutableBufferPointer { st in
                funnel.call("move_pages") { Int(move_pages(0, UInt(count), pg.baseAddress, nil, st.baseAddress, 0)) }
            }
        }
        if case .failure(let e) = r {
            throw .system("move_pages", e, "could not query where the \(count) pages of \(region) are")
        }
        var perNode: [Int: Int] = [:]
        var absent = 0
        for s in status {
            if s >= 0 { perNode[Int(s), default: 0] += 1 } else { absent += 1 }
        }
        return (PageLocations(pagesPerNode: perNode, notPresent: absent, pageCount: count), status)
    }

    /// Relocates `region` to `node`.
    ///
    /// Migration keeps the region (same address; its placement is updated);
    /// a copy returns a new region on `node` and leaves the old one unchanged
    /// for the caller to release. No transfer may use the region meanwhile.
    /// - Parameters:
    ///   - copier: Copies the bytes for the copy strategy (default: one-thread `memcpy`).
    /// - Throws: `notFound` (node), `noMemoryOnNode`, `systemCall` (`mbind`).
    public func move(_ region: MemoryRegion, to nodeID: Int, strategy: MoveStrategy = .automatic,
                     copier: ((_ from: UnsafeRawPointer, _ to: UnsafeMutableRawPointer, _ count: Int) -> Void)? = nil
    ) throws(MemWallError) -> MoveReport {
        let start = MonotonicClock.nanoseconds()
        let dest = try node(nodeID)
        var chosen = strategy
        if chosen == .automatic { chosen = region.byteCount < copyBelowBytes ? .copy : .migratePages }
        // Pages cannot migrate into or out of the emulated pool: it is not a kernel node.
        if dest.isEmulated || region.placement.isEmulated || !kernelNUMA { chosen = .copy }
        switch chosen {
        case .migratePages:
            guard region.byteCount <= dest.freeBytes else {
                throw MemWallError(.noMemoryOnNode,
                    "node \(nodeID) has \(ByteCount(dest.freeBytes)) free; cannot migrate \(ByteCount(region.byteCount)) there")
            }
            try migrate(region, to: nodeID)
            region.updatePlacement(dest.placement)
            return MoveReport(region: region, strategy: .migratePages, nanoseconds: MonotonicClock.nanoseconds() &- start)
        case .copy, .automatic:
            let fresh = try allocate(byteCount: region.byteCount, on: nodeID)
            if let copier {
                copier(UnsafeRawPointer(region.baseAddress), fresh.baseAddress, region.byteCount)
            } else {
                memcpy(fresh.baseAddress, region.baseAddress, region.byteCount)
            }
            return MoveReport(region: fresh, strategy: .copy, nanoseconds: MonotonicClock.nanoseconds() &- start)
        }
    }

    /// CPUs of a node, from sysfs (`cpulist`, e.g. "0-3,8-11"); empty when CPU-less.
    static func cpus(ofNode n: Int) -> [Int] {
        guard let f = fopen("/sys/devices/system/node/node\(n)/cpulist", "r") else { return [] }
        defer { fclose(f) }
        var buf = [UInt8](repeating: 0, count: 4096)
        let got = fread(&buf, 1, buf.count - 1, f)
        let text = String(decoding: buf[0..<got], as: UTF8.self).trimmingWhitespace()
        var out: [Int] = []
        for part in text.split(separator: ",") {
            let ends = part.split(separator: "-").compactMap { Int($0) }
            if ends.count == 2, ends[0] <= ends[1] { out += Array(ends[0]...ends[1]) } else if ends.count == 1 { out.append(ends[0]) }
        }
        return out
    }

    /// CPUs nearest to `node`: its own, or for a CPU-less node those of the
    /// closest node that has CPUs (SLIT distance).
    public func nearestCPUs(to nodeID: Int) -> [Int] {
        let own = NUMAAllocator.cpus(ofNode: nodeID)
        if !own.isEmpty { return own }
        guard kernelNUMA, realNodes.contains(nodeID) else {
            return realNodes.flatMap { NUMAAllocator.cpus(ofNode: $0) }
        }
        let withCPUs = realNodes.filter { !NUMAAllocator.cpus(ofNode: $0).isEmpty }
        guard let best = withCPUs.min(by: { numa_distance(Int32(nodeID), Int32($0)) < numa_distance(Int32(nodeID), Int32($1)) }) else {
            return []
        }
        return NUMAAllocator.cpus(ofNode: best)
    }
}

/// Bytes the emulated far pool has handed out; shared with each region's
/// release closure, which gives them back.
final class EmulatedPoolUsage: Sendable {
    let bytes = Atomic<Int>(0)
}
