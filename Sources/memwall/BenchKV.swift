import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import KVPlacement
import MemWallCore
import Topology
import Transport

/// `memwall bench kv`: KV blocks moved through the ``KVCache`` runtime API —
/// offload (caller buffers → far memory, caller buffers → NVMe) and onload
/// (NVMe → caller buffers, far memory → caller buffers) — side by side in the
/// same run with fio on the same file and a one-thread memcpy of the same
/// bytes, and the latency of `lookup` while a whole phase is being onloaded.
struct BenchKVCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv",
        abstract: "KV blocks offloaded to and onloaded from far memory and NVMe through the KVCache API, beside fio and memcpy.",
        discussion: """
        Each phase moves --bytes in batches of --batch blocks, one store or load call per batch,
        waited for; it reports GB/s over the phase and the latency of one batch (p50, p99). In the
        same run fio moves the same bytes of the same file (same block size, queue depth and
        direction, O_DIRECT, io_uring engine) and one thread memcpys the same bytes between the
        caller's buffers and a region of the far node. Each phase's blocks are checked to sit in
        the tier measured (lookup's tiers) before they are onloaded.

        fio also reads --batch adjacent blocks at --qd, many times over: its time for one batch is
        its run time divided by the number of batches (fio reports whole milliseconds, and
        drains its queue at the end of each batch). Without fio the reference is skipped and
        said so; JSON then holds null. The NVMe file is written: an existing --file (or device)
        needs --allow-write; a scratch file (default, in --dir) is private, locked and removed
        at the end, also on failure and on SIGINT/SIGTERM/SIGHUP.
        """
    )

    @Option(name: .customLong("block-bytes"), help: "Bytes per KV block, 4k to 4M, a multiple of 4096.")
    var blockBytes: String = "256k"

    @Option(help: "Blocks per store or load call (a request's prefix).")
    var batch: Int = 32

    @Option(name: .customLong("qd"), help: "Queue depth of the NVMe tier's io_uring transport (its ring entries), and fio's --iodepth.")
    var queueDepth: Int = 32

    @Option(help: "Bytes moved per phase (rounded down to whole batches).")
    var bytes: String = "1G"

    @Option(help: "File or block device backing the NVMe tier (default: a private scratch file in --dir). fio runs on the same file.")
    var file: String?

    @Option(name: .customLong("far-node"), help: "NUMA node of the far-memory tier (default: the first CPU-less node; without one, local DRAM labelled as emulated far memory).")
    var farNode: Int?

    @Option(help: "The fio executable run as the NVMe reference.")
    var fio: String = "fio"

    @OptionGroup var files: StorageFileOptions

    @OptionGroup var output: OutputOptions

    static let blockBytesRange = 4096 ... (4 << 20)
    static let bytesRange = 4096 ... (16 << 30)
    /// Keys in the prefix `lookup` is timed on (the 32-block prefix).
    static let lookupKeys = 32

    func validate() throws {
        let bb = try OptionCheck.size("--block-bytes", blockBytes, Self.blockBytesRange)
        guard bb % 4096 == 0 else {
            throw ValidationError("invalid --block-bytes '\(blockBytes)': expected a multiple of 4096 bytes (O_DIRECT moves whole pages)")
        }
        try OptionCheck.inRange("--batch", batch, 1 ... 1024, unit: "blocks")
        try OptionCheck.inRange("--qd", queueDepth, 1 ... 4096, unit: "I/Os in flight")
        let total = try OptionCheck.size("--bytes", bytes, Self.bytesRange)
        guard total >= bb * batch else {
            throw ValidationError("invalid --bytes '\(bytes)': expected at least one batch (--batch \(batch) × --block-bytes \(ByteCount(bb)) = \(ByteCount(bb * batch)))")
        }
        if let farNode { try OptionCheck.inRange("--far-node", farNode, 0 ... 4095, unit: "(a NUMA node number)") }
        guard !fio.isEmpty else { throw ValidationError("invalid --fio '': expected an executable name or path") }
    }

    func run() async throws {
        let bb = try ByteCount.parse(blockBytes).rawValue
        let batches = try ByteCount.parse(bytes).rawValue / (bb * batch)
        let blocks = batches * batch
        let phaseBytes = blocks * bb
        // The caller's buffers, the far tier and the memcpy reference's far region each hold a phase.
        let physical = Int(sysconf(Int32(_SC_PHYS_PAGES))) * PageSize.bytes
        guard physical <= 0 || 3 * phaseBytes <= physical else {
            throw ValidationError("invalid --bytes '\(bytes)': a phase needs 3 × \(ByteCount(phaseBytes)) of memory (caller buffers, far tier, memcpy reference); this host has \(ByteCount(physical))")
        }
        let topology = try Topology.load(.live)
        let node = try TierPlacement.farMemoryNode(for: [TierSpec(name: "far", kind: .farMemory, capacityBlocks: 1)],
                                                   in: topology, requested: farNode)
        let far = FarMemory(node: node)
        let shape = KVBenchShape(blockBytes: bb, batch: batch, batches: batches, queueDepth: queueDepth)
        var progress = ProgressReporter("bench kv", total: 9, enabled: !output.quiet)
        var step = 0
        func advance(_ note: String) { step += 1; progress.update(step, note) }

        // The NVMe cache first: it opens (or creates) its file, so a --file that may not be
        // written is refused before anything is measured.
        let files = self.files, file = self.file
        let nvmeCache = try KVBenchCache(measuring: .nvme, shape: shape, far: far) { bytes throws(MemWallError) in
            try files.open(file, option: "--file", scratchPrefix: "memwall-bench-kv", byteCount: bytes)
        }
        defer { nvmeCache.close() }
        guard let target = nvmeCache.storage else {
            throw MemWallError(.misuse, "the NVMe cache was built without opening its file")
        }
        guard bb % target.alignment == 0 else {
            throw ValidationError("invalid --block-bytes '\(blockBytes)': '\(target.path)' needs multiples of \(target.alignment) bytes under O_DIRECT")
        }
        let caller = try MemoryRegion.allocate(byteCount: phaseBytes, placement: MemoryPlacement(node: nil, label: "caller buffers (DRAM)"))
        caller.withUnsafeMutableBytes { b in
            b.withMemoryRebound(to: UInt64.self) { w in for i in w.indices { w[i] = UInt64(i) &* 0x9E37_79B9_7F4A_7C15 } }
        }
        var phases: [KVBenchPhase] = []
        var notes: [String] = []
        if far.isEmulated {
            notes.append("far memory is emulated: no CPU-less NUMA node on this host, so the far tier and the memcpy reference's far region are local DRAM")
        }

        // Far memory: the cache's far tier, and a far region for the one-thread memcpy of the same bytes.
        let farCache = try KVBenchCache(measuring: .farMemory, shape: shape, far: far) { _ throws(MemWallError) in
            throw MemWallError(.misuse, "the far-memory cache has no NVMe tier")
        }
        defer { farCache.close() }
        try farCache.register(caller)
        let farRegion = try far.allocate(phaseBytes)
        let farOffload = try farCache.offload(from: caller)
        advance("offload to far memory: \(BenchOutput.fixed(farOffload.gigabytesPerSecond)) GB/s")
        let copyOut = MemcpyReference.run(from: caller, to: farRegion, shape: shape)
        advance("memcpy DRAM -> far: \(BenchOutput.fixed(copyOut.gigabytesPerSecond)) GB/s")
        let farOnload = try farCache.onload(into: caller)
        advance("onload from far memory: \(BenchOutput.fixed(farOnload.gigabytesPerSecond)) GB/s")
        let copyIn = MemcpyReference.run(from: farRegion, to: caller, shape: shape)
        advance("memcpy far -> DRAM: \(BenchOutput.fixed(copyIn.gigabytesPerSecond)) GB/s")
        let copyTool = "memcpy (1 thread, \(ByteCount(bb)) per call, \(far.label))"
        phases.append(KVBenchPhase(.offload, tier: "far", farOffload, shape: shape, reference: copyOut.reference(tool: copyTool, direction: "DRAM -> far")))
        phases.append(KVBenchPhase(.onload, tier: "far", farOnload, shape: shape, reference: copyIn.reference(tool: copyTool, direction: "far -> DRAM")))

        // NVMe: fio writes the file first (the cache's blocks are not there yet), then the cache
        // offloads and onloads, then fio reads the same bytes and times batches.
        let fio = FioReference(executable: self.fio)
        let fioVersion = fio.version()
        let fioTool = fioVersion.map { "\($0) (io_uring, O_DIRECT, QD \(queueDepth))" } ?? "fio"
        let fioWrite = Result { () throws(FioReference.Skipped) in
            try fio.sequential(path: target.path, write: true, blockBytes: bb, queueDepth: queueDepth, bytes: phaseBytes)
        }
        advance("fio write: " + Self.describe(fioWrite))
        try nvmeCache.register(caller)
        let nvmeOffload = try nvmeCache.offload(from: caller)
        advance("offload to NVMe: \(BenchOutput.fixed(nvmeOffload.gigabytesPerSecond)) GB/s")
        let nvmeOnload = try nvmeCache.onload(into: caller)
        advance("onload from NVMe: \(BenchOutput.fixed(nvmeOnload.gigabytesPerSecond)) GB/s")
        let fioRead = Result { () throws(FioReference.Skipped) in
            try fio.sequential(path: target.path, write: false, blockBytes: bb, queueDepth: queueDepth, bytes: phaseBytes)
        }
        let loops = min(max(batches, 64), 4096)
        let fioBatch = Result { () throws(FioReference.Skipped) in
            try fio.batches(path: target.path, blockBytes: bb, batch: batch, queueDepth: queueDepth, loops: loops)
        }
        advance("fio read: " + Self.describe(fioRead))
        let batchMethod = "fio reads the same \(batch) adjacent blocks --loops=\(loops) times (queue drained each loop): job run time / loops (a mean; fio's clock is whole ms)"
        phases.append(KVBenchPhase(.offload, tier: "nvme", nvmeOffload, shape: shape,
                                   reference: .fio(fioTool, fioWrite, batch: nil, loops: loops, batchMethod: nil)))
        phases.append(KVBenchPhase(.onload, tier: "nvme", nvmeOnload, shape: shape,
                                   reference: .fio(fioTool, fioRead, batch: fioBatch, loops: loops, batchMethod: batchMethod)))

        let lookups = try nvmeCache.lookupWhileOnloading(into: caller, prefix: min(Self.lookupKeys, blocks))
        advance("lookup while onloading: p99 \(lookups.latencyP99) ns")
        notes += farCache.notes + nvmeCache.notes

        let report = KVBenchReport(
            blockBytes: bb, batch: batch, queueDepth: queueDepth, bytesPerPhase: phaseBytes, blocksPerPhase: blocks,
            farMemory: far.label, file: target.path, accessMode: target.accessMode.rawValue,
            transports: farCache.transports + nvmeCache.transports, fio: fioVersion,
            phases: phases, lookupWhileOnloading: lookups, notes: notes)
        if output.json { try Output.printJSON(report) } else { print(report.text) }
    }

    private static func describe(_ r: Result<FioReference.Measurement, FioReference.Skipped>) -> String {
        switch r {
        case .success(let m): "\(BenchOutput.fixed(m.bytesPerSecond / 1e9)) GB/s"
        case .failure(let s): "skipped (\(s.reason))"
        }
    }
}

