#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing
import Transport
import TransportConformance
import URingTransport

/// Whether this host lets us create a ring at all (seccomp or
/// `kernel.io_uring_disabled` may refuse it).
let ioUringUsable: Bool = (try? URingTransport(configuration: URingConfiguration(queueDepth: 2, batchSize: 1))) != nil

/// The conformance suite on the real io_uring path, against an O_DIRECT file
/// on the host's disk, with fixed buffers and files (the default) and without.
@Suite(.enabled(if: ioUringUsable, "io_uring is refused on this host (seccomp or kernel.io_uring_disabled)"))
struct URingConformanceTests {
    static func fixture(fixed: Bool) -> ConformanceFixture {
        ConformanceFixture(
            name: "io_uring on an O_DIRECT file\(fixed ? "" : " (no fixed buffers/files)")",
            alignment: 4096,
            faultPoints: [.read: "io_uring.read", .write: "io_uring.write"],
            makeTransport: { funnel throws(MemWallError) in
                try URingTransport(configuration: URingConfiguration(queueDepth: 16, batchSize: 4,
                                                                     fixedBuffers: fixed, fixedFiles: fixed), funnel: funnel)
            },
            makeTarget: { n throws(MemWallError) in .storage(try ScratchFile.make(n)) })
    }

    @Test(arguments: ConformanceCheck.allCases)
    func conformanceFixed(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture(fixed: true))
    }

    @Test(arguments: [ConformanceCheck.roundTrip, .scatterGather, .faultShortTransfer, .cancellation])
    func conformancePlain(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture(fixed: false))
    }

    @Test func regionsBecomeFixedBuffers() throws {
        let t = try URingTransport()
        try #require(t.fixedBufferTable, "kernel refused the sparse fixed-buffer table")
        let r = try MemoryRegion.allocate(byteCount: 1 << 20)
        try t.register(r)
        #expect(t.isFixedBuffer(r))
        try t.deregister(r)
        #expect(!t.isFixedBuffer(r))
        #expect(t.setupFlags != "")
    }

    @Test(arguments: [(0, 1), (-3, 1), (8, 0), (8, 9), (5000, 1)])
    func badQueueConfigurationIsRefused(depth: Int, batch: Int) {
        #expect {
            _ = try URingTransport(configuration: URingConfiguration(queueDepth: depth, batchSize: batch))
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.code == .invalidArgument && (e.message.contains("queue depth") || e.message.contains("batch size"))
        }
    }

    @Test func queueDeeperThanDescriptorsKeepsOrderAndData() async throws {
        // 200 descriptors through a ring of 4: most wait in the queue and follow as completions free room.
        let t = try URingTransport(configuration: URingConfiguration(queueDepth: 4, batchSize: 2))
        let target = TransferTarget.storage(try ScratchFile.make(1 << 20))
        let src = try MemoryRegion.allocate(byteCount: 200 * 4096)
        let dst = try MemoryRegion.allocate(byteCount: 200 * 4096)
        try t.register(src); try t.register(dst)
        src.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: i / 4096 &* 31 &+ i) } }
        let w = (0..<200).map { TransferDescriptor(local: src, localOffset: $0 * 4096, target: target, targetOffset: Int64($0 % 256) * 4096, length: 4096) }
        try await t.transfer(.write, w)
        let r = (0..<200).map { TransferDescriptor(local: dst, localOffset: $0 * 4096, target: target, targetOffset: Int64($0 % 256) * 4096, length: 4096) }
        let report = try await t.transfer(.read, r)
        #expect(report.bytes == 200 * 4096)
        let same = src.withUnsafeBytes { a in dst.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
        #expect(same)
        #expect(t.costEstimator.estimate(target: .storage, operation: .read) != nil)
    }

    @Test func unalignedBufferIsRefusedWithAClearError() throws {
        let t = try URingTransport()
        let file = try ScratchFile.make(1 << 20)
        try #require(file.accessMode == .direct, "the scratch directory refuses O_DIRECT")
        let r = try MemoryRegion.allocate(byteCount: 64 * 1024)
        try t.register(r)
        #expect {
            _ = try t.prepare(.read, [TransferDescriptor(local: r, localOffset: 100, target: .storage(file), length: 4096)])
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.code == .misaligned && e.message.contains("O_DIRECT") && e.message.contains("multiple of")
        }
        try t.deregister(r)
    }

    @Test func fileTooShortIsOutOfBounds() throws {
        let t = try URingTransport()
        let file = try ScratchFile.make(8192)
        let r = try MemoryRegion.allocate(byteCount: 64 * 1024)
        try t.register(r)
        #expect {
            _ = try t.prepare(.read, [TransferDescriptor(local: r, target: .storage(file), targetOffset: 4096, length: 8192)])
        } throws: { error in
            (error as? MemWallError)?.code == .outOfBounds && "\(error)".contains("8192 bytes")
        }
        try t.deregister(r)
    }

    @Test func refusedRingFallsBackToLabelledThreadPool() throws {
        // Play a kernel without io_uring: setup fails with ENOSYS every time.
        let injector = FaultInjector([.init("io_uring_queue_init", .error(.notImplemented), times: 10)])
        let t = try URingTransport.makeWithFallback(configuration: URingConfiguration(queueDepth: 4, batchSize: 2),
                                                    funnel: SyscallFunnel(faults: injector))
        #expect(t.name == "pread-pool")
        #expect(t.capabilities.implementation.isEmulation)
        #expect("\(t.capabilities.implementation)".contains("ENOSYS"))
        #expect(injector.firedCount("io_uring_queue_init") >= 1)
    }

    @Test func registryPrefersRingAndCountsDowngrade() throws {
        let registry = TransportRegistry(log: { _ in })
        registry.add(try URingTransport(), rank: 0)
        registry.add(try ThreadPoolStorageTransport(queueDepth: 2), rank: 1)
        #expect(try registry.select(for: .storage).name == "io_uring")
        #expect(registry.downgradeCount == 0)
        let onlyPool = TransportRegistry(log: { _ in })
        onlyPool.add(try ThreadPoolStorageTransport(queueDepth: 2), rank: 1)
        #expect(throws: MemWallError.self) { try onlyPool.select(for: .storage, requireHardware: true) }
        #expect(try onlyPool.select(for: .storage).name == "pread-pool")
        #expect(onlyPool.downgradeCount == 1)
    }
}

