import Foundation
import Testing

/// `memwall kv` as a user runs it: the executable built next to the test bundle.
@Suite struct KVCommandTests {
    static let executable: String? = {
        let candidates = [
            Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("memwall").path,
            TestPaths.repository + "/.build/debug/memwall",
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    struct Outcome { var status: Int32; var stdout: String; var stderr: String }

    static func run(_ arguments: [String]) throws -> Outcome {
        guard let executable else {
            try Test.cancel("the memwall executable is not built (swift build --build-tests builds it)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                       stderr: String(decoding: e, as: UTF8.self))
    }

    static let malformedTrace: String = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-kv-\(getpid())-bad.jsonl")
        let text = """
            {"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [0, 1]}
            {"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [0, 1]}
            {"timestamp": 2, "input_length": 600 "output_length": 1, "hash_ids": [0, 1]}

            """
        try? text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }()

    @Test("bad input: one error line naming the value, non-zero exit", arguments: [
        (["kv", "replay", malformedTrace], "bad.jsonl:3:"),
        (["kv", "replay", TestPaths.shippedTrace, "--tiers", "dram:0"], "'0'"),
        (["kv", "replay", TestPaths.shippedTrace, "--policy", "lru,lirs"], "'lirs'"),
        (["kv", "replay", TestPaths.shippedTrace, "--lookahead", "-1"], "--lookahead"),
        (["kv", "replay", TestPaths.shippedTrace, "--tiers", "dram:10,far:10", "--far-node", "9"], "node 9 does not exist"),
        (["kv", "replay", "/nonexistent/trace.jsonl"], "does not exist"),
        (["kv", "route", TestPaths.shippedTrace, "--routing", "random"], "'random'"),
        (["kv", "route", TestPaths.shippedTrace, "--capacity", "0"], "--capacity"),
    ])
    func badInput(arguments: [String], expected: String) throws {
        let r = try Self.run(arguments)
        #expect(r.status != 0)
        #expect(r.stderr.contains(expected), "stderr: \(r.stderr)")
        #expect(r.stdout.isEmpty)
    }

    @Test func replayPrintsStableJSON() throws {
        let r = try Self.run(["kv", "replay", TestPaths.shippedTrace, "--limit", "300", "--tiers", "dram:200,far:400",
                              "--policy", "lru,lfuda", "--json", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(json["schema"] as? String == "memwall.kv.replay/1")
        let policies = try #require(json["policies"] as? [[String: Any]])
        #expect(policies.map { $0["policy"] as? String } == ["lru", "lfuda"])
        #expect((policies[0]["lookups"] as? Int ?? 0) > 0)
    }

    @Test func policyAllRunsEveryPolicyAndTheOracleInTheSameShape() throws {
        let r = try Self.run(["kv", "replay", TestPaths.shippedTrace, "--limit", "300", "--tiers", "dram:200",
                              "--policy", "all", "--json", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let policies = try #require(json["policies"] as? [[String: Any]])
        #expect(policies.map { $0["policy"] as? String } == ["lru", "lfuda", "arc", "s3fifo", "wtinylfu", "kvaware", "belady"])
        let rates = policies.compactMap { $0["hitRate"] as? Double }
        #expect(rates.count == 7)
        #expect(rates.allSatisfy { $0 <= rates[6] }, "a policy beat the oracle: \(rates)")
        #expect(json["oracle"] == nil)   // already among the policies
        // Asked for one policy, the report still carries the oracle beside it.
        let one = try Self.run(["kv", "replay", TestPaths.shippedTrace, "--limit", "300", "--tiers", "dram:200,far:400",
                                "--policy", "lru", "--lookahead", "4", "--json", "--quiet"])
        #expect(one.status == 0, "\(one.stderr)")
        let j1 = try #require(try JSONSerialization.jsonObject(with: Data(one.stdout.utf8)) as? [String: Any])
        let oracle = try #require(j1["oracle"] as? [String: Any])
        #expect(oracle["policy"] as? String == "belady")
        let runs = try #require(j1["policies"] as? [[String: Any]])
        #expect(runs.map { $0["lookahead"] as? Int } == [0, 4])
        let text = try Self.run(["kv", "replay", TestPaths.shippedTrace, "--limit", "300", "--tiers", "dram:200",
                                 "--policy", "lru", "--quiet"])
        #expect(text.stdout.contains("belady (oracle)"))
    }

    @Test func realBytesReplayReportsVerifiedReadBacksAndPaths() throws {
        let r = try Self.run(["kv", "replay", TestPaths.shippedTrace, "--limit", "300", "--tiers", "dram:100,far:1000",
                              "--policy", "lfuda", "--real-bytes", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("read-backs verified"))
        #expect(r.stdout.contains("cpu: dram -> far"))
        #expect(r.stdout.contains("cpu: caller -> dram"))
        #expect(r.stdout.contains("[emulated]"))
    }
}