/// The sizes every phase shares.
struct KVBenchShape {
    var blockBytes: Int
    /// Blocks per store or load call.
    var batch: Int
    /// Calls per phase.
    var batches: Int
    var queueDepth: Int
    var blocks: Int { batch * batches }
    var bytes: Int { blocks * blockBytes }
}

/// Where the far tier and the memcpy reference's far region live: a NUMA node,
/// or (labelled) local DRAM standing in for one.
struct FarMemory {
    /// The node, or nil for emulation in local DRAM.
    var node: Int?
    var isEmulated: Bool { node == nil }
    var label: String { node.map { "far memory on NUMA node \($0)" } ?? "far memory emulated in local DRAM" }

    /// A region of `bytes` on the far node, its pages in place (the NUMA
    /// allocator faults them in; the emulation's are touched here): the far
    /// tier and the memcpy reference both copy into memory already in use,
    /// rather than timing the kernel (or a hypervisor) supplying fresh pages.
    func allocate(_ bytes: Int) throws(MemWallError) -> MemoryRegion {
        if let node { return try KVBenchCache.farAllocator.allocate(byteCount: bytes, on: node) }
        let region = try MemoryRegion.allocate(byteCount: bytes, placement: MemoryPlacement(node: nil, isEmulated: true, label: label))
        memset(region.baseAddress, 0x5A, region.byteCount)
        return region
    }
}

