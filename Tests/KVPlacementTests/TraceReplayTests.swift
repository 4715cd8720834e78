#if canImport(Glibc)
import Glibc
#endif
import KVPlacement
import MemWallCore
import Testing

/// Paths the tests read, found by walking up from this file.
enum TestPaths {
    /// The repository root (holds Package.swift).
    static var repository: String {
        var dir = String(#filePath)
        for _ in 0..<3 { dir = parent(dir) }
        return dir
    }

    /// The shipped 2,000-request slice of the conversation trace.
    static var shippedTrace: String { repository + "/traces/conversation-head-2000.jsonl" }

    /// The full conversation trace under ../shared/data, when present.
    static var fullConversationTrace: String? {
        var dir = repository
        for _ in 0..<4 {
            let candidate = dir + "/shared/data/traces/conversation_trace.jsonl"
            if access(candidate, R_OK) == 0 { return candidate }
            dir = parent(dir)
        }
        return nil
    }

    static func parent(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return "." }
        return i == path.startIndex ? "/" : String(path[..<i])
    }
}

@Suite struct TraceReplayTests {
    @Test func parsesTheShippedTrace() throws {
        let t = try MooncakeTrace.load(path: TestPaths.shippedTrace)
        #expect(t.requests.count == 2000)
        #expect(t.requests[0].blockIDs.first == BlockKey(rawValue: 0))
        #expect(t.requests[0].inputLength == 6758)
        #expect(t.requests[0].blockIDs.count == 14)
    }

    @Test func malformedLineReportsItsLineNumber() {
        let text = """
            {"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [0, 1]}

            {"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": [0, 1}
            """
        do {
            _ = try MooncakeTrace.parse(Array(text.utf8), source: "t.jsonl")
            Issue.record("malformed trace was accepted")
        } catch {
            #expect(error.code == .malformedInput)
            #expect(error.message.hasPrefix("t.jsonl:3:"), "\(error.message)")
        }
    }

