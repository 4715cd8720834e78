#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import NUMATransport
import Testing
import Transport
import TransportConformance

/// The conformance suite on the NUMA transport: local regions on the first
/// DRAM node, targets on the far node (the emulated pool on a one-node host).
@Suite struct NUMAConformanceTests {
    static let allocator = NUMAAllocator()

    static let fixture = ConformanceFixture(
        name: "numa copy to \(allocator.farNode?.description ?? "far memory")",
        alignment: 1,
        faultPoints: [:],
        makeTransport: { _ throws(MemWallError) in
            // Small thresholds so the suite's sizes exercise the threaded path too.
            NUMATransport(allocator: allocator, policy: NUMACopyPolicy(bytesPerThread: 256 << 10, maximumThreads: 4, inlineBytes: 16 << 10, calibrate: false))
        },
        makeTarget: { n throws(MemWallError) in
            guard let far = allocator.farNode else { throw MemWallError(.unsupported, "no far node") }
            return .memory(try allocator.allocate(byteCount: n, on: far.id))
        },
        makeLocal: { n throws(MemWallError) in try allocator.allocate(byteCount: n, on: allocator.realNodes[0]) })

    @Test(arguments: TransportConformance.applicableChecks(for: fixture))
    func conformance(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture)
    }

    @Test func checksThatDoNotApply() throws { try skipInapplicableChecks(of: Self.fixture) }
}

@Suite struct NUMAAllocatorTests {
    @Test func oneNodeHostGetsALabelledEmulatedFarPool() throws {
        let a = NUMAAllocator()
        try #require(a.realNodes.count == 1, "this host has \(a.realNodes.count) NUMA nodes; the emulated pool is only added on one-node hosts")
        let far = try #require(a.farNode)
        #expect(far.isEmulated)
        #expect(far.description.contains("emulated"))
        let r = try a.allocate(byteCount: 1 << 20, on: far.id)
        #expect(r.placement.isEmulated)
        #expect(r.description.contains("emulated"))
        let t = NUMATransport(allocator: a)
        #expect(t.capabilities.implementation.isEmulation)
        #expect("\(t.capabilities.implementation)".contains("emulat"))
    }