/// A phase as measured: per-call latency and the phase's rate.
struct KVBenchMeasurement {
    var histogram: LatencyHistogram
    var nanoseconds: UInt64
    var bytes: Int
    /// Tier of every block before it was onloaded (or after it was offloaded), as lookup reported.
    var tiersSeen: [String]
    var gigabytesPerSecond: Double { nanoseconds == 0 ? 0 : Double(bytes) / Double(nanoseconds) }
}

/// One thread copying the same bytes the cache moved, block by block, in the same batches.
enum MemcpyReference {
    static func run(from source: MemoryRegion, to destination: MemoryRegion, shape: KVBenchShape) -> KVBenchMeasurement {
        var histogram = LatencyHistogram()
        let s = source.baseAddress, d = destination.baseAddress
        let bb = shape.blockBytes
        let start = MonotonicClock.nanoseconds()
        for b in 0..<shape.batches {
            let t0 = MonotonicClock.nanoseconds()
            for k in 0..<shape.batch {
                let offset = (b * shape.batch + k) * bb
                memcpy(d + offset, s + offset, bb)
            }
            histogram.record(MonotonicClock.nanoseconds() - t0)
        }
        return KVBenchMeasurement(histogram: histogram, nanoseconds: MonotonicClock.nanoseconds() - start,
                                  bytes: shape.bytes, tiersSeen: [])
    }
}

