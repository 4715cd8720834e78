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
        subcommands: [KVReplayCommand.self, KVRouteCommand.self])
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
