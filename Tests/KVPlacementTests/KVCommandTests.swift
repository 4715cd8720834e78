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
        (["bench", "kv", "--block-bytes", "1k"], "--block-bytes"),
        (["bench", "kv", "--block-bytes", "6k"], "--block-bytes"),
        (["bench", "kv", "--block-bytes", "8M"], "--block-bytes"),
        (["bench", "kv", "--batch", "0"], "--batch"),
        (["bench", "kv", "--batch", "100000"], "--batch"),
        (["bench", "kv", "--qd", "0"], "--qd"),
        (["bench", "kv", "--qd", "-4"], "--qd"),
        (["bench", "kv", "--bytes", "0"], "--bytes"),
        (["bench", "kv", "--bytes", "1T"], "--bytes"),
        (["bench", "kv", "--bytes", "1M", "--block-bytes", "256k", "--batch", "32"], "--bytes"),
        (["bench", "kv", "--far-node", "-1"], "--far-node"),
        (["bench", "kv", "--far-node", "9", "--bytes", "64k", "--block-bytes", "4k", "--batch", "4"], "node 9 does not exist"),
        (["bench", "kv", "--dir", "/nonexistent-memwall-dir", "--bytes", "64k", "--block-bytes", "4k", "--batch", "4"], "--dir"),
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

    // MARK: bench kv

    /// A fresh private directory for one run's scratch file.
    static func scratchDirectory(_ name: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-benchkv-\(getpid())-\(name)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// `bench kv` at tiny sizes, as JSON; the scratch directory must be empty again afterwards.
    static func benchKV(_ name: String, _ extra: [String] = []) throws -> [String: Any] {
        let dir = try scratchDirectory(name)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(["bench", "kv", "--block-bytes", "4k", "--batch", "4", "--qd", "4", "--bytes", "256k",
                         "--dir", dir, "--json", "--quiet"] + extra)
        #expect(r.status == 0, "\(r.stderr)")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: dir)) == [], "the scratch file was left behind")
        return try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "stdout: \(r.stdout)")
    }

    @Test func benchKVMeasuresEveryPhaseInItsTierBesideItsReference() throws {
        let json = try Self.benchKV("phases")
        #expect(json["schema"] as? String == "memwall.bench.kv/1")
        #expect(json["blocksPerPhase"] as? Int == 64)
        let phases = try #require(json["phases"] as? [[String: Any]])
        let pairs = phases.map { "\($0["phase"] as? String ?? "?")/\($0["tier"] as? String ?? "?")" }
        #expect(pairs == ["offload/far", "onload/far", "offload/nvme", "onload/nvme"])
        let fioInstalled = !(json["fio"] is NSNull) && json["fio"] != nil
        for (name, p) in zip(pairs, phases) {
            #expect(p["blockBytes"] as? Int == 4096, "\(name)")
            #expect(p["bytes"] as? Int == 256 << 10, "\(name)")
            #expect((p["gigabytesPerSecond"] as? Double ?? 0) > 0, "\(name)")
            let p50 = p["latencyP50"] as? Int ?? 0, p99 = p["latencyP99"] as? Int ?? 0
            #expect(p50 > 0 && p99 >= p50, "\(name): p50 \(p50), p99 \(p99)")
            // lookup put every block in the tier measured, and only there.
            #expect(p["tiersSeen"] as? [String] == [p["tier"] as? String ?? "?"], "\(name): \(p["tiersSeen"] ?? "none")")
            #expect(!(p["referenceTool"] as? String ?? "").isEmpty, "\(name)")
            #expect(p.keys.contains("referenceGigabytesPerSecond") && p.keys.contains("ratio"), "\(name)")
            let reference = try #require(p["reference"] as? [String: Any])
            if p["tier"] as? String == "far" || fioInstalled {
                #expect((p["referenceGigabytesPerSecond"] as? Double ?? 0) > 0, "\(name): \(reference)")
                #expect((p["ratio"] as? Double ?? 0) > 0, "\(name)")
            }
        }
        let memcpy = try #require(phases.first?["referenceTool"] as? String)
        #expect(memcpy.hasPrefix("memcpy"))
        if fioInstalled {
            let onload = try #require(phases.last?["reference"] as? [String: Any])
            #expect((onload["command"] as? String ?? "").contains("--rw=read"))
            #expect((onload["batchCommand"] as? String ?? "").contains("--size=16384"))
        }
        let lookups = try #require(json["lookupWhileOnloading"] as? [String: Any])
        #expect(lookups["keys"] as? Int == 32)
        #expect(lookups["onloadTier"] as? String == "nvme")
        #expect(lookups["onloadBytes"] as? Int == 256 << 10)
        #expect(lookups["allHit"] as? Bool == true)
        #expect(lookups.keys.contains("latencyP99") && lookups.keys.contains("lookups"))
    }

    @Test func benchKVWithoutFioSaysWhyAndGivesNull() throws {
        let json = try Self.benchKV("nofio", ["--fio", "/nonexistent/fio"])
        #expect(json["fio"] is NSNull)
        let phases = try #require(json["phases"] as? [[String: Any]])
        for p in phases where p["tier"] as? String == "nvme" {
            #expect(p["referenceGigabytesPerSecond"] is NSNull)
            #expect(p["ratio"] is NSNull)
            let reference = try #require(p["reference"] as? [String: Any])
            #expect((reference["skipped"] as? String ?? "").contains("not installed"), "\(reference)")
        }
        // The far tier's reference does not need fio.
        for p in phases where p["tier"] as? String == "far" {
            #expect((p["referenceGigabytesPerSecond"] as? Double ?? 0) > 0)
        }
    }

    @Test func benchKVLeavesAnExistingFileAloneWithoutAllowWrite() throws {
        let dir = try Self.scratchDirectory("existing")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let victim = dir + "/precious.bin"
        let original = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try original.write(to: URL(fileURLWithPath: victim))
        let r = try Self.run(["bench", "kv", "--block-bytes", "4k", "--batch", "4", "--bytes", "64k", "--file", victim, "--quiet"])
        #expect(r.status != 0, "an existing --file was written without --allow-write")
        #expect(r.stderr.contains("--file") && r.stderr.contains("--allow-write"), "\(r.stderr)")
        #expect(FileManager.default.contents(atPath: victim) == original, "the existing file was changed")
    }
}