extension KVBenchMeasurement {
    /// This measurement as the reference of a phase.
    func reference(tool: String, direction: String) -> KVBenchReference {
        KVBenchReference(tool: tool, command: "memcpy \(direction), \(histogram.count) batches",
                         gigabytesPerSecond: gigabytesPerSecond, batchLatency: histogram.percentile(50),
                         batchLatencyMethod: "p50 of the per-batch copy time", batchCommand: nil, skipped: nil)
    }
}

/// The reference a phase is compared with.
struct KVBenchReference: Encodable {
    /// "fio-3.33 (io_uring, O_DIRECT, QD 32)" or "memcpy (1 thread, …)".
    var tool: String
    /// What was run.
    var command: Nullable<String>
    var gigabytesPerSecond: Nullable<Double>
    /// Time of one batch of the reference, in nanoseconds.
    var batchLatency: Nullable<UInt64>
    /// How ``batchLatency`` was measured.
    var batchLatencyMethod: Nullable<String>
    /// What was run to measure ``batchLatency``, when that is a run of its own.
    var batchCommand: Nullable<String>
    /// Why there is no figure (fio missing or failed).
    var skipped: Nullable<String>

    init(tool: String, command: String?, gigabytesPerSecond: Double?, batchLatency: UInt64?,
         batchLatencyMethod: String?, batchCommand: String?, skipped: String?) {
        self.tool = tool
        self.command = Nullable(command)
        self.gigabytesPerSecond = Nullable(gigabytesPerSecond)
        self.batchLatency = Nullable(batchLatency)
        self.batchLatencyMethod = Nullable(batchLatencyMethod)
        self.batchCommand = Nullable(batchCommand)
        self.skipped = Nullable(skipped)
    }

