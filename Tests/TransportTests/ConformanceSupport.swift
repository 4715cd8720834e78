import MemWallCore
import Testing
import Transport
import TransportConformance

// Shared by TransportTests and RDMATransportTests (a symlink there): test
// targets cannot import each other, and the library stays free of Testing.

/// Runs one conformance check that is expected to apply; a skip here would
/// hide a gap, so it is recorded as an issue.
func runConformanceCheck(_ check: ConformanceCheck, on fixture: ConformanceFixture) async throws {
    let outcome = try await TransportConformance.run(check, on: fixture)
    if case .skipped(let why) = outcome { Issue.record("\(check) was expected to apply to \(fixture.name): \(why)") }
}

/// Reports the checks that do not apply to `fixture` as one visible skip
/// (swift test shows a cancelled test with its reason, but reports a cancelled
/// case of a parameterized test as passed).
func skipInapplicableChecks(of fixture: ConformanceFixture, among checks: [ConformanceCheck] = ConformanceCheck.allCases) throws {
    let summary = try #require(TransportConformance.skippedChecksSummary(for: fixture, among: checks),
                               "every check applies to \(fixture.name); remove this test")
    try Test.cancel(Comment(rawValue: summary))
}