/// A filesystem that refuses O_DIRECT (overlayfs, older tmpfs) gets the
/// buffered path, labelled. This host's filesystems accept O_DIRECT, so the
/// refusal is played through the funnel (open(2) → EINVAL, exactly what such
/// a filesystem returns); the lab runs it for real on the guest's overlay root.
@Suite struct BufferedFallbackTests {
    static func refusingOpen() -> SyscallFunnel {
        // Only the first open (the one with O_DIRECT) is refused.
        SyscallFunnel(faults: FaultInjector([.init("open", .error(.invalidArgument), times: 1)]))
    }

    static func bufferedFile(_ n: Int) throws(MemWallError) -> StorageTarget {
        let path = "\(ScratchFile.directory)/memwall-buffered-\(getpid())-\(n)-\(MonotonicClock.nanoseconds()).bin"
        let t = try StorageTarget(path: path, createWithSize: Int64(n), funnel: refusingOpen())
        unlink(path)
        return t
    }

    @Test func refusedDirectFallsBackToBufferedAndSaysSo() async throws {
        let file = try Self.bufferedFile(1 << 20)
        #expect(file.accessMode == .bufferedFallback)
        #expect(file.alignment == 1)
        #expect(file.fallbackReason?.contains("O_DIRECT") == true)
        #expect("\(file)".contains("buffered"))
        let path = "\(ScratchFile.directory)/memwall-required-\(getpid()).bin"
        #expect {
            _ = try StorageTarget(path: path, createWithSize: 4096, requireDirect: true, funnel: Self.refusingOpen())
        } throws: { ($0 as? MemWallError)?.code == .unsupported }
        #expect(access(path, F_OK) != 0, "a refused open must not leave a file behind")
    }

    static let fixture = ConformanceFixture(
        name: "io_uring on a buffered (O_DIRECT refused) file", alignment: 1,
        faultPoints: [.read: "io_uring.read", .write: "io_uring.write"],
        makeTransport: { funnel throws(MemWallError) in try URingTransport.makeWithFallback(funnel: funnel) },
        makeTarget: { n throws(MemWallError) in .storage(try BufferedFallbackTests.bufferedFile(n)) })
    static let checks: [ConformanceCheck] = [.roundTrip, .scatterGather, .alignmentErrors, .faultShortTransfer]

    @Test(arguments: TransportConformance.applicableChecks(for: fixture, among: checks))
    func conformanceOnBufferedFile(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture)
    }

    @Test func checksThatDoNotApply() throws { try skipInapplicableChecks(of: Self.fixture, among: Self.checks) }
}
