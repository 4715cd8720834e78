import Foundation
import Testing
@testable import Topology

/// `memwall topo` as a user runs it: the built executable next to the test bundle.
@Suite struct TopoCommandTests {
    /// `.build/<config>/memwall`, built by `swift build --build-tests` alongside this bundle.
    static let executable: String? = {
        let bundleDir = Bundle.main.bundleURL.deletingLastPathComponent()
        let candidates = [
            bundleDir.appendingPathComponent("memwall").path,
            TestData.repositoryRoot.appendingPathComponent(".build/debug/memwall").path,
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    struct Outcome { var status: Int32; var stdout: String; var stderr: String }

    static func run(_ arguments: [String]) throws -> Outcome {
        guard let executable else {
            try Test.cancel("the memwall executable is not built (swift build --build-tests builds it)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                       stderr: String(decoding: e, as: UTF8.self))
    }

    static let notSysfs: String = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-cli-\(getpid())-empty")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.path
    }()

    static let malformed: String = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-cli-\(getpid())-bad.xml")
        try? "<?xml version=\"1.0\"?>\n<topology version=\"2.0\"><object type=\"Machine\"".write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }()

    @Test("bad input: one-line error, non-zero exit", arguments: [
        ["topo", "--xml", "/nonexistent.xml"],
        ["topo", "--xml", TopoCommandTests.malformed],
        ["topo", "--fsroot", TopoCommandTests.notSysfs],
        ["topo", "--fsroot", "/nonexistent-dir"],
        ["topo", "--synthetic", "pack:2 bogus:3"],
        ["topo", "--xml", TestData.fixtures.appendingPathComponent("lab-guest.xml").path, "--synthetic", "pu:2"],
    ])
    func badInput(_ arguments: [String]) throws {
        let outcome = try Self.run(arguments)
        #expect(outcome.status != 0)
        #expect(outcome.stdout.isEmpty)
        let lines = outcome.stderr.split(separator: "\n")
        #expect(!lines.isEmpty)
        #expect(lines.first?.lowercased().hasPrefix("error:") == true)
        // ArgumentParser adds a usage hint only for usage mistakes; a failing input is one line.
        if !arguments.contains("pu:2") { #expect(lines.count == 1, "\(outcome.stderr)") }
    }

    @Test func jsonAndSVGForTheLabFixture() throws {
        let svg = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-cli-\(getpid()).svg").path
        let xml = TestData.fixtures.appendingPathComponent("lab-guest.xml").path
        let outcome = try Self.run(["topo", "--xml", xml, "--json", "--svg", svg])
        #expect(outcome.status == 0)
        let json = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        let tiers = json?["tiers"] as? [[String: Any]]
        #expect(tiers?.map { $0["kind"] as? String } == ["dram", "far-memory"])
        #expect(FileManager.default.contents(atPath: svg).map { String(decoding: $0, as: UTF8.self).hasSuffix("</svg>\n") } == true)
    }

    @Test func terminalViewPutsTiersFirst() throws {
        let xml = TestData.fixtures.appendingPathComponent("lab-guest.xml").path
        let outcome = try Self.run(["topo", "--xml", xml])
        #expect(outcome.status == 0)
        let tiers = try #require(outcome.stdout.range(of: "Memory tiers"))
        let nodes = try #require(outcome.stdout.range(of: "\nNodes"))
        #expect(tiers.lowerBound < nodes.lowerBound)
        #expect(outcome.stdout.contains("tier 1  CXL / far memory  node 1"))
    }
}
