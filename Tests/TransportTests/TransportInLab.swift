#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import NUMATransport
import Testing
import Transport
import TransportConformance
import URingTransport

let inLab = ProcessInfo.environment("MEMWALL_LAB") == "1"
let labDevice = ProcessInfo.environment("MEMWALL_LAB_NVME") ?? "/dev/nvme0n1"

/// The conformance suite on the real CPU-less node 1 of the lab guest.
@Suite(.enabled(if: inLab, "runs in the lab guest (make lab)"))
struct NUMAConformanceInLab {
    static let allocator = NUMAAllocator()

    static let fixture = ConformanceFixture(
        name: "numa copy node 0 -> CPU-less node 1",
        alignment: 1,
        faultPoints: [:],
        makeTransport: { _ throws(MemWallError) in
            NUMATransport(allocator: allocator, policy: NUMACopyPolicy(bytesPerThread: 256 << 10, maximumThreads: 2, inlineBytes: 16 << 10, calibrate: false))
        },
        makeTarget: { n throws(MemWallError) in .memory(try allocator.allocate(byteCount: n, on: 1)) },
        makeLocal: { n throws(MemWallError) in try allocator.allocate(byteCount: n, on: 0) })

    @Test func nodeOneIsRealCPUlessFarMemory() throws {
        let a = Self.allocator
        #expect(a.kernelNUMA)
        #expect(a.realNodes == [0, 1])
        #expect(a.emulatedNode == nil, "a two-node host needs no emulated pool")
        let one = try a.node(1)
        #expect(one.isCPUless && !one.isEmulated)
        #expect(a.farNode?.id == 1)
        #expect(a.nearestCPUs(to: 1) == (try a.node(0)).cpus, "copies into node 1 run on node 0's CPUs")
        #expect(NUMATransport(allocator: a).capabilities.implementation.isHardware)
    }

    @Test(arguments: TransportConformance.applicableChecks(for: fixture))
    func conformance(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture)
    }

    @Test func checksThatDoNotApply() throws { try skipInapplicableChecks(of: Self.fixture) }

    @Test func allocationOnNodeOneIsReallyThere() throws {
        let r = try Self.allocator.allocate(byteCount: 8 << 20, on: 1)
        let loc = try Self.allocator.pageLocations(of: r)
        #expect(loc.singleNode == 1)
        #expect(loc.notPresent == 0)
        #expect(r.placement.label.contains("CPU-less"))
    }

    @Test(arguments: [NUMAAllocator.MoveStrategy.migratePages, .copy, .automatic])
    func moveToNodeOneAndBack(_ strategy: NUMAAllocator.MoveStrategy) throws {
        let a = Self.allocator
        let r = try a.allocate(byteCount: 4 << 20, on: 0)
        r.withUnsafeMutableBytes { b in for i in stride(from: 0, to: b.count, by: 4096) { b[i] = UInt8(truncatingIfNeeded: i >> 12) } }
        let there = try a.move(r, to: 1, strategy: strategy)
        #expect(try a.pageLocations(of: there.region).singleNode == 1)
        #expect(there.region.placement.node == 1)
        let back = try a.move(there.region, to: 0, strategy: strategy)
        #expect(try a.pageLocations(of: back.region).singleNode == 0)
        let intact = back.region.withUnsafeBytes { b in stride(from: 0, to: b.count, by: 4096).allSatisfy { b[$0] == UInt8(truncatingIfNeeded: $0 >> 12) } }
        #expect(intact)
    }

    @Test func moreThanNodeOneHoldsIsNoMemoryOnNode() throws {
        let one = try Self.allocator.node(1)
        #expect {
            _ = try Self.allocator.allocate(byteCount: one.totalBytes + (64 << 20), on: 1)
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.code == .noMemoryOnNode && e.message.contains("node 1")
        }
    }
}

/// The conformance suite on the lab's NVMe device, through io_uring and its
/// thread-pool fallback. Serialized: every check writes the same device.
@Suite(.enabled(if: inLab, "runs in the lab guest (make lab)"), .serialized)
struct StorageConformanceInLab {
    static func device() throws(MemWallError) -> StorageTarget {
        try StorageTarget(path: labDevice, existing: .write, requireDirect: true, waitForLock: true)
    }

    static func fixture(_ name: String, _ make: @escaping @Sendable (SyscallFunnel) throws(MemWallError) -> any Transport,
                        uring: Bool) throws -> ConformanceFixture {
        let alignment = try device().alignment
        return ConformanceFixture(name: "\(name) on \(labDevice)", alignment: alignment,
                                  faultPoints: uring ? [.read: "io_uring.read", .write: "io_uring.write"] : [.read: "pread", .write: "pwrite"],
                                  makeTransport: make,
                                  makeTarget: { _ throws(MemWallError) in .storage(try StorageConformanceInLab.device()) })
    }

    @Test func deviceIsDirectBlockDevice() throws {
        let d = try Self.device()
        #expect(d.isBlockDevice)
        #expect(d.accessMode == .direct)
        #expect(d.byteCount >= Int64(TransportConformance.targetSize))
    }

    @Test(arguments: ConformanceCheck.allCases)
    func uringConformance(_ check: ConformanceCheck) async throws {
        let f = try Self.fixture("io_uring", { funnel throws(MemWallError) in
            try URingTransport(configuration: URingConfiguration(queueDepth: 32, batchSize: 8), funnel: funnel)
        }, uring: true)
        try await runConformanceCheck(check, on: f)
    }

    @Test(arguments: ConformanceCheck.allCases)
    func threadPoolConformance(_ check: ConformanceCheck) async throws {
        let f = try Self.fixture("pread-pool", { funnel throws(MemWallError) in
            try ThreadPoolStorageTransport(queueDepth: 8, funnel: funnel)
        }, uring: false)
        try await runConformanceCheck(check, on: f)
    }

    @Test func directQueueReadsTheDeviceBlockForBlock() async throws {
        // The slot-based fast path against the real block device, at the depth the benchmark uses.
        let t = try URingTransport()
        let d = try Self.device()
        try await URingDirectQueueTests.writePattern(t, to: d)
        let results = try URingDirectQueueTests.readAll(t, d, depth: 32)
        #expect(results.count == URingDirectQueueTests.blocks)
        #expect(results.allSatisfy { (try? $0.get()) == URingDirectQueueTests.block })
    }

    @Test func tmpfsRefusesDirectAndIsLabelledBuffered() throws {
        // The guest kernel (6.1) has no O_DIRECT on tmpfs: the real refusal, not a played one.
        let path = "/tmp/.memwall-lab-buffered-\(getpid()).bin"
        defer { unlink(path) }
        let t = try StorageTarget(path: path, createWithSize: 1 << 20)
        #expect(t.accessMode == .bufferedFallback)
        #expect(t.fallbackReason?.contains("O_DIRECT") == true)
        #expect(t.alignment == 1)
        let required = "/tmp/.memwall-lab-required-\(getpid()).bin"
        #expect {
            _ = try StorageTarget(path: required, createWithSize: 4096, requireDirect: true)
        } throws: { ($0 as? MemWallError)?.code == .unsupported }
        #expect(access(required, F_OK) != 0, "a refused O_DIRECT open must not leave the file it created")
        unlink(required)
    }
}
