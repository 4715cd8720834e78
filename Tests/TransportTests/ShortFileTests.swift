#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing
import Transport
import URingTransport

/// A file that shrinks after `prepare` (another process truncated it) makes the
/// read hit end of file: the descriptor fails with `shortTransfer`, naming the
/// file, instead of returning a buffer with stale bytes at its end.
@Suite struct ShortFileTests {
    static let transports: [(String, @Sendable () throws -> any Transport)] = [
        ("io_uring", { try URingTransport(configuration: URingConfiguration(queueDepth: 4, batchSize: 1)) }),
        ("pread-pool", { try ThreadPoolStorageTransport(queueDepth: 2) }),
    ]

    /// Storage transport `which` of ``transports``; the test is cancelled, with the reason, where it cannot run.
    static func transport(_ which: Int) throws -> any Transport {
        let (name, make) = transports[which]
        do { return try make() } catch { try Test.cancel("\(name) is unavailable here: \(error)") }
    }

    @Test(arguments: [0, 1])
    func fileShrunkUnderneathIsShortTransfer(_ which: Int) async throws {
        let t = try Self.transport(which)
        let file = try ScratchFile.make(64 * 1024)
        let r = try MemoryRegion.allocate(byteCount: 64 * 1024)
        try t.register(r)
        let prepared = try t.prepare(.read, [TransferDescriptor(local: r, target: .storage(file), targetOffset: 32 * 1024, length: 32 * 1024)])
        #expect(ftruncate(file.fileDescriptor, 8192) == 0)
        let request = try t.post(prepared)
        await #expect {
            try await request.wait()
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.code == .shortTransfer && e.message.contains(file.path)
        }
        try t.deregister(r)
    }
}

/// Without a completion thread, requests finish only when the caller reaps
/// (fio's model); dropping the transport with I/O in flight still waits for it.
@Suite(.enabled(if: ioUringUsable, "io_uring is refused on this host"))
struct URingPollingModeTests {
    @Test func callerReapsCompletions() throws {
        let t = try URingTransport(configuration: URingConfiguration(queueDepth: 8, batchSize: 4, completionThread: false))
        let file = try ScratchFile.make(1 << 20)
        let src = try MemoryRegion.allocate(byteCount: 64 * 1024)
        let dst = try MemoryRegion.allocate(byteCount: 64 * 1024)
        try t.register(src); try t.register(dst)
        src.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: i &* 13) } }
        let w = try t.post(try t.prepare(.write, (0..<16).map {
            TransferDescriptor(local: src, localOffset: $0 * 4096, target: .storage(file), targetOffset: Int64($0) * 8192, length: 4096)
        }))
        var rounds = 0
        while w.poll() == .pending && rounds < 10_000 { t.reapCompletions(waitMicroseconds: 1000); rounds += 1 }
        #expect(w.poll() == .completed)
        let r = try t.post(try t.prepare(.read, (0..<16).map {
            TransferDescriptor(local: dst, localOffset: $0 * 4096, target: .storage(file), targetOffset: Int64($0) * 8192, length: 4096)
        }))
        while r.poll() == .pending && rounds < 20_000 { t.reapCompletions(waitMicroseconds: 1000); rounds += 1 }
        #expect(r.poll() == .completed)
        let same = src.withUnsafeBytes { a in dst.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
        #expect(same)
        try t.deregister(src); try t.deregister(dst)
    }

    @Test func droppingTheTransportDrainsWhatIsInFlight() throws {
        weak var weakRegion: MemoryRegion?
        var request: TransferRequest?
        do {
            let t = try URingTransport(configuration: URingConfiguration(queueDepth: 4, batchSize: 4, completionThread: false))
            let file = try ScratchFile.make(1 << 20)
            let region = try MemoryRegion.allocate(byteCount: 256 * 1024)
            weakRegion = region
            try t.register(region)
            request = try t.post(try t.prepare(.read, (0..<64).map {
                TransferDescriptor(local: region, localOffset: $0 * 4096, target: .storage(file), targetOffset: Int64($0) * 4096, length: 4096)
            }))
        }
        // The transport's deinit reaped what the kernel had and cancelled the rest.
        let statuses = try #require(request).descriptorStatuses
        let allFinal = statuses.allSatisfy { $0.isFinal }
        #expect(allFinal)
        #expect(statuses.contains(.cancelled), "with depth 4, most of 64 descriptors were never submitted")
        request = nil
        #expect(weakRegion == nil)
    }
}
