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

    @Test(arguments: [0, 1])
    func fileShrunkUnderneathIsShortTransfer(_ which: Int) async throws {
        let (name, make) = Self.transports[which]
        let t: any Transport
        do { t = try make() } catch { try Test.cancel("\(name) is unavailable here: \(error)") }
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
