#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing
import Transport
import URingTransport

/// The slot-based fast path: same data, same fault handling and same
/// buffer-lifetime rules as the request path, without per-I/O objects.
@Suite(.enabled(if: ioUringUsable, "io_uring is refused on this host (seccomp or kernel.io_uring_disabled)"))
struct URingDirectQueueTests {
    static let block = 4096
    static let blocks = 64

    /// A 64-block file whose block k is filled with a pattern of k, written through the request path.
    static func patternedFile(_ t: URingTransport) async throws -> StorageTarget {
        let file = try ScratchFile.make(blocks * block)
        try await writePattern(t, to: file)
        return file
    }

    /// Writes the pattern over the first 64 blocks of `file` through the request path.
    static func writePattern(_ t: URingTransport, to file: StorageTarget) async throws {
        let src = try MemoryRegion.allocate(byteCount: blocks * block)
        src.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: (i / block) &* 37 &+ i &* 7) } }
        try t.register(src)
        try await t.transfer(.write, [TransferDescriptor(local: src, target: .storage(file), length: blocks * block)])
        try t.deregister(src)
    }

    static func expected(block k: Int, byte i: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: k &* 37 &+ (k * block + i) &* 7)
    }

    /// Reads every block once through a queue of `depth` slots, reposting as slots free, and checks the bytes.
    static func readAll(_ t: URingTransport, _ file: StorageTarget, depth: Int,
                        spinMicroseconds: Int = 0, singleIssuer: Bool = false) throws -> [Result<Int, MemWallError>] {
        let dst = try MemoryRegion.allocate(byteCount: depth * block)
        try t.register(dst)
        defer { try? t.deregister(dst) }
        let order = (0..<blocks).shuffled()
        var prepared: [[PreparedTransfer]] = Array(repeating: [], count: depth)
        for (n, k) in order.enumerated() {
            prepared[n % depth].append(try t.prepare(.read, [TransferDescriptor(
                local: dst, localOffset: (n % depth) * block, target: .storage(file), targetOffset: Int64(k * block), length: block)]))
        }
        var blockOf: [[Int]] = Array(repeating: [], count: depth)
        for (n, k) in order.enumerated() { blockOf[n % depth].append(k) }
        var next = Array(repeating: 1, count: depth)
        var results: [Result<Int, MemWallError>] = []
        var mismatches = 0
        let queue = try URingDirectQueue(transport: t, regions: [dst], depth: depth, singleIssuer: singleIssuer)
        for s in 0..<depth { try queue.post(prepared[s][0], slot: s) }
        while queue.inFlight > 0 {
            try queue.reap(spinMicroseconds: spinMicroseconds) { (c: URingDirectQueue.Completion) throws(MemWallError) in
                results.append(c.result)
                let s = c.slot
                let k = blockOf[s][next[s] - 1]
                if case .success = c.result {
                    dst.withUnsafeBytes { b in
                        for i in 0..<block where b[s * block + i] != expected(block: k, byte: i) { mismatches += 1 }
                    }
                }
                if next[s] < prepared[s].count {
                    try queue.post(prepared[s][next[s]], slot: s)
                    next[s] += 1
                }
            }
        }
        #expect(mismatches == 0)
        return results
    }

    @Test(arguments: [1, 8, 32])
    func readsEveryBlockCorrectly(depth: Int) async throws {
        let t = try URingTransport()
        let file = try await Self.patternedFile(t)
        let results = try Self.readAll(t, file, depth: depth)
        #expect(results.count == Self.blocks)
        #expect(results.allSatisfy { (try? $0.get()) == Self.block })
        #expect(t.costEstimator.estimate(target: .storage, operation: .read) != nil)
    }

    @Test func singleIssuerSpinningQueueReadsEveryBlockCorrectly() async throws {
        let t = try URingTransport()
        let file = try await Self.patternedFile(t)
        let results = try Self.readAll(t, file, depth: 16, spinMicroseconds: 100, singleIssuer: true)
        #expect(results.count == Self.blocks)
        #expect(results.allSatisfy { (try? $0.get()) == Self.block })
    }

    @Test func writesAreReadBackThroughTheRequestPath() async throws {
        let t = try URingTransport()
        let file = try ScratchFile.make(16 * Self.block)
        let src = try MemoryRegion.allocate(byteCount: 16 * Self.block)
        src.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: i &* 13 &+ 5) } }
        try t.register(src)
        do {
            let queue = try URingDirectQueue(transport: t, regions: [src], depth: 16)
            for k in 0..<16 {
                try queue.post(try t.prepare(.write, [TransferDescriptor(local: src, localOffset: k * Self.block, target: .storage(file),
                                                                         targetOffset: Int64(k * Self.block), length: Self.block)]), slot: k)
            }
            var written = 0
            while queue.inFlight > 0 {
                try queue.reap { (c: URingDirectQueue.Completion) throws(MemWallError) in written += try c.result.get() }
            }
            #expect(written == 16 * Self.block)
        }
        let dst = try MemoryRegion.allocate(byteCount: 16 * Self.block)
        try t.register(dst)
        try await t.transfer(.read, [TransferDescriptor(local: dst, target: .storage(file), length: 16 * Self.block)])
        let same = src.withUnsafeBytes { a in dst.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
        #expect(same)
        try t.deregister(src); try t.deregister(dst)
    }

    @Test func shortReadsAreResumedAndTransientErrorsRetried() async throws {
        let injector = FaultInjector([
            .init("io_uring.read", .short(fraction: 0.25), after: 3, times: 5),
            .init("io_uring.read", .error(.wouldBlock), after: 10, times: 3),
            .init("io_uring.read", .error(.interrupted), after: 20, times: 2),
        ])
        let t = try URingTransport(funnel: SyscallFunnel(faults: injector))
        let file = try await Self.patternedFile(try URingTransport())
        let results = try Self.readAll(t, file, depth: 8)
        #expect(results.count == Self.blocks)
        #expect(results.allSatisfy { (try? $0.get()) == Self.block })
        #expect(injector.firedCount("io_uring.read") == 10)
    }

    @Test func ioErrorFailsOnlyItsSlot() async throws {
        let injector = FaultInjector([.init("io_uring.read", .error(.ioError), after: 5, times: 1)])
        let t = try URingTransport(funnel: SyscallFunnel(faults: injector))
        let file = try await Self.patternedFile(try URingTransport())
        let results = try Self.readAll(t, file, depth: 4)
        #expect(results.count == Self.blocks)
        let failures = results.compactMap { r -> MemWallError? in if case .failure(let e) = r { e } else { nil } }
        #expect(failures.count == 1)
        #expect(failures.first?.code == .systemCall)
        #expect(failures.first?.errno == .ioError)
    }

    @Test func badPostsAreRefusedWithClearErrors() throws {
        let t = try URingTransport()
        let file = try ScratchFile.make(1 << 20)
        let a = try MemoryRegion.allocate(byteCount: 64 * 1024)
        let b = try MemoryRegion.allocate(byteCount: 64 * 1024)
        try t.register(a); try t.register(b)
        let queue = try URingDirectQueue(transport: t, regions: [a], depth: 4)
        let one = try t.prepare(.read, [TransferDescriptor(local: a, target: .storage(file), length: 4096)])
        /// The MemWallError `body` throws (nil when it does not throw, or throws something else).
        func code(_ body: () throws -> Void) -> MemWallError? {
            do { try body(); return nil } catch { return error as? MemWallError }
        }
        #expect(code { try queue.post(one, slot: 4) }?.message.contains("0..<4") == true)
        #expect(code { try queue.post(one, slot: -1) }?.code == .invalidArgument)
        let two = try t.prepare(.read, [TransferDescriptor(local: a, target: .storage(file), length: 4096),
                                        TransferDescriptor(local: a, localOffset: 4096, target: .storage(file), targetOffset: 4096, length: 4096)])
        #expect(code { try queue.post(two, slot: 0) }?.message.contains("1 per slot") == true)
        let other = try t.prepare(.read, [TransferDescriptor(local: b, target: .storage(file), length: 4096)])
        #expect(code { try queue.post(other, slot: 0) }?.code == .notFound)
        try queue.post(one, slot: 0)
        #expect(queue.isBusy(slot: 0))
        #expect(code { try queue.post(one, slot: 0) }?.message.contains("still holds") == true)
        while queue.inFlight > 0 { queue.reap { _ in } }
        #expect(!queue.isBusy(slot: 0))
        #expect(code { _ = try URingDirectQueue(transport: t, regions: [a], depth: 0) }?.code == .invalidArgument)
        let unregistered = try MemoryRegion.allocate(byteCount: 4096)
        #expect(code { _ = try URingDirectQueue(transport: t, regions: [unregistered], depth: 2) }?.code == .notFound)
        try t.deregister(b)
    }

    @Test func regionsCannotBeDeregisteredWhileAQueueUsesThem() throws {
        let t = try URingTransport()
        let r = try MemoryRegion.allocate(byteCount: 64 * 1024)
        try t.register(r)
        do {
            let queue = try URingDirectQueue(transport: t, regions: [r], depth: 2)
            #expect(throws: MemWallError.self) { try t.deregister(r) }
            #expect(queue.depth == 2)
        }
        // The queue is gone: its hold on the region is released.
        try t.deregister(r)
    }
}
