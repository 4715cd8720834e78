import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import KVPlacement
import MemWallCore
import Transport

/// `memwall kv`: the KV-cache placement engine on recorded traces.
struct KVCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv",
        abstract: "Replay KV-cache traces through the placement engine; simulate routing across workers.",
        subcommands: [KVReplayCommand.self, KVRouteCommand.self, KVGenerateCommand.self])
}

/// Options both kv subcommands read the trace with.
struct KVTraceOptions: ParsableArguments {
    @Argument(help: "Mooncake-format trace (JSON lines with timestamp, input_length, output_length, hash_ids).")
    var trace: String

    @Option(name: .long, help: "Tokens per block the trace's ids stand for.")
    var blockTokens: Int = 512

    @Option(name: .long, help: "Replay only the first N requests.")
    var limit: Int?

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try OptionCheck.inRange("--block-tokens", blockTokens, 1 ... 1 << 20, unit: "tokens")
        if let limit { try OptionCheck.inRange("--limit", limit, 1 ... Int(Int32.max), unit: "requests") }
    }

    func load() throws -> MooncakeTrace {
        let started = MonotonicClock.nanoseconds()
        let t = try MooncakeTrace.load(path: trace, blockTokens: blockTokens, limit: limit)
        if !output.quiet {
            let ms = Double(MonotonicClock.nanoseconds() - started) / 1e6
            StandardError.write("memwall: read \(t.requests.count) requests, \(t.blockReferences) block references from \(trace) in \(formatDecimal(ms, places: 0)) ms\n")
        }
        return t
    }
}

/// Percent with one decimal.
func kvPercent(_ x: Double) -> String { formatDecimal(x * 100, places: 1) + " %" }

/// `memwall kv generate`: a deterministic synthetic trace on standard output.
struct KVGenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Print a deterministic synthetic trace (Mooncake format) on standard output.",
        discussion: """
            agentic: tool-using agent sessions over a shared, Zipf-popular document corpus \
            (see TraceGenerator.agentic). The same seed always gives the same trace.
            """)

    @Option(name: .long, help: "Workload shape (agentic).")
    var kind: String = "agentic"

    @Option(name: .long, help: "Requests to generate (1 to 10,000,000).")
    var requests: Int = 12_000

    @Option(name: .long, help: "Seed of the generator.")
    var seed: UInt64 = 1

    func run() throws {
        guard kind == "agentic" else { throw ValidationError("--kind must be agentic, got '\(kind)'") }
        guard (1...10_000_000).contains(requests) else {
            throw ValidationError("--requests must be 1 to 10,000,000, got \(requests)")
        }
        print(TraceGenerator.agentic(requests: requests, seed: seed).jsonLines(), terminator: "")
    }
}
