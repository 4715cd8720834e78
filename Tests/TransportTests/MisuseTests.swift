#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing
@testable import Transport
import URingTransport
import NUMATransport

/// A prepared transfer belongs to the transport instance that prepared it.
@Suite(.enabled(if: ioUringUsable, "io_uring is refused on this host (seccomp or kernel.io_uring_disabled)"))
struct ForeignTransportTests {
    @Test("a transfer prepared on one io_uring transport is refused by another, whose file stays untouched")
    func crossTransportPostIsRefused() async throws {
        let a = try URingTransport()
        let b = try URingTransport()
        let fileA = try ScratchFile.make(4096)
        let fileB = try ScratchFile.make(4096)
        let src = try MemoryRegion.allocate(byteCount: 4096)
        _ = src.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0xAB) }
        try a.register(src)
        try b.register(src)
        // B registers its own file first, so its fixed-file slot 0 is fileB.
        let probe = try MemoryRegion.allocate(byteCount: 4096)
        try b.register(probe)
        try await b.transfer(.read, [TransferDescriptor(local: probe, target: .storage(fileB), length: 4096)])
        let prepared = try a.prepare(.write, [TransferDescriptor(local: src, target: .storage(fileA), length: 4096)])
        let refused = #expect(throws: MemWallError.self) { _ = try b.post(prepared) }
        #expect(refused?.code == .misuse)
        #expect(throws: MemWallError.self) { _ = try b.post(batch: [prepared]) }
        let queue = try URingDirectQueue(transport: b, regions: [src], depth: 1)
        #expect(throws: MemWallError.self) { try queue.post(prepared, slot: 0) }
        _ = queue.reap(waitingFor: 1) { _ in }
        usleep(100_000)  // let a wrongly posted write land, if there was one
        // O_DIRECT files: read back into page-aligned memory.
        let check = try MemoryRegion.allocate(byteCount: 4096)
        for (file, what) in [(fileB, "B's file was written through A's transfer"),
                             (fileA, "A's transfer ran although it was refused")] {
            _ = check.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            #expect(pread(file.fileDescriptor, check.baseAddress, 4096, 0) == 4096)
            #expect(check.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }, "\(what)")
        }
    }
}

/// Completing a descriptor twice is a transport bug: refused, with nothing counted twice.
struct DoubleCompletionTests {
    @Test("a descriptor completed twice is refused, its status and its region's use count unchanged")
    func doubleCompletionIsRefused() throws {
        let local = try MemoryRegion.allocate(byteCount: 4096)
        let far = try MemoryRegion.allocate(byteCount: 4096)
        let t = MemoryCopyTransport()
        try t.register(local)
        let ds = [TransferDescriptor(local: local, target: .memory(far), length: 16),
                  TransferDescriptor(local: local, target: .memory(far), length: 16)]
        let request = TransferRequest(prepared: try t.prepare(.write, ds), estimator: nil)
        let use = RegionUse()
        use.acquire(); use.acquire()
        let tracked = InFlightRequest(request: request, uses: [use, use])
        tracked.complete(descriptor: 0, .failure(MemWallError(.cancelled, "test")))
        let refused = #expect(throws: MemWallError.self) { try tracked.record(descriptor: 0, .success(16)) }
        #expect(refused?.code == .misuse)
        #expect(use.count == 1, "the region's use was given back twice for one descriptor")
        #expect(request.status(ofDescriptor: 0) == .cancelled)
        #expect(throws: MemWallError.self) { try tracked.record(descriptor: 2, .success(16)) }
        tracked.complete(descriptor: 1, .success(16))
        #expect(use.count == 0)
        #expect(request.poll() == .cancelled)
    }
}

/// `close()` is explicit: work already posted finishes, later posts are refused.
struct CloseTests {
    @Test("a storage transport finishes what was posted before close and refuses posts after it", arguments: [0, 1])
    func storageCloseRefusesLaterPosts(_ which: Int) async throws {
        let t = try ShortFileTests.transport(which)
        let file = try ScratchFile.make(64 * 1024)
        let r = try MemoryRegion.allocate(byteCount: 64 * 1024)
        try t.register(r)
        let prepared = try t.prepare(.write, [TransferDescriptor(local: r, target: .storage(file), length: 64 * 1024)])
        let before = try t.post(prepared)
        t.close()
        t.close()   // idempotent
        // Posted before close: it completed or was cancelled before submission; never left pending.
        #expect(before.poll() != .pending)
        let refused = #expect(throws: MemWallError.self) { _ = try t.post(prepared) }
        #expect(refused?.code == .misuse)
    }

    @Test("memory transports refuse posts after close")
    func memoryCloseRefusesLaterPosts() throws {
        let transports: [any Transport] = [MemoryCopyTransport(), NUMATransport()]
        for t in transports {
            let a = try MemoryRegion.allocate(byteCount: 8192)
            let b = try MemoryRegion.allocate(byteCount: 8192)
            try t.register(a)
            let prepared = try t.prepare(.write, [TransferDescriptor(local: a, target: .memory(b), length: 8192)])
            _ = try t.post(prepared).waitBlocking()
            t.close()
            let refused = #expect(throws: MemWallError.self) { _ = try t.post(prepared) }
            #expect(refused?.code == .misuse, "\(t.name)")
        }
    }
}
