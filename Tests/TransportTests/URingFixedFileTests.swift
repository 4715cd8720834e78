#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing
import Transport
import URingTransport

/// A file the ring registered as a fixed file is released when its target goes:
/// the ring must not keep the file open for the transport's whole life.
@Suite(.enabled(if: ioUringUsable, "io_uring is refused on this host (seccomp or kernel.io_uring_disabled)"))
struct URingFixedFileTests {
    @Test("the fixed-file slot of a target that is gone is emptied, so the ring stops holding its file")
    func fixedFileIsReleasedWithItsTarget() async throws {
        let t = try URingTransport()
        #expect(t.fixedFileTable, "the kernel refused the fixed-file table; nothing to release")
        let region = try MemoryRegion.allocate(byteCount: 4096)
        try t.register(region)
        let path = "\(ScratchFile.directory)/memwall-test-fixed-\(getpid()).bin"
        let other = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
        #expect(other >= 0)
        defer { close(other); unlink(path) }
        do {
            let target = try StorageTarget(path: path, createWithSize: 4096, existing: .write)
            // A lock on the target's open file lives as long as anything holds that file.
            #expect(flock(target.fileDescriptor, LOCK_EX | LOCK_NB) == 0)
            try await t.transfer(.write, [TransferDescriptor(local: region, target: .storage(target), length: 4096)])
        }
        // The target is gone (its descriptor closed); the next registration notices.
        let next = try ScratchFile.make(4096)
        try await t.transfer(.write, [TransferDescriptor(local: region, target: .storage(next), length: 4096)])
        // The kernel drops a replaced fixed file's reference lazily (when the ring's
        // resource node retires, after in-flight work), so look for a bounded while
        // rather than once; a ring that keeps the file never lets the lock go.
        var freed = false
        for _ in 0..<2000 where !freed {
            freed = flock(other, LOCK_EX | LOCK_NB) == 0
            if !freed { usleep(1000) }
        }
        #expect(freed, "the ring still holds the file of a target that is gone")
    }
}