    @Test func nonexistentNodeListsTheValidOnes() {
        let a = NUMAAllocator()
        #expect {
            _ = try a.allocate(byteCount: 4096, on: 97)
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.code == .notFound && e.message.contains("node 97") && e.message.contains("valid nodes: node 0")
        }
    }

    @Test func farPoolFullIsNoMemoryOnNodeAndLeavesNothingBehind() throws {
        let a = NUMAAllocator(emulateFarMemory: true, emulatedCapacity: 8 << 20)
        let emulated = a.nodes.first { $0.isEmulated }
        let far = try #require(emulated)
        var first: MemoryRegion? = try a.allocate(byteCount: 6 << 20, on: far.id)
        #expect(first != nil)
        #expect {
            _ = try a.allocate(byteCount: 4 << 20, on: far.id)
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.code == .noMemoryOnNode && e.message.contains("node \(far.id)")
        }
        #expect(try a.node(far.id).freeBytes == 2 << 20, "a refused allocation must not keep any of the pool")
        first = nil
        #expect(try a.node(far.id).freeBytes == 8 << 20, "freeing a region returns its bytes to the pool")
        _ = try a.allocate(byteCount: 8 << 20, on: far.id)
    }

    @Test func realNodeIsMoreThanFreeMemoryIsRefused() throws {
        let a = NUMAAllocator()
        let n = try a.node(a.realNodes[0])
        #expect {
            _ = try a.allocate(byteCount: n.totalBytes * 2, on: n.id)
        } throws: { ($0 as? MemWallError)?.code == .noMemoryOnNode }
    }

    @Test func pagesAreWhereTheKernelSays() throws {
        let a = NUMAAllocator()
        try #require(a.kernelNUMA, "the kernel has no NUMA support (numa_available() < 0)")
        let node = a.realNodes[0]
        let r = try a.allocate(byteCount: 4 << 20, on: node)
        let where_ = try a.pageLocations(of: r)
        #expect(where_.pageCount == (4 << 20) / PageSize.bytes)
        #expect(where_.notPresent == 0, "allocation faults every page in")
        #expect(where_.singleNode == node)
    }

    @Test func automaticMoveCopiesSmallAndMigratesLarge() throws {
        let a = NUMAAllocator(copyBelowBytes: 1 << 20)
        let far = try #require(a.farNode)
        let small = try a.allocate(byteCount: 64 << 10, on: a.realNodes[0])
        small.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: i &* 7) } }
        let moved = try a.move(small, to: far.id)
        #expect(moved.strategy == .copy)
        #expect(moved.region !== small)
        #expect(moved.region.placement.node == far.id)
        let same = small.withUnsafeBytes { x in moved.region.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0 } }
        #expect(same)

        try #require(a.kernelNUMA, "page migration needs kernel NUMA support")
        let large = try MemoryRegion.allocate(byteCount: 4 << 20)
        large.withUnsafeMutableBytes { b in b[12345] = 0x5A }
        let m = try a.move(large, to: a.realNodes[0])
        #expect(m.strategy == .migratePages)
        #expect(m.region === large, "migration keeps the region")
        #expect(large.placement.node == a.realNodes[0])
        #expect(large.withUnsafeBytes { $0[12345] } == 0x5A)
        #expect(try a.pageLocations(of: large).singleNode == a.realNodes[0])
    }

    @Test func moveToANodeThatDoesNotExistIsRefused() throws {
        let a = NUMAAllocator()
        let r = try MemoryRegion.allocate(byteCount: 4096)
        #expect { _ = try a.move(r, to: 42) } throws: { ($0 as? MemWallError)?.code == .notFound }
    }

    @Test(arguments: [Errno.ioError, .noMemory, .notPermitted])
    func bindFaultsSurfaceWithErrnoAndLeaveNothing(_ errno: Errno) throws {
        let injector = FaultInjector([.init("mbind", .error(errno))])
        let a = NUMAAllocator(funnel: SyscallFunnel(faults: injector))
        try #require(a.kernelNUMA, "mbind is only called when the kernel has NUMA support")
        #expect {
            _ = try a.allocate(byteCount: 1 << 20, on: a.realNodes[0])
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.errno == errno && e.function == "mbind"
                && e.code == (errno == .noMemory ? .noMemoryOnNode : .systemCall)
        }
        #expect(injector.firedCount("mbind") == 1)
        // The fault is spent; the same allocator works.
        _ = try a.allocate(byteCount: 1 << 20, on: a.realNodes[0])
    }

    @Test func populateOutOfMemoryIsNoMemoryOnNode() throws {
        let injector = FaultInjector([.init("madvise", .error(.noMemory))])
        let a = NUMAAllocator(funnel: SyscallFunnel(faults: injector))
        #expect {
            _ = try a.allocate(byteCount: 1 << 20, on: a.realNodes[0])
        } throws: { ($0 as? MemWallError)?.code == .noMemoryOnNode }
        #expect(injector.firedCount("madvise") == 1)
    }

    @Test func copyThreadsOnlyWhenTheyPayOff() {
        let p = NUMACopyPolicy(bytesPerThread: 16 << 20, maximumThreads: 4)
        #expect(p.threads(for: 4096, available: 8) == 1)
        #expect(p.threads(for: 1 << 20, available: 8) == 1)
        #expect(p.threads(for: 64 << 20, available: 2) == 2)
        #expect(p.threads(for: 64 << 20, available: 8) == 4)
        #expect(p.threads(for: 1 << 30, available: 8) == 4)
    }

    @Test func largeCopyAcrossThreadsIsExact() async throws {
        let a = NUMAAllocator()
        let t = NUMATransport(allocator: a, policy: NUMACopyPolicy(bytesPerThread: 1 << 20, maximumThreads: 4, calibrate: false))
        let far = try #require(a.farNode)
        let src = try a.allocate(byteCount: (8 << 20) + 4096, on: a.realNodes[0])
        let dst = try a.allocate(byteCount: (8 << 20) + 4096, on: far.id)
        src.withUnsafeMutableBytes { b in for i in stride(from: 0, to: b.count, by: 8) { b.storeBytes(of: UInt64(i) &* 0x9E37, toByteOffset: i, as: UInt64.self) } }
        try t.register(src)
        // An odd length and offset, so chunk edges fall mid-cache-line.
        try await t.transfer(.write, [TransferDescriptor(local: src, localOffset: 8, target: .memory(dst), targetOffset: 24, length: (8 << 20) - 13)])
        let same = src.withUnsafeBytes(offset: 8, length: (8 << 20) - 13) { x in
            dst.withUnsafeBytes(offset: 24, length: (8 << 20) - 13) { y in memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0 }
        }
        #expect(same)
        try t.deregister(src)
    }
}
