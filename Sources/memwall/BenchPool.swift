import ArgumentParser
import CMemWallShim
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import KVPlacement
import KVPool
import MemWallCore
import Transport

/// `memwall bench pool`: the host-wide KV pool side by side with its references, in one run.
struct BenchPoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Measure the KV pool: lookups per second with several processes attached, copy-loads against memcpy, in-place reads against memory bandwidth, and a trace shared by processes against private caches.",
        discussion: """
            Every figure is measured next to its reference in the same run: lookups by N worker processes \
            at once (each its own process attached to one pool) and by one alone; load() of blocks against a \
            one-thread memcpy of the same source bytes into the same buffers; reading blocks in place through \
            views against the same read kernel over private memory of the same size; and, with --trace, the \
            trace split across N processes sharing one pool against N private pools of the same total size.
            """)

    @Option(name: .long, help: "Processes attached at once.")
    var processes: Int = 4

    @Option(name: .long, help: "Seconds per measurement.")
    var seconds: Double = 2

    @Option(name: .long, help: "Block size of the copy and in-place read measurements.")
    var blockBytes: String = "256k"

    @Option(name: .long, help: "Bytes of blocks the copy and read measurements go over (well above the last-level cache).")
    var span: String = "256M"

    @Option(name: .long, help: "NUMA node to bind the pools to (default: not bound).")
    var node: Int?

    @Option(name: .long, help: "Mooncake trace to split across the processes (shared pool against private pools).")
    var trace: String?

    @Option(name: .long, help: "Blocks of the shared pool, and in all of the private ones, in the trace measurement.")
    var traceCapacity: Int = 10_000

    @Option(name: .long, help: "Block size of the trace measurement.")
    var traceBlockBytes: String = "4k"

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try OptionCheck.inRange("--processes", processes, 1 ... 64)
        try OptionCheck.finite("--seconds", seconds, above: 0, atMost: 600, unit: "seconds")
        _ = try OptionCheck.size("--block-bytes", blockBytes, 4096 ... (64 << 20))
        _ = try OptionCheck.size("--span", span, (1 << 20) ... (64 << 30))
        try OptionCheck.inRange("--trace-capacity", traceCapacity, processes ... 1 << 24)
        _ = try OptionCheck.size("--trace-block-bytes", traceBlockBytes, 4096 ... (16 << 20))
    }

    func run() throws {
        var progress = ProgressReporter("bench pool", total: trace == nil ? 3 : 4, enabled: !output.quiet)
        let lookups = try measureLookups()
        progress.update(1, "lookups: \(BenchOutput.fixed(lookups.perProcess.map(\.lookupsPerSecond).reduce(0, +) / Double(processes) / 1e6)) M/s per process")
        let bytes = try ByteCount.parse(blockBytes).rawValue
        let blocks = max(1, try ByteCount.parse(span).rawValue / bytes)
        let (copy, read, pages) = try measureCopyAndRead(blockBytes: bytes, blocks: blocks)
        progress.update(3, "copy-load \(BenchOutput.fixed(copy.ratio))x memcpy, in-place read \(BenchOutput.fixed(read.ratio))x memory")
        var traceReport: PoolTraceReport?
        if let trace {
            traceReport = try measureTrace(trace)
            progress.update(4, "trace done")
        }
        let report = PoolBenchReport(processes: processes, seconds: seconds, node: node, lookups: lookups, copyLoad: copy,
                                     inPlaceRead: read, poolPages: pages, trace: traceReport)
        if output.json { try Output.printJSON(report) } else { printText(report) }
    }

    // MARK: Lookups

    private func measureLookups() throws -> PoolLookupReport {
        let documents = 1024, documentBlocks = 16
        let name = "bench-lookups-\(getpid())"
        let pool = try KVPool.create(name: name, bytes: 64 << 20, blockBytes: 4096, node: node, processes: max(processes + 2, 8))
        defer { pool.close(); try? KVPool.destroy(name: name, force: true) }
        var fill = try PoolWorkload(pool: pool, seed: 1, documents: documents, documentBlocks: documentBlocks, ownBlocks: 0, views: false)
        var r = PoolWorkload.Report()
        for chain in PoolWorkload.documentKeys(documents: documents, documentBlocks: documentBlocks) { try fill.request(keys: chain, into: &r) }
        let common = ["pool", "worker", name, "--mode", "lookups", "--documents", "\(documents)", "--document-blocks", "\(documentBlocks)",
                      "--seconds", "\(seconds)"]
        func run(_ n: Int) throws -> [PoolWorkload.LookupReport] {
            let start = MonotonicClock.nanoseconds() &+ 300_000_000
            let children = try (0..<n).map { i in try worker(common + ["--seed", "\(i + 1)", "--start-at", "\(start)"]) }
            return try children.map { c in try JSONDecoder().decode(PoolWorkload.LookupReport.self, from: Data(try report(of: c).utf8)) }
        }
        let alone = try run(1)[0]
        let together = try run(processes)
        return PoolLookupReport(blocks: documents * documentBlocks, chainLength: documentBlocks, alone: alone, perProcess: together)
    }

    // MARK: Copy-load and in-place reads

    private func measureCopyAndRead(blockBytes bytes: Int, blocks: Int) throws -> (PoolRatio, PoolRatio, PoolRatio) {
        let name = "bench-copy-\(getpid())"
        let pool = try KVPool.create(name: name, bytes: KVPool.segmentBytes(blocks: blocks, blockBytes: bytes, processes: 4), blockBytes: bytes, node: node, processes: 4)
        defer { pool.close(); try? KVPool.destroy(name: name, force: true) }
        let keys = (0..<blocks).map { BlockKey(rawValue: BlockKey.mix(0xBE4C_0000_0000 | UInt64($0))) }
        let destination = try MemoryRegion.allocate(byteCount: blocks * bytes)
        let buffers = (0..<blocks).map { KVBuffer(region: destination, offset: $0 * bytes) }
        for i in 0..<blocks { destination.withUnsafeMutableBytes(offset: i * bytes, length: bytes) { TierStore.deterministicPayload(keys[i], $0) } }
        let stored = try pool.store(keys, from: buffers)
        guard stored.succeeded else { throw MemWallError(.outOfBounds, "the benchmark pool took \(stored.bytes / bytes) of \(blocks) blocks") }
        let batch = 64

        // load() against memcpy of the same source bytes into the same buffers.
        let load = { () throws(MemWallError) -> Int in
            var i = 0
            while i < blocks {
                let n = min(batch, blocks - i)
                try pool.load(Array(keys[i..<(i + n)]), into: Array(buffers[i..<(i + n)])).check()
                i += n
            }
            return blocks * bytes
        }
        // The same source bytes: each block's place in the pool, held by a view while memcpy reads it.
        final class Held { let view: KVPoolView; init(_ v: consuming KVPoolView) { view = v } }
        let held = try keys.map { k throws(MemWallError) in Held(try pool.view(k)) }
        let sources = held.map { $0.view.bytes.baseAddress }
        let copy = { () throws(MemWallError) -> Int in
            for i in 0..<blocks { if let s = sources[i] { memcpy(destination.baseAddress + i * bytes, s, bytes) } }
            return blocks * bytes
        }
        let copyRates = try measure(load, against: copy)
        // Reading in place — view, one pass over the bytes, close — against the same pass over private memory.
        var sink: UInt64 = 0
        let inPlace = { () throws(MemWallError) -> Int in
            for k in keys {
                let v = try pool.view(k)
                sink ^= memwall_checksum(v.bytes.baseAddress, v.bytes.count)
                v.close()
            }
            return blocks * bytes
        }
        let privatePass = { () throws(MemWallError) -> Int in
            for i in 0..<blocks { sink ^= memwall_checksum(destination.baseAddress + i * bytes, bytes) }
            return blocks * bytes
        }
        let readRates = try measure(inPlace, against: privatePass)
        // The pool's pages read with every view already held: what is left is the memory itself.
        let heldPass = { () throws(MemWallError) -> Int in
            for s in sources { if let s { sink ^= memwall_checksum(s, bytes) } }
            return blocks * bytes
        }
        let pageRates = try measure(heldPass, against: privatePass)
        _ = held.count
        if sink == 0x5EED { print("") }   // keeps the reads from being optimised away
        return (PoolRatio(what: "load() of \(ByteCount(bytes)) blocks into private buffers (copy + checksum check)", bytes: blocks * bytes,
                          gigabytesPerSecond: copyRates.0, referenceName: "one-thread memcpy of the same bytes", referenceGigabytesPerSecond: copyRates.1),
                PoolRatio(what: "reading \(ByteCount(bytes)) blocks in place through views (checksum pass)", bytes: blocks * bytes,
                          gigabytesPerSecond: readRates.0, referenceName: "the same pass over private memory of the same size", referenceGigabytesPerSecond: readRates.1),
                PoolRatio(what: "the same pass over the pool's pages with every view held (no reference taken per block)", bytes: blocks * bytes,
                          gigabytesPerSecond: pageRates.0, referenceName: "the same pass over private memory of the same size", referenceGigabytesPerSecond: pageRates.1))
    }

    /// Median GB/s of `body` and of `reference`, run in alternating rounds (each returns the
    /// bytes it moved) for `seconds`, so both see the same machine (it is shared and noisy).
    private func measure(_ body: () throws(MemWallError) -> Int, against reference: () throws(MemWallError) -> Int) throws(MemWallError) -> (Double, Double) {
        var a: [Double] = [], b: [Double] = []
        func rate(_ f: () throws(MemWallError) -> Int) throws(MemWallError) -> Double {
            let t0 = MonotonicClock.nanoseconds()
            let n = try f()
            return Double(n) / Double(max(1, MonotonicClock.nanoseconds() - t0))
        }
        _ = try body()   // warm: page tables, caches
        _ = try reference()
        let end = MonotonicClock.nanoseconds() &+ UInt64(seconds * 1e9)
        repeat {
            a.append(try rate(body))
            b.append(try rate(reference))
        } while MonotonicClock.nanoseconds() < end || a.count < 3
        a.sort()
        b.sort()
        return (a[a.count / 2], b[b.count / 2])
    }

    // MARK: Trace: one shared pool against private pools

    private func measureTrace(_ path: String) throws -> PoolTraceReport {
        let bytes = try ByteCount.parse(traceBlockBytes).rawValue
        let requests = try MooncakeTrace.load(path: path).requests
        let distinct = Set(requests.flatMap(\.blockIDs)).count
        func poolBytes(_ blocks: Int, _ attach: Int) -> Int { KVPool.segmentBytes(blocks: blocks, blockBytes: bytes, processes: attach) }
        let shared = "bench-trace-shared-\(getpid())"
        let privateNames = (0..<processes).map { "bench-trace-private-\(getpid())-\($0)" }
        defer { for n in [shared] + privateNames { try? KVPool.destroy(name: n, force: true) } }
        var pools: [KVPool] = []
        defer { for p in pools { p.close() } }
        pools.append(try KVPool.create(name: shared, bytes: poolBytes(traceCapacity, processes + 2), blockBytes: bytes, node: node, processes: processes + 2))
        for n in privateNames {
            pools.append(try KVPool.create(name: n, bytes: poolBytes(traceCapacity / processes, 4), blockBytes: bytes, node: node, processes: 4))
        }
        func replay(_ names: [String]) throws -> PoolTraceSetup {
            let children = try (0..<processes).map { k in
                try worker(["pool", "worker", names[k], "--mode", "trace", "--trace", path, "--part", "\(k)", "--parts", "\(processes)",
                            "--requests", "100000000"])
            }
            let reports = try children.map { c in try JSONDecoder().decode(PoolWorkload.Report.self, from: Data(try report(of: c).utf8)) }
            let status = try Set(names).map { n throws(MemWallError) in try KVPool.status(name: n, pages: false) }
            return PoolTraceSetup(
                pools: status.count, capacityBlocks: status.reduce(0) { $0 + $1.slots },
                lookups: reports.reduce(0) { $0 + $1.blocks }, hits: reports.reduce(0) { $0 + $1.hits },
                verified: reports.reduce(0) { $0 + $1.verified }, corrupt: reports.reduce(0) { $0 + $1.corrupt },
                blocksWritten: reports.reduce(0) { $0 + $1.stored }, blocksHeldAtEnd: status.reduce(0) { $0 + $1.blocks },
                bytesUsedAtEnd: status.reduce(0) { $0 + $1.bytesUsed }, evictions: status.reduce(0) { $0 + ($1.counters["evictions"] ?? 0) })
        }
        let sharedResult = try replay(Array(repeating: shared, count: processes))
        let privateResult = try replay(privateNames)
        return PoolTraceReport(trace: path, requests: requests.count, distinctBlocks: distinct, blockBytes: bytes,
                               shared: sharedResult, private: privateResult)
    }

    // MARK: Worker processes

    /// `memwall ARGUMENTS` started again (`/proc/self/exe`, this process's environment).
    private func worker(_ arguments: [String]) throws -> ChildProcess.Running {
        guard let child = try ChildProcess.start("/proc/self/exe", arguments, inheritEnvironment: true) else {
            throw MemWallError(.notFound, "cannot run memwall again through /proc/self/exe (no procfs?)")
        }
        return child
    }

    /// The JSON report a worker printed, once it exited with status 0 (at most 10 minutes).
    private func report(of child: ChildProcess.Running) throws -> String {
        let outcome = try child.finish(seconds: 600)
        guard outcome.status == 0, let brace = outcome.standardOutput.firstIndex(of: "{") else {
            throw MemWallError(.systemCall, "worker memwall \(child.pid) ended with status \(outcome.status): \(outcome.standardError.prefix(400))")
        }
        return String(outcome.standardOutput[brace...])
    }

    // MARK: Text

    private func printText(_ r: PoolBenchReport) {
        print("memwall bench pool: \(r.processes) processes attached\(r.node.map { ", pools bound to node \($0)" } ?? "")")
        let l = r.lookups
        let each = l.perProcess.map { BenchOutput.fixed($0.lookupsPerSecond / 1e6) }.joined(separator: ", ")
        let perCPU = l.perProcess.map(\.lookupsPerCPUSecond).reduce(0, +) / Double(max(1, l.perProcess.count))
        print("lookups (chains of \(l.chainLength) over \(l.blocks) blocks, no lock):")
        print("  one process alone      \(BenchOutput.fixed(l.alone.lookupsPerSecond / 1e6)) M/s (\(BenchOutput.fixed(l.alone.lookupsPerCPUSecond / 1e6)) M per CPU-second)")
        print("  \(r.processes) processes at once   \(each) M/s each; \(BenchOutput.fixed(perCPU / 1e6)) M per CPU-second each")
        for x in [r.copyLoad, r.inPlaceRead, r.poolPages] {
            print("\(x.what), \(ByteCount(x.bytes)):")
            print("  \(BenchOutput.fixed(x.gigabytesPerSecond)) GB/s vs \(BenchOutput.fixed(x.referenceGigabytesPerSecond)) GB/s for \(x.referenceName): \(BenchOutput.fixed(x.ratio))x")
        }
        if let t = r.trace {
            print("trace \(t.trace): \(t.requests) requests, \(t.distinctBlocks) distinct blocks of \(ByteCount(t.blockBytes)), split across \(r.processes) processes")
            for (label, s) in [("one shared pool", t.shared), ("\(r.processes) private pools", t.private)] {
                print("  \(label.padded(to: 17)) \(s.capacityBlocks) blocks in all: hit rate \(kvPercent(s.hitRate)), \(s.blocksWritten) blocks written, \(s.blocksHeldAtEnd) held (\(ByteCount(s.bytesUsedAtEnd))), \(s.evictions) evictions, \(s.corrupt) corrupt of \(s.verified) checked")
            }
        }
    }
}

