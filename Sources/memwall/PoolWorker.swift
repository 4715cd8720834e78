import ArgumentParser
import CMemWallShim
#if canImport(Glibc)
import Glibc
#endif
import KVPlacement
import KVPool
import MemWallCore
import Transport

/// `memwall pool worker NAME`: one process of the multi-process and crash
/// tests and of `bench pool` (hidden). It attaches, says so on standard
/// output ("attached PID"), then runs requests the way an inference worker
/// uses a pool: each request is a chain of blocks — one of a few shared
/// documents (the overlapping prefixes), then blocks of its own — looked up,
/// the cached prefix loaded (every block's contents checked against what its
/// key says they are), the rest stored. It ends with a JSON report.
struct PoolWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Attach to a pool and run requests on it, checking every block read (for tests and benchmarks).",
        shouldDisplay: false)

    @Argument(help: "Pool name.")
    var name: String

    @Option(name: .long, help: "Seed of this worker's own blocks and of its choice of documents.")
    var seed: UInt64 = 1

    @Option(name: .long, help: "Requests to run (with --seconds: at most this many).")
    var requests: Int = 100

    @Option(name: .long, help: "Run requests until this many seconds have passed.")
    var seconds: Double?

    @Option(name: .long, help: "Shared documents the requests start with.")
    var documents: Int = 4

    @Option(name: .long, help: "Blocks per shared document.")
    var documentBlocks: Int = 8

    @Option(name: .long, help: "Blocks of its own each request adds after the document.")
    var ownBlocks: Int = 2

    @Flag(name: .long, help: "Also read one cached block per request in place (a view), checking it.")
    var views = false

    @Option(name: .long, help: "Stop this process (SIGSTOP) the first time it reaches this point: lock, writing, before-view, view.")
    var stopAt: String?

    @Flag(name: .long, help: "Run until standard input reaches its end (then report), within --requests and --seconds.")
    var untilStdinCloses = false

    @Option(name: .long, help: "requests (default), lookups (look documents up until --seconds pass: bench pool), or trace (replay part of --trace).")
    var mode: String = "requests"

    @Option(name: .long, help: "Mooncake trace whose requests number part, part + parts, … this worker replays (trace mode).")
    var trace: String?

    @Option(name: .long, help: "Which share of the trace's requests to replay (0-based).")
    var part: Int = 0

    @Option(name: .long, help: "Shares the trace is split into.")
    var parts: Int = 1

    @Option(name: .long, help: "Start the measured loop at this CLOCK_MONOTONIC time (ns), so workers start together.")
    var startAt: UInt64?

    @Option(name: .long, help: "Microseconds to wait between requests (a worker that also computes; leaves CPU to others).")
    var pauseUs: Int = 0

    func validate() throws {
        try OptionCheck.inRange("--requests", requests, 1 ... 100_000_000)
        try OptionCheck.inRange("--documents", documents, 1 ... 1 << 20)
        try OptionCheck.inRange("--document-blocks", documentBlocks, 1 ... 4096)
        try OptionCheck.inRange("--own-blocks", ownBlocks, 0 ... 4096)
        if let seconds { try OptionCheck.finite("--seconds", seconds, above: 0, atMost: 3600, unit: "seconds") }
        guard ["requests", "lookups", "trace"].contains(mode) else {
            throw ValidationError("invalid --mode '\(mode)': expected requests, lookups or trace")
        }
        if mode == "trace" && trace == nil { throw ValidationError("--mode trace needs --trace FILE") }
        try OptionCheck.inRange("--parts", parts, 1 ... 1024)
        try OptionCheck.inRange("--pause-us", pauseUs, 0 ... 1_000_000)
        try OptionCheck.inRange("--part", part, 0 ... parts - 1)
        if let stopAt, KVPoolTestPoint(rawValue: stopAt) == nil {
            throw ValidationError("invalid --stop-at '\(stopAt)': expected one of \(KVPoolTestPoint.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let point = stopAt.flatMap(KVPoolTestPoint.init(rawValue:))
        let pool = try KVPool.attach(name: name, pause: point.map { p in { @Sendable at in if at == p { raise(SIGSTOP) } } })
        defer { pool.close() }
        print("attached \(getpid())")
        _ = memwall_flush_standard_output()
        var workload = try PoolWorkload(pool: pool, seed: seed, documents: documents, documentBlocks: documentBlocks,
                                    ownBlocks: ownBlocks, views: views)
        let requestList = try trace.map { path throws(MemWallError) in
            let all = try MooncakeTrace.load(path: path).requests
            return stride(from: part, to: all.count, by: parts).map { all[$0].blockIDs }
        }
        if let startAt { while MonotonicClock.nanoseconds() < startAt { usleep(200) } }
        let deadline = seconds.map { MonotonicClock.nanoseconds() &+ UInt64($0 * 1e9) }
        if mode == "lookups" {
            try Output.printJSON(try workload.lookups(until: deadline ?? MonotonicClock.nanoseconds() &+ 1_000_000_000))
            return
        }
        var report = PoolWorkload.Report()
        if let requestList {
            for keys in requestList.prefix(requests) {
                if let deadline, MonotonicClock.nanoseconds() >= deadline { break }
                try workload.request(keys: keys, into: &report)
            }
            try Output.printJSON(report)
            return
        }
        for r in 0..<requests {
            if let deadline, MonotonicClock.nanoseconds() >= deadline { break }
            if untilStdinCloses && PoolWorkerCommand.standardInputEnded() { break }
            try workload.request(r, into: &report)
            if pauseUs > 0 { usleep(UInt32(pauseUs)) }
        }
        try Output.printJSON(report)
    }

    /// Whether standard input is at its end (a poll that does not wait).
    static func standardInputEnded() -> Bool {
        var p = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 0) > 0 else { return false }
        var byte: UInt8 = 0
        return read(0, &byte, 1) <= 0
    }
}