    @Test(arguments: [
        (#"{"timestamp": 0, "input_length": 600, "hash_ids": [0]}"#, "needs 2 blocks"),
        (#"{"timestamp": 0, "hash_ids": [0]}"#, "missing \"input_length\""),
        (#"{"timestamp": 0, "input_length": 10, "hash_ids": [-4]}"#, "negative"),
        (#"{"timestamp": 1.5, "input_length": 10, "hash_ids": [4]}"#, "whole number"),
        (#"[1, 2]"#, "expected '{'"),
        (#"{"timestamp": 0, "input_length": 9223372036854775807, "hash_ids": [4]}"#, "needs"),
        (#"{"timestamp": 0, "input_length": 99999999999999999999, "hash_ids": [4]}"#, "64 bits"),
        (#"{"timestamp": 0, "input_length": 10, "hash_ids": [4]} x"#, "after the object"),
    ])
    func badLinesAreExplained(line: String, reason: String) {
        do {
            _ = try MooncakeTrace.parse(Array(("\n" + line + "\n").utf8), source: "bad")
            Issue.record("accepted: \(line)")
        } catch {
            #expect(error.message.hasPrefix("bad:2:"))
            #expect(error.message.contains(reason), "\(error.message)")
        }
    }

    @Test func blockSizeZeroIsRefused() {
        #expect(throws: MemWallError.self) { try MooncakeTrace.parse(Array("{}".utf8), blockTokens: 0) }
    }

    @Test func missingTraceIsNotFound() {
        do {
            _ = try MooncakeTrace.load(path: "/nonexistent/trace.jsonl")
            Issue.record("missing file was accepted")
        } catch {
            #expect(error.code == .notFound)
        }
    }

    @Test func replayOfTheShippedTraceCountsEveryLookup() throws {
        let t = try MooncakeTrace.load(path: TestPaths.shippedTrace)
        let r = try TraceReplay.run(t, tiers: threeTiers(500, 1000, 4000), policy: .lfuda)
        #expect(r.statistics.lookups == t.blockReferences)
        #expect(r.statistics.hits + r.statistics.misses == r.statistics.lookups)
        #expect(r.statistics.hitsByTier.allSatisfy { $0 > 0 })
        #expect(r.prefillTokensSaved > 0)
        #expect(r.prefillTokensSaved <= r.inputTokens)
    }

    @Test func prefetchingMovesHitsToDRAMWithoutChangingTheHitRate() throws {
        let t = try MooncakeTrace.load(path: TestPaths.shippedTrace)
        let tiers = threeTiers(300, 900, 4000)
        let plain = try TraceReplay.run(t, tiers: tiers, policy: .lru)
        let ahead = try TraceReplay.run(t, tiers: tiers, policy: .lru, prefetchAhead: 1)
        // Promotion reorders later demotions a little, so the last tier may drop a different block.
        #expect(abs(ahead.statistics.hits - plain.statistics.hits) * 200 <= plain.statistics.hits)
        #expect(ahead.prefetchedBlocks > 0)
        #expect(ahead.statistics.hitsByTier[0] > plain.statistics.hitsByTier[0])
    }

    /// The correctness check of the engine: LRU must reproduce the reference
    /// figures published with the trace (README in ../shared/data/traces).
    @Test(.enabled(if: TestPaths.fullConversationTrace != nil, "the full conversation trace (../shared/data/traces) is not on this machine"))
    func lruReproducesTheReferenceHitRates() throws {
        let t = try MooncakeTrace.load(path: try #require(TestPaths.fullConversationTrace))
        let lru5k = try TraceReplay.run(t, tiers: dram(5_000), policy: .lru).statistics.hitRate
        let lru10k = try TraceReplay.run(t, tiers: dram(10_000), policy: .lru).statistics.hitRate
        #expect(abs(lru5k - 0.110) < 0.005, "LRU 5k: \(lru5k)")
        #expect(abs(lru10k - 0.211) < 0.005, "LRU 10k: \(lru10k)")
        let lfuda10k = try TraceReplay.run(t, tiers: dram(10_000), policy: .lfuda).statistics.hitRate
        #expect(lfuda10k >= 0.211, "LFUDA 10k: \(lfuda10k)")
        let tiered = try TraceReplay.run(t, tiers: threeTiers(5_000, 15_000, 100_000), policy: .lfuda).statistics.hitRate
        #expect(tiered >= 0.95 * 0.366, "tiered: \(tiered)")
    }
}

@Suite struct RouterTests {
    @Test func overlapAloneSendsEverythingToOneWorkerCostBalances() throws {
        let t = try MooncakeTrace.load(path: TestPaths.shippedTrace)
        let overlap = try KVRouter(workers: 4, tiers: dram(2_000), eviction: .lru, policy: .overlap)
        let cost = try KVRouter(workers: 4, tiers: dram(2_000), eviction: .lru, policy: .cost)
        let rr = try KVRouter(workers: 4, tiers: dram(2_000), eviction: .lru, policy: .roundRobin)
        for r in t.requests {
            try overlap.route(r.blockIDs)
            try cost.route(r.blockIDs)
            try rr.route(r.blockIDs)
        }
        // Block 0 starts every request, so overlap alone never leaves worker 0.
        #expect(overlap.assigned[0] == t.requests.count)
        #expect(overlap.loadImbalance == 4)
        #expect(cost.loadImbalance <= 1.1)
        #expect(cost.hitRate > rr.hitRate)
    }

    @Test(.enabled(if: TestPaths.fullConversationTrace != nil, "the full conversation trace (../shared/data/traces) is not on this machine"))
    func eightWorkersReachTheTarget() throws {
        let t = try MooncakeTrace.load(path: try #require(TestPaths.fullConversationTrace))
        let router = try KVRouter(workers: 8, tiers: dram(6_000), eviction: .lru, policy: .cost)
        for r in t.requests { try router.route(r.blockIDs) }
        #expect(router.hitRate >= 0.33)
        #expect(router.loadImbalance <= 1.1)
    }

    @Test func zeroWorkersIsRefused() {
        #expect(throws: MemWallError.self) { try KVRouter(workers: 0, tiers: dram(10), eviction: .lru, policy: .cost) }
    }
}