/// Lookups per second by processes attached to one pool.
struct PoolLookupReport: Codable, Sendable {
    var blocks: Int
    var chainLength: Int
    var alone: PoolWorkload.LookupReport
    var perProcess: [PoolWorkload.LookupReport]
}

/// A rate and its reference, measured side by side.
struct PoolRatio: Codable, Sendable {
    var what: String
    var bytes: Int
    var gigabytesPerSecond: Double
    var referenceName: String
    var referenceGigabytesPerSecond: Double
    /// gigabytesPerSecond / referenceGigabytesPerSecond.
    var ratio: Double

    init(what: String, bytes: Int, gigabytesPerSecond: Double, referenceName: String, referenceGigabytesPerSecond: Double) {
        self.what = what
        self.bytes = bytes
        self.gigabytesPerSecond = gigabytesPerSecond
        self.referenceName = referenceName
        self.referenceGigabytesPerSecond = referenceGigabytesPerSecond
        ratio = gigabytesPerSecond / max(referenceGigabytesPerSecond, 1e-9)
    }
}

/// One side of the trace measurement.
struct PoolTraceSetup: Codable, Sendable {
    var pools: Int
    var capacityBlocks: Int
    var lookups: Int
    var hits: Int
    var verified: Int
    var corrupt: Int
    var blocksWritten: Int
    var blocksHeldAtEnd: Int
    var bytesUsedAtEnd: Int
    var evictions: Int
    var hitRate: Double { lookups == 0 ? 0 : Double(hits) / Double(lookups) }
}

/// The trace split across processes: one shared pool against private pools of the same total size.
struct PoolTraceReport: Codable, Sendable {
    var trace: String
    var requests: Int
    var distinctBlocks: Int
    var blockBytes: Int
    var shared: PoolTraceSetup
    var `private`: PoolTraceSetup
}

/// Everything `bench pool` measured (`--json`).
struct PoolBenchReport: Codable, Sendable {
    var schema = "memwall.bench-pool/1"
    var processes: Int
    var seconds: Double
    var node: Int?
    var lookups: PoolLookupReport
    var copyLoad: PoolRatio
    var inPlaceRead: PoolRatio
    var poolPages: PoolRatio
    var trace: PoolTraceReport?
}
