#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KVPlacement
import MemWallCore
import Testing

/// The trace reader is bounded (line length, total input) and refuses ids
/// that are not prefix chains, naming the line and the ids.
@Suite("Trace reader bounds and prefix chains", .timeLimit(.minutes(1)))
struct TraceBoundsTests {
    private func parseError(_ text: String) -> MemWallError? {
        do {
            _ = try MooncakeTrace.parse(Array(text.utf8), source: "t.jsonl", blockTokens: 16)
            return nil
        } catch {
            return error
        }
    }

    @Test("an id that follows a different id than before is refused, naming both lines and all three ids")
    func notPrefixConsistent() throws {
        let e = try #require(parseError("""
            {"timestamp": 0, "input_length": 32, "hash_ids": [1, 2]}
            {"timestamp": 1, "input_length": 32, "hash_ids": [3, 2]}
            """))
        #expect(e.code == .malformedInput)
        #expect(e.message.hasPrefix("t.jsonl:2:"), "\(e.message)")
        #expect(e.message.contains("hash id 2 follows id 3 here but id 1 on line 1"), "\(e.message)")
    }

    @Test("an id that starts one request and continues another is refused")
    func rootThenChild() throws {
        let e = try #require(parseError("""
            {"timestamp": 0, "input_length": 16, "hash_ids": [5]}
            {"timestamp": 1, "input_length": 32, "hash_ids": [4, 5]}
            """))
        #expect(e.message.contains("hash id 5 follows id 4 here but nothing (it starts the request) on line 1"), "\(e.message)")
    }

    @Test("an id repeated inside one request is refused")
    func repeatedInsideRequest() throws {
        let e = try #require(parseError(#"{"timestamp": 0, "input_length": 48, "hash_ids": [1, 2, 1]}"#))
        #expect(e.message.hasPrefix("t.jsonl:1:"), "\(e.message)")
        #expect(e.message.contains("hash id 1"), "\(e.message)")
    }

    @Test("prefix chains that share and diverge are accepted")
    func consistentChains() throws {
        let t = try MooncakeTrace.parse(Array("""
            {"timestamp": 0, "input_length": 48, "hash_ids": [1, 2, 3]}
            {"timestamp": 1, "input_length": 48, "hash_ids": [1, 2, 4]}
            {"timestamp": 2, "input_length": 16, "hash_ids": [1]}
            {"timestamp": 3, "input_length": 16, "hash_ids": [9]}
            """.utf8), blockTokens: 16)
        #expect(t.requests.count == 4)
    }

    @Test("a file without newlines (/dev/zero) stops at the line bound instead of being read without end")
    func devZero() throws {
        do {
            _ = try MooncakeTrace.load(path: "/dev/zero")
            Issue.record("/dev/zero was accepted as a trace")
        } catch {
            #expect(error.code == .malformedInput)
            #expect(error.message.contains("/dev/zero:1: line is longer than \(MooncakeTrace.maximumLineBytes) bytes"), "\(error.message)")
        }
    }

    @Test("a trace over the total bound is refused with the bound and the way out (--limit)")
    func totalBound() throws {
        do {
            _ = try MooncakeTrace.load(path: TestPaths.shippedTrace, maximumBytes: 100_000)
            Issue.record("a 500 KB trace passed a 100 KB bound")
        } catch {
            #expect(error.code == .malformedInput)
            #expect(error.message.contains("longer than 100000 bytes"), "\(error.message)")
            #expect(error.message.contains("--limit"), "\(error.message)")
        }
        // With a limit the reader stops early and the bound is never reached.
        #expect(try MooncakeTrace.load(path: TestPaths.shippedTrace, limit: 10, maximumBytes: 2 << 20).requests.count == 10)
    }

    @Test("streaming load and in-memory parse agree on the shipped trace")
    func loadMatchesParse() throws {
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: TestPaths.shippedTrace)))
        let parsed = try MooncakeTrace.parse(bytes)
        let loaded = try MooncakeTrace.load(path: TestPaths.shippedTrace)
        #expect(parsed.requests == loaded.requests)
        #expect(loaded.requests.count == 2000)
    }
}