    static func fio(_ tool: String, _ run: Result<FioReference.Measurement, FioReference.Skipped>,
                    batch: Result<FioReference.Measurement, FioReference.Skipped>?, loops: Int,
                    batchMethod: String?) -> KVBenchReference {
        switch run {
        case .failure(let s):
            return KVBenchReference(tool: tool, command: nil, gigabytesPerSecond: nil, batchLatency: nil,
                                    batchLatencyMethod: batchMethod, batchCommand: nil, skipped: s.reason)
        case .success(let m):
            var r = KVBenchReference(tool: tool, command: m.command, gigabytesPerSecond: m.bytesPerSecond / 1e9,
                                     batchLatency: nil, batchLatencyMethod: batchMethod, batchCommand: nil, skipped: nil)
            switch batch {
            case .success(let b)?:
                // fio's clock is whole milliseconds: a run that read 0 ms gives no figure.
                r.batchLatency.value = b.runtimeMilliseconds > 0 ? UInt64(b.runtimeMilliseconds) * 1_000_000 / UInt64(max(loops, 1)) : nil
                r.batchCommand.value = b.command
            case .failure(let s)?: r.skipped.value = "batch timing: " + s.reason
            case nil: break
            }
            return r
        }
    }
}

/// One phase of `bench kv --json`. Latencies are nanoseconds per batch (one store or load call).
struct KVBenchPhase: Encodable {
    enum Direction: String { case offload, onload }
    var phase: String
    var tier: String
    var blockBytes, batch, queueDepth, blocks, bytes: Int
    var seconds: Double
    var gigabytesPerSecond: Double
    var latencyP50, latencyP99, latencyMax: UInt64
    var tiersSeen: [String]
    var referenceTool: String
    var referenceGigabytesPerSecond: Nullable<Double>
    /// gigabytesPerSecond / referenceGigabytesPerSecond.
    var ratio: Nullable<Double>
    var referenceBatchLatency: Nullable<UInt64>
    /// latencyP50 / referenceBatchLatency.
    var batchLatencyRatio: Nullable<Double>
    var reference: KVBenchReference

    init(_ direction: Direction, tier: String, _ m: KVBenchMeasurement, shape: KVBenchShape, reference: KVBenchReference) {
        phase = direction.rawValue
        self.tier = tier
        blockBytes = shape.blockBytes
        batch = shape.batch
        queueDepth = shape.queueDepth
        blocks = shape.blocks
        bytes = m.bytes
        seconds = Double(m.nanoseconds) / 1e9
        gigabytesPerSecond = m.gigabytesPerSecond
        let p50 = m.histogram.percentile(50)
        latencyP50 = p50
        latencyP99 = m.histogram.percentile(99)
        latencyMax = m.histogram.max
        tiersSeen = m.tiersSeen
        referenceTool = reference.tool
        referenceGigabytesPerSecond = reference.gigabytesPerSecond
        ratio = Nullable(reference.gigabytesPerSecond.value.flatMap { $0 > 0 ? m.gigabytesPerSecond / $0 : nil })
        referenceBatchLatency = reference.batchLatency
        batchLatencyRatio = Nullable(reference.batchLatency.value.flatMap { $0 > 0 ? Double(p50) / Double($0) : nil })
        self.reference = reference
    }
}

/// `lookup` of a cached prefix, timed on another thread while one load call
/// onloads a whole phase: only lookups that began after the load was issued
/// and ended before it finished count.
struct KVLookupWhileOnloading: Encodable {
    /// Keys per lookup (the prefix length).
    var keys: Int
    /// Lookups counted (those entirely inside the onload).
    var lookups: Int
    var latencyP50, latencyP99, latencyMax: UInt64
    /// Every counted lookup found the whole prefix.
    var allHit: Bool
    var onloadTier: String
    var onloadBytes: Int
    var onloadNanoseconds: UInt64
}

