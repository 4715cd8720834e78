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
            // An open-file-description lock on the descriptor the ring registers
            // lives as long as anything (the ring included) holds that description.
            // (Independent of the flock the target itself holds on its other descriptor.)
            #expect(ofdWriteLock(target.fileDescriptor) == 0)
            try await t.transfer(.write, [TransferDescriptor(local: region, target: .storage(target), length: 4096)])
        }
        // The target is gone: it told the ring, which emptied the slot. The kernel
        // drops the replaced file's reference lazily (when the ring's resource
        // node retires), so look for a bounded while rather than once; a ring
        // that kept the file would never let the lock go.
        var freed = false
        for _ in 0..<2000 where !freed {
            freed = ofdWriteLock(other) == 0
            if !freed { usleep(1000) }
        }
        #expect(freed, "the ring still holds the file of a target that is gone")
    }
}

/// `fcntl(F_OFD_SETLK)` for a write lock on the whole file; 0 when taken.
/// (F_OFD_SETLK is 37 in Linux's ABI; Swift's Glibc does not export it.)
private func ofdWriteLock(_ fd: Int32) -> Int32 {
    var l = Glibc.flock()
    l.l_type = Int16(F_WRLCK)
    l.l_whence = Int16(SEEK_SET)
    return fcntl(fd, 37, &l)
}
