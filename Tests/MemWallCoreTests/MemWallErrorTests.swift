#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing

@Suite("Errors name the C function, the errno and what to do")
struct MemWallErrorTests {
    @Test func errnoHasSymbolicName() {
        #expect(Errno.noMemory.name == "ENOMEM")
        #expect(Errno.interrupted.name == "EINTR")
        #expect(Errno(rawValue: EIO).description == "EIO (Input/output error)")
        #expect(Errno(rawValue: 4242).name == "errno 4242")
    }

    @Test func descriptionCarriesFunctionAndErrno() {
        let e = MemWallError.system("io_uring_register_buffers", .noMemory, "cannot pin 64 MiB")
        #expect(e.code == .systemCall)
        #expect(e.description == "cannot pin 64 MiB (io_uring_register_buffers: ENOMEM (Cannot allocate memory))")
    }

    @Test func invalidNamesValueAndValidChoices() {
        let e = MemWallError.invalid("queue depth", 0, expected: "1...4096")
        #expect(e.code == .invalidArgument)
        #expect(e.message == "invalid queue depth '0': expected 1...4096")
    }

    @Test func negativeErrnoConvention() throws {
        #expect(try CCall.negativeErrno(Int32(5), "io_uring_submit", "x") == 5)
        let e = #expect(throws: MemWallError.self) { try CCall.negativeErrno(Int32(-EAGAIN), "io_uring_submit", "submit failed") }
        #expect(e?.errno == .wouldBlock)
        #expect(e?.function == "io_uring_submit")
    }

    @Test func minusOneConventionReadsErrno() {
        memwall_test_set_errno(EACCES)
        let e = #expect(throws: MemWallError.self) { try CCall.minusOne(Int32(-1), "rdma_connect", "connect failed") }
        #expect(e?.errno == .accessDenied)
    }

    @Test func returnsErrnoConvention() throws {
        try CCall.returnsErrno(Int32(0), "ibv_post_send", "ok")
        let e = #expect(throws: MemWallError.self) { try CCall.returnsErrno(Int32(ENOMEM), "ibv_post_send", "send queue full") }
        #expect(e?.errno == .noMemory)
    }

    @Test func nonNullConventionNeverReportsSuccessAsError() {
        memwall_test_set_errno(0)
        let p: UnsafeMutableRawPointer? = nil
        let e = #expect(throws: MemWallError.self) { try CCall.nonNull(p, "ibv_reg_mr", "registration failed") }
        #expect(e?.errno == .noMemory, "a NULL without errno must not read as 'Success'")
    }
}

/// Sets errno the way a failing C call would, so converters can be tested.
func memwall_test_set_errno(_ value: Int32) { errno = value }
