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
