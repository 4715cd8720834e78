#if canImport(Glibc)
import Glibc
#endif
import KVPlacement
@testable import KVPool
import MemWallCore
import NUMATransport
import Testing
import Transport

/// The pool on the lab guest's CPU-less node 1 (a CXL type-3 memory expander as Linux shows it).
@Suite(.enabled(if: getenv("MEMWALL_LAB").map { String(cString: $0) } == "1", "runs in the lab guest (make lab)"), .serialized)
struct PoolInLab {
    @Test func poolPagesAreOnCPUlessNodeOne() throws {
        let allocator = NUMAAllocator()
        let one = try allocator.node(1)
        #expect(one.isCPUless && !one.isEmulated, "node 1 is real, CPU-less memory")
        let s = try ScratchPool("lab-node1", blocks: 256, blockBytes: 16384, node: 1)
        let keys = chain(90, 64)
        let b = try Blocks(count: 64, blockBytes: s.pool.blockBytes)
        b.fill(keys)
        #expect(try s.pool.store(keys, from: b.buffers(64)).succeeded)
        // Where the kernel says every page of the segment is, asked with move_pages from another attachment.
        let st = try KVPool.status(name: s.name, pages: true)
        #expect(st.node == 1 && !st.nodeEmulated)
        #expect(st.pagesPerNode == ["1": s.pool.tables.segment.region.byteCount / PageSize.bytes], "\(st.pagesPerNode)")
        b.clear()
        #expect(try s.pool.load(keys, into: b.buffers(64)).succeeded)
        #expect(keys.indices.allSatisfy { b.holds(keys[$0], at: $0) })
    }

    @Test func fourProcessesShareOneCopyOnNodeOne() throws {
        try PoolProcessChecks.fourProcesses(node: 1)
    }

    /// Fewer runs than on the host (each process start takes seconds under TCG); every stop point is still reached.
    @Test func killedProcessesAreReclaimedOnNodeOne() throws {
        try PoolProcessChecks.crashes(runs: 24, node: 1)
    }
}

/// The pool on the lab guest's CXL type-3 device, brought up as region0 → /dev/dax0.0
/// (`scripts/lab --cxl` sets MEMWALL_LAB_DAX).
@Suite(.enabled(if: getenv("MEMWALL_LAB_DAX") != nil, "needs the lab guest's CXL device (scripts/lab --cxl)"), .serialized)
struct PoolOnDAXInLab {
    static var device: String { getenv("MEMWALL_LAB_DAX").map { String(cString: $0) } ?? "/dev/dax0.0" }

    @Test func thePoolLivesOnTheCXLRegionsDAXDevice() throws {
        // The device is a CXL region's: /sys/bus/cxl has the region, and the DAX device sits under it.
        let name = String(Self.device.dropFirst("/dev/".count))
        var resolved = [CChar](repeating: 0, count: 4096)
        #expect(realpath("/sys/bus/dax/devices/\(name)", &resolved) != nil)
        let where_ = String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #expect(where_.contains("/region0/"), "\(Self.device) is not under a CXL region: \(where_)")
        #expect(access("/sys/bus/cxl/devices/region0", F_OK) == 0)

        let s = try ScratchPool("lab-dax", blocks: 128, blockBytes: 16384, device: Self.device)
        #expect(s.pool.device == Self.device)
        let keys = chain(95, 32)
        let b = try Blocks(count: 32, blockBytes: s.pool.blockBytes)
        b.fill(keys)
        #expect(try s.pool.store(keys, from: b.buffers(32)).succeeded)
        let other = try KVPool.attach(name: s.name)
        defer { other.close() }
        b.clear()
        #expect(try other.load(keys, into: b.buffers(32)).succeeded)
        #expect(keys.indices.allSatisfy { b.holds(keys[$0], at: $0) })
        let v = try other.view(keys[7])
        let intact = v.verify()
        #expect(intact)
        v.close()
        let st = try KVPool.status(name: s.name)
        #expect(st.device == Self.device && st.blocks == 32 && st.problems.isEmpty, "\(st.problems)")
    }

    @Test func fourProcessesShareOneCopyOnTheDAXDevice() throws {
        try PoolProcessChecks.fourProcesses(node: nil, device: Self.device)
    }

    /// Fewer runs than on node 1: a process holding the lock is killed too, so the robust mutex
    /// in device memory is exercised (EOWNERDEAD).
    @Test func killedProcessesAreReclaimedOnTheDAXDevice() throws {
        try PoolProcessChecks.crashes(runs: 12, node: nil, device: Self.device)
    }
}
