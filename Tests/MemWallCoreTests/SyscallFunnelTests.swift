#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing

@Suite("The syscall funnel plays the kernel: EINTR, EAGAIN, ENOMEM, EIO, short I/O")
struct SyscallFunnelTests {
    /// A real temporary file with known contents.
    final class TempFile {
        let path: String
        let fd: Int32
        init(bytes: [UInt8]) throws {
            var template = Array("/tmp/memwall-funnel-XXXXXX".utf8CString)
            fd = mkstemp(&template)
            path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            try #require(fd >= 0)
            _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        }
        deinit { close(fd); unlink(path) }
    }

    static let pattern: [UInt8] = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }

    @Test func realCallsPassThrough() throws {
        let f = try TempFile(bytes: Self.pattern)
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = buf.withUnsafeMutableBytes { SyscallFunnel.system.preadFully(f.fd, $0.baseAddress!, 8192, 0) }
        #expect(try n.get() == 8192)
        #expect(buf == Self.pattern)
    }

    @Test func interruptedCallIsRetriedWhenAsked() throws {
        let f = try TempFile(bytes: Self.pattern)
        let faults = FaultInjector([.init("pread", .error(.interrupted), times: 3)])
        let funnel = SyscallFunnel(faults: faults)
        var buf = [UInt8](repeating: 0, count: 4096)
        let r = buf.withUnsafeMutableBytes { funnel.pread(f.fd, $0.baseAddress!, 4096, 0) }
        #expect(try r.get() == 4096)
        #expect(faults.firedCount("pread") == 3)
        #expect(buf[...] == Self.pattern[0..<4096])
    }

    @Test func interruptedCallSurfacesWhenRetryIsOff() throws {
        let f = try TempFile(bytes: Self.pattern)
        let funnel = SyscallFunnel(faults: FaultInjector([.init("pread", .error(.interrupted))]), retryOnInterrupt: false)
        var buf = [UInt8](repeating: 0, count: 16)
        let r = buf.withUnsafeMutableBytes { funnel.pread(f.fd, $0.baseAddress!, 16, 0) }
        #expect(throws: Errno.interrupted) { try r.get() }
    }

    @Test(arguments: [Errno.wouldBlock, .noMemory, .ioError])
    func injectedErrorsSurfaceUnchanged(_ errno: Errno) throws {
        let f = try TempFile(bytes: Self.pattern)
        let funnel = SyscallFunnel(faults: FaultInjector([.init("pwrite", .error(errno), after: 1)]))
        let one: [UInt8] = [1, 2, 3, 4]
        let first = one.withUnsafeBytes { funnel.pwrite(f.fd, $0.baseAddress!, 4, 0) }
        #expect(try first.get() == 4, "the rule skips its first matching call")
        let second = one.withUnsafeBytes { funnel.pwrite(f.fd, $0.baseAddress!, 4, 0) }
        #expect(throws: errno) { try second.get() }
    }

    @Test func shortReadsAreResumedWithoutCorruption() throws {
        let f = try TempFile(bytes: Self.pattern)
        let faults = FaultInjector([.init("pread", .short(fraction: 0.3), times: 5)])
        let funnel = SyscallFunnel(faults: faults)
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = buf.withUnsafeMutableBytes { funnel.preadFully(f.fd, $0.baseAddress!, 8192, 0) }
        #expect(try n.get() == 8192)
        #expect(buf == Self.pattern)
        #expect(faults.firedCount("pread") == 5)
    }

    @Test func asyncCompletionsCanBeFaulted() {
        let funnel = SyscallFunnel(faults: FaultInjector([
            .init("io_uring.read", .error(.ioError)),
            .init("io_uring.write", .short(fraction: 0.5)),
        ]))
        #expect(funnel.completion("io_uring.read", requested: 4096, result: 4096) == -EIO)
        #expect(funnel.completion("io_uring.read", requested: 4096, result: 4096) == 4096, "rule is spent")
        #expect(funnel.completion("io_uring.write", requested: 4096, result: 4096) == 2048)
    }
}