/// What `bench kv --json` prints.
struct KVBenchReport: Encodable {
    var schema = "memwall.bench.kv/1"
    var blockBytes, batch, queueDepth, bytesPerPhase, blocksPerPhase: Int
    var farMemory: String
    var file: String
    var accessMode: String
    var transports: [String]
    var fio: Nullable<String>
    var phases: [KVBenchPhase]
    var lookupWhileOnloading: KVLookupWhileOnloading
    var notes: [String]

    init(blockBytes: Int, batch: Int, queueDepth: Int, bytesPerPhase: Int, blocksPerPhase: Int, farMemory: String,
         file: String, accessMode: String, transports: [String], fio: String?, phases: [KVBenchPhase],
         lookupWhileOnloading: KVLookupWhileOnloading, notes: [String]) {
        self.blockBytes = blockBytes; self.batch = batch; self.queueDepth = queueDepth
        self.bytesPerPhase = bytesPerPhase; self.blocksPerPhase = blocksPerPhase; self.farMemory = farMemory
        self.file = file; self.accessMode = accessMode; self.transports = transports; self.fio = Nullable(fio)
        self.phases = phases; self.lookupWhileOnloading = lookupWhileOnloading; self.notes = notes
    }

    /// The terminal view: one line per phase with its reference and ratios.
    var text: String {
        var out = "memwall bench kv: \(ByteCount(blockBytes)) blocks, \(batch) per call, QD \(queueDepth), \(ByteCount(bytesPerPhase)) per phase\n"
        out += "far tier: \(farMemory); NVMe tier: \(file) (\(accessMode))\n"
        for t in transports { out += "  \(t)\n" }
        out += "phase    tier    GB/s  p50 us  p99 us   ref GB/s  ratio  ref batch us  p50/ref  reference\n"
        func us(_ ns: UInt64?) -> String { ns.map { BenchOutput.fixed(Double($0) / 1000, 1) } ?? "-" }
        for p in phases {
            out += p.phase.padded(to: 9) + p.tier.padded(to: 5)
                + BenchOutput.pad(BenchOutput.fixed(p.gigabytesPerSecond, 3), 8)
                + BenchOutput.pad(us(p.latencyP50), 8) + BenchOutput.pad(us(p.latencyP99), 8)
                + BenchOutput.pad(p.referenceGigabytesPerSecond.value.map { BenchOutput.fixed($0, 3) } ?? "-", 11)
                + BenchOutput.pad(p.ratio.value.map { BenchOutput.fixed($0) + "x" } ?? "-", 7)
                + BenchOutput.pad(us(p.referenceBatchLatency.value), 14)
                + BenchOutput.pad(p.batchLatencyRatio.value.map { BenchOutput.fixed($0) + "x" } ?? "-", 9)
                + "  " + (p.reference.skipped.value.map { "\(p.referenceTool): skipped: \($0)" } ?? p.referenceTool) + "\n"
        }
        let l = lookupWhileOnloading
        out += "lookup of a cached \(l.keys)-key prefix while \(ByteCount(l.onloadBytes)) is onloaded from \(l.onloadTier) in one load call "
            + "(\(BenchOutput.fixed(Double(l.onloadNanoseconds) / 1e6, 1)) ms): \(l.lookups) lookups, p50 \(l.latencyP50) ns, p99 \(l.latencyP99) ns, max \(l.latencyMax) ns"
            + (l.allHit ? "" : " (some lookups missed part of the prefix)") + "\n"
        for p in phases where p.tier == "nvme" {
            if let method = p.reference.batchLatencyMethod.value, p.referenceBatchLatency.value != nil {
                out += "\(p.phase) \(p.tier) reference batch: \(method)\n"
            }
        }
        for n in notes { out += "note: \(n)\n" }
        return out
    }
}

/// An optional that JSON shows as `null` when absent, where a synthesized
/// `Encodable` would leave the key out: readers of `bench kv --json` find
/// every field, and a skipped reference reads as null.
struct Nullable<Wrapped: Encodable>: Encodable {
    var value: Wrapped?

    init(_ value: Wrapped?) { self.value = value }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        if let value { try c.encode(value) } else { try c.encodeNil() }
    }
}
