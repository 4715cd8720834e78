import MemWallCore
import Testing
import Transport
import TransportConformance

/// The conformance suite on the pread/pwrite thread-pool fallback, against an
/// O_DIRECT file on the host's disk.
@Suite struct ThreadPoolStorageConformanceTests {
    static let fixture = ConformanceFixture(
        name: "pread-pool on an O_DIRECT file",
        alignment: 4096,
        faultPoints: [.read: "pread", .write: "pwrite"],
        makeTransport: { funnel throws(MemWallError) in try ThreadPoolStorageTransport(queueDepth: 8, funnel: funnel) },
        makeTarget: { n throws(MemWallError) in .storage(try ScratchFile.make(n)) })

    @Test(arguments: ConformanceCheck.allCases)
    func conformance(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture)
    }

    @Test func queueDepthZeroIsRefused() {
        #expect {
            _ = try ThreadPoolStorageTransport(queueDepth: 0)
        } throws: { error in
            guard let e = error as? MemWallError else { return false }
            return e.code == .invalidArgument && e.message.contains("queue depth '0'")
        }
    }

    @Test func declaresItselfEmulation() throws {
        let t = try ThreadPoolStorageTransport(queueDepth: 1, reason: "io_uring refused in this test")
        #expect(t.capabilities.implementation == .emulation(reason: "io_uring refused in this test"))
        #expect(t.capabilities.implementation.description.hasPrefix("emulation"))
        #expect(t.capabilities.targets == [.storage])
    }
}
