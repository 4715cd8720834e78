import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import MemWallCore
import Transport
import URingTransport

/// `memwall bench storage`: O_DIRECT sequential and random reads/writes over a
/// queue-depth sweep through the io_uring transport (or its pread fallback),
/// reporting what fio reports: IOPS, GB/s, latency percentiles.
struct BenchStorageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "io_uring O_DIRECT sequential (1 MiB) and random (4 KiB) I/O over a queue-depth sweep: IOPS, GB/s, latency percentiles.",
        discussion: """
        Reads need data: a file this command creates is first written end to end (as fio lays
        out its files). Writing to an existing file or a block device destroys its contents and
        needs --allow-write. Under a filesystem that refuses O_DIRECT the page cache is used and
        every line says "buffered".
        """
    )

    @OptionGroup var files: StorageFileOptions

    @Option(help: "File or block device to test (default: a private scratch file in --dir). A file this run creates is removed at the end, also on failure and on SIGINT/SIGTERM/SIGHUP.")
    var file: String?

    @Option(help: "Bytes of the file to use (e.g. 512M, 1G); a new file is created this large.")
    var size: String = "1G"

    @Option(name: .customLong("qd"), help: "Queue depths to sweep, comma-separated.")
    var queueDepths: String = "1,4,16,32"

    @Option(help: "Workloads: randread, randwrite, seqread, seqwrite (comma-separated).")
    var patterns: String = "randread,seqread"

    @Option(name: .customLong("random-bs"), help: "Block size of random I/O.")
    var randomBlockSize: String = "4k"

    @Option(name: .customLong("seq-bs"), help: "Block size of sequential I/O.")
    var sequentialBlockSize: String = "1M"

    @Option(help: "Seconds per point.")
    var seconds: Double = 3

    @Option(help: "io_uring, pread-pool, or auto (io_uring, falling back to pread-pool when refused).")
    var transport: String = "io_uring"

    @Option(help: "SQEs per io_uring_enter.")
    var batch: Int = 8

    @Option(help: "io_uring path: 'direct' (URingDirectQueue: one thread posts into slots and reaps, no per-I/O objects, as fio does), 'poll' (TransferRequest per I/O, this thread reaps) or 'thread' (TransferRequest per I/O, the transport's completion thread).")
    var completions: String = "direct"

    @Option(name: .customLong("spin-us"), help: "Direct queue: microseconds to poll for a completion before sleeping for it (0: sleep at once).")
    var spinMicroseconds: Int = 0

    @Flag(name: .customLong("no-fixed"), help: "Plain reads/writes on plain file descriptors: no fixed buffers or files (what fio does without --fixedbufs --registerfiles).")
    var noFixed = false

    @OptionGroup var output: OutputOptions

    /// Largest file span and block size the benchmark accepts.
    static let sizeRange = 4096 ... (1 << 46)
    static let blockSizeRange = 512 ... (64 << 20)

    func validate() throws {
        guard ["io_uring", "pread-pool", "auto"].contains(transport) else {
            throw ValidationError("invalid --transport '\(transport)': expected io_uring, pread-pool or auto")
        }
        try OptionCheck.finite("--seconds", seconds, above: 0, atMost: 3600, unit: "seconds")
        guard ["direct", "poll", "thread"].contains(completions) else {
            throw ValidationError("invalid --completions '\(completions)': expected direct, poll or thread")
        }
        try OptionCheck.inRange("--spin-us", spinMicroseconds, 0 ... 1_000_000, unit: "microseconds")
        try OptionCheck.inRange("--batch", batch, 1 ... 4096, unit: "SQEs")
        for p in patterns.split(separator: ",") where StoragePattern(rawValue: String(p)) == nil {
            throw ValidationError("invalid pattern '\(p)': expected randread, randwrite, seqread or seqwrite")
        }
        for qd in try BenchOutput.integerList(queueDepths, what: "--qd") {
            try OptionCheck.inRange("--qd", qd, 1 ... 4096)
        }
        let span = try OptionCheck.size("--size", size, Self.sizeRange)
        for (option, text) in [("--random-bs", randomBlockSize), ("--seq-bs", sequentialBlockSize)] {
            let bs = try OptionCheck.size(option, text, Self.blockSizeRange)
            guard bs % 512 == 0 else {
                throw ValidationError("invalid \(option) '\(text)': expected a multiple of 512 bytes (O_DIRECT moves whole sectors)")
            }
            guard bs <= span else {
                throw ValidationError("invalid \(option) '\(text)': expected at most --size (\(ByteCount(span)))")
            }
        }
    }

    func run() async throws {
        let depths = try BenchOutput.integerList(queueDepths, what: "--qd")
        let workloads = patterns.split(separator: ",").compactMap { StoragePattern(rawValue: String($0)) }
        let span = try ByteCount.parse(size).rawValue
        let randomBS = try ByteCount.parse(randomBlockSize).rawValue
        let seqBS = try ByteCount.parse(sequentialBlockSize).rawValue
        let writes = workloads.contains(where: \.isWrite)
        let target = try files.open(file, option: "--file", scratchPrefix: "memwall-bench-storage", byteCount: Int64(span),
                                    readOnly: !writes)
        let path = target.path
        for (option, bs) in [("--random-bs", randomBS), ("--seq-bs", seqBS)] where bs % target.alignment != 0 {
            throw ValidationError("invalid \(option) '\(ByteCount(bs))': '\(path)' needs multiples of \(target.alignment) bytes under O_DIRECT")
        }
        let usable = Int(min(Int64(span), target.byteCount))
        guard usable >= max(randomBS, seqBS) else {
            throw MemWallError(.outOfBounds, "'\(path)' has \(ByteCount(Int(target.byteCount))); the benchmark needs at least \(ByteCount(max(randomBS, seqBS))) (the larger of --random-bs and --seq-bs)")
        }
        if target.createdFile {
            if !output.quiet { StandardError.write("[bench storage] writing \(ByteCount(usable)) to \(path) so reads hit real blocks\n") }
            try await layOut(target, bytes: usable)
        }
        var progress = ProgressReporter("bench storage", total: depths.count * workloads.count, enabled: !output.quiet)
        var points: [StorageBenchPoint] = []
        var transportLabel = ""
        for w in workloads {
            for qd in depths {
                let t = try makeTransport(queueDepth: qd)
                let bs = w.isRandom ? randomBS : seqBS
                let point = try StorageBench.run(transport: t, target: target, pattern: w, blockSize: bs,
                                                 queueDepth: qd, seconds: seconds, span: usable,
                                                 direct: completions == "direct", fixed: !noFixed,
                                                 spinMicroseconds: spinMicroseconds)
                transportLabel = describe(t, point: point)
                points.append(point)
                progress.update(points.count, "\(w.rawValue) QD\(qd): \(BenchOutput.fixed(point.iops, 0)) IOPS")
            }
        }
        let report = StorageBenchReport(path: path, bytesUsed: usable, accessMode: target.accessMode.rawValue,
                                        transport: transportLabel, points: points)
        if output.json { try Output.printJSON(report) } else { printTable(report) }
    }

    private func makeTransport(queueDepth: Int) throws -> any Transport {
        let config = URingConfiguration(queueDepth: queueDepth, batchSize: min(batch, queueDepth),
                                        fixedBuffers: !noFixed, fixedFiles: !noFixed,
                                        completionThread: completions == "thread")
        switch transport {
        case "pread-pool": return try ThreadPoolStorageTransport(queueDepth: queueDepth, reason: "pread/pwrite thread pool chosen with --transport pread-pool")
        case "auto": return try URingTransport.makeWithFallback(configuration: config)
        default: return try URingTransport(configuration: config)
        }
    }

    /// What the run used, as it really was: a fixed-buffer or fixed-file
    /// registration the kernel refused (memlock limit) is said to be refused.
    private func describe(_ t: any Transport, point p: StorageBenchPoint) -> String {
        if let u = t as? URingTransport {
            let buffers = p.fixedBuffers ? "on" : noFixed ? "off" : "refused by the kernel (plain reads/writes)"
            let files = p.fixedFiles ? "on" : noFixed ? "off" : "refused by the kernel (plain fds)"
            let path = completions == "direct"
                ? "direct queue (slots, no per-I/O objects)"
                : "TransferRequest per I/O, completions by \(u.configuration.completionThread ? "completion thread" : "polling caller")"
            return "io_uring (hardware; setup flags \(u.setupFlags); fixed buffers \(buffers), fixed files \(files); \(path))"
        }
        return "\(t.name) (\(t.capabilities.implementation))"
    }

    /// Writes the whole span once, 1 MiB at a time, QD 8.
    private func layOut(_ target: StorageTarget, bytes: Int) async throws {
        let t = try URingTransport.makeWithFallback(configuration: URingConfiguration(queueDepth: 8, batchSize: 8))
        let chunk = min(1 << 20, bytes / target.alignment * target.alignment)
        let region = try MemoryRegion.allocate(byteCount: chunk)
        region.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: i &* 131 &+ 17) } }
        try t.register(region)
        defer { try? t.deregister(region) }
        var offset = 0
        while offset + chunk <= bytes {
            let n = min(64, (bytes - offset) / chunk)
            let list = (0..<n).map { k in TransferDescriptor(local: region, target: .storage(target), targetOffset: Int64(offset + k * chunk), length: chunk) }
            try await t.transfer(.write, list)
            offset += n * chunk
        }
    }

    private func printTable(_ r: StorageBenchReport) {
        print("memwall bench storage: \(r.path) (\(ByteCount(r.bytesUsed)) used, \(r.accessMode)) via \(r.transport)")
        print("pattern     bs        QD        IOPS      GB/s    p50 us    p99 us  p99.9 us    max us")
        for p in r.points {
            print(p.pattern.padded(to: 10)
                  + BenchOutput.pad(ByteCount(p.blockSize).description, 8)
                  + BenchOutput.pad("\(p.queueDepth)", 6)
                  + BenchOutput.pad(BenchOutput.fixed(p.iops, 0), 12)
                  + BenchOutput.pad(BenchOutput.fixed(p.gigabytesPerSecond, 3), 10)
                  + BenchOutput.pad(BenchOutput.fixed(Double(p.latency.p50) / 1000, 1), 10)
                  + BenchOutput.pad(BenchOutput.fixed(Double(p.latency.p99) / 1000, 1), 10)
                  + BenchOutput.pad(BenchOutput.fixed(Double(p.latency.p999) / 1000, 1), 10)
                  + BenchOutput.pad(BenchOutput.fixed(Double(p.latency.max) / 1000, 1), 10))
        }
        if r.transport.contains("emulation") || r.accessMode != StorageAccessMode.direct.rawValue {
            print("note: this run used emulation or the page cache (see above); it does not measure the O_DIRECT io_uring path")
        }
        var seen = Set<String>()
        for note in r.points.flatMap(\.registrationNotes) where seen.insert(note).inserted {
            print("note: \(note)")
        }
    }
}

/// The four fio-style workloads.
enum StoragePattern: String, Codable, CaseIterable {
    case randread, randwrite, seqread, seqwrite
    var isRandom: Bool { self == .randread || self == .randwrite }
    var isWrite: Bool { self == .randwrite || self == .seqwrite }
    var operation: TransferOperation { isWrite ? .write : .read }
}

/// Latency percentiles in nanoseconds.
struct LatencySummary: Codable {
    var p50, p99, p999, max: UInt64, mean: Double

    init(_ h: LatencyHistogram) {
        p50 = h.percentile(50); p99 = h.percentile(99); p999 = h.percentile(99.9); max = h.max; mean = h.mean
    }
}

/// One point of the sweep.
struct StorageBenchPoint: Codable {
    var pattern: String, blockSize, queueDepth: Int, transport, implementation: String
    var seconds: Double, ios: Int, iops: Double
    /// Decimal GB/s (10^9 bytes), as fio prints "GB/s".
    var gigabytesPerSecond: Double
    var latency: LatencySummary
    /// Whether the I/O buffers really were fixed buffers of the ring (false when
    /// the kernel refused to pin them, e.g. under a memlock limit, or with --no-fixed).
    var fixedBuffers: Bool
    /// Whether the file really was a registered (fixed) file of the ring.
    var fixedFiles: Bool
    /// Why a registration was refused, as the transport reported it.
    var registrationNotes: [String]

    /// A point measured on `transport`: `ios` I/Os of `blockSize` since `start` (monotonic ns) until now.
    init(_ transport: any Transport, pattern: StoragePattern, blockSize: Int, queueDepth: Int, ios: Int, since start: UInt64,
         until end: UInt64 = MonotonicClock.nanoseconds(), _ histogram: LatencyHistogram,
         fixedBuffers: Bool, fixedFiles: Bool, notes: [String]) {
        let elapsed = Double(end - start) / 1e9
        self.pattern = pattern.rawValue
        self.blockSize = blockSize
        self.queueDepth = queueDepth
        self.transport = transport.name
        self.implementation = transport.capabilities.implementation.description
        self.seconds = elapsed
        self.ios = ios
        self.iops = Double(ios) / elapsed
        self.gigabytesPerSecond = Double(ios * blockSize) / elapsed / 1e9
        self.latency = LatencySummary(histogram)
        self.fixedBuffers = fixedBuffers
        self.fixedFiles = fixedFiles
        self.registrationNotes = notes
    }
}

/// The whole run.
struct StorageBenchReport: Codable {
    var path: String, bytesUsed: Int, accessMode, transport: String, points: [StorageBenchPoint]
}

/// The measuring loop: `queueDepth` lanes, each with its own buffer and its
/// own prepared transfers (prepared once, posted many times); whenever lanes
/// finish they are reposted together, so the device sees a steady depth.
enum StorageBench {
    static func run(transport: any Transport, target: StorageTarget, pattern: StoragePattern, blockSize bs: Int,
                    queueDepth qd: Int, seconds: Double, span: Int, direct: Bool = false,
                    fixed: Bool = true, spinMicroseconds: Int = 0) throws -> StorageBenchPoint {
        let region = try MemoryRegion.allocate(byteCount: bs * qd)
        try transport.register(region)
        defer { try? transport.deregister(region) }
        let blocks = span / bs
        guard blocks >= qd else {
            throw MemWallError(.outOfBounds,
                "\(ByteCount(span)) holds \(blocks) blocks of \(ByteCount(bs)), fewer than queue depth \(qd); use a larger --size or a smaller --qd")
        }
        var lanes: [[PreparedTransfer]] = Array(repeating: [], count: qd)
        if pattern.isRandom {
            // Distinct random blocks, up to 64 Ki of them, spread over the whole span.
            var rng = SystemRandomNumberGenerator()
            let count = min(blocks, 65_536)
            for k in 0..<count {
                let block = count == blocks ? k : Int.random(in: 0..<blocks, using: &rng)
                lanes[k % qd].append(try transport.prepare(pattern.operation, [
                    TransferDescriptor(local: region, localOffset: (k % qd) * bs, target: .storage(target),
                                       targetOffset: Int64(block) * Int64(bs), length: bs)]))
            }
            if count == blocks { for j in lanes.indices { lanes[j].shuffle(using: &rng) } }
        } else {
            // Lane j takes blocks j, j+qd, …: reposting lanes in order walks the file in order.
            let count = max(blocks / qd * qd, qd)
            for k in 0..<count {
                lanes[k % qd].append(try transport.prepare(pattern.operation, [
                    TransferDescriptor(local: region, localOffset: (k % qd) * bs, target: .storage(target),
                                       targetOffset: Int64(k % blocks) * Int64(bs), length: bs)]))
            }
        }
        if direct, let ring = transport as? URingTransport {
            return try runDirect(ring, region: region, lanes: lanes, pattern: pattern, blockSize: bs, seconds: seconds, fixed: fixed, spin: spinMicroseconds)
        }
        var cursor = Array(repeating: 1, count: qd)
        var inFlight = try transport.post(batch: lanes.map { $0[0] })
        var histogram = LatencyHistogram()
        var ios = 0
        let start = MonotonicClock.nanoseconds()
        let end = start + UInt64(seconds * 1e9)
        var finishedLanes: [Int] = []
        finishedLanes.reserveCapacity(qd)
        var idleScans = 0
        let ring = transport as? URingTransport
        while true {
            // Any lane that finished is reposted at once, as fio does: waiting for
            // the oldest would let the queue drain behind one slow I/O.
            finishedLanes.removeAll(keepingCapacity: true)
            for k in 0..<qd where inFlight[k].poll() != .pending {
                histogram.record(try inFlight[k].waitBlocking().nanoseconds)
                finishedLanes.append(k)
            }
            if finishedLanes.isEmpty {
                // Poll the ring on this thread, as fio does, rather than wait for the completion thread.
                if let ring {
                    ring.reapCompletions(waitMicroseconds: 1000)
                    continue
                }
                idleScans += 1
                // Yield the core to the completion thread; sleep only when I/O is slow.
                if idleScans > 2_000 { usleep(10) } else { sched_yield() }
                continue
            }
            idleScans = 0
            ios += finishedLanes.count
            if MonotonicClock.nanoseconds() >= end { break }
            let next = finishedLanes.map { lane -> PreparedTransfer in
                let p = lanes[lane][cursor[lane]]
                cursor[lane] = (cursor[lane] + 1) % lanes[lane].count
                return p
            }
            let posted = try transport.post(batch: next)
            for (lane, r) in zip(finishedLanes, posted) { inFlight[lane] = r }
        }
        let elapsedEnd = MonotonicClock.nanoseconds()
        // Drain without counting: what was still in flight when time ran out.
        for r in inFlight {
            // In polling mode nothing completes unless this thread reaps.
            while r.poll() == .pending { ring?.reapCompletions(waitMicroseconds: 1000) }
            _ = try? r.waitBlocking()
        }
        // The request path's registrations: fixed only when the table exists and no note says one was refused.
        let notes = ring?.registrationNotes ?? []
        return StorageBenchPoint(transport, pattern: pattern, blockSize: bs, queueDepth: qd, ios: ios, since: start, until: elapsedEnd, histogram,
                                 fixedBuffers: ring?.fixedBufferTable == true && !notes.contains { $0.contains("fixed buffer") },
                                 fixedFiles: ring?.fixedFileTable == true && !notes.contains { $0.contains("fixed file") },
                                 notes: notes)
    }

    /// The loop on ``URingDirectQueue``: slot k is lane k; whichever slots
    /// finish are reposted in the same pass, and their SQEs go to the kernel
    /// with the next wait (one `io_uring_enter` per batch, as fio does).
    private static func runDirect(_ ring: URingTransport, region: MemoryRegion, lanes: [[PreparedTransfer]],
                                  pattern: StoragePattern, blockSize bs: Int, seconds: Double, fixed: Bool, spin: Int) throws -> StorageBenchPoint {
        let qd = lanes.count
        let queue = try URingDirectQueue(transport: ring, regions: [region], depth: qd, fixedBuffers: fixed, fixedFiles: fixed,
                                         singleIssuer: true)
        var cursor = Array(repeating: 1, count: qd)
        var histogram = LatencyHistogram()
        var ios = 0
        let start = MonotonicClock.nanoseconds()
        let end = start + UInt64(seconds * 1e9)
        for k in 0..<qd { try queue.post(lanes[k][0], slot: k) }
        while true {
            try queue.reap(waitingFor: 1, spinMicroseconds: spin) { (c: URingDirectQueue.Completion) throws(MemWallError) in
                _ = try c.result.get()
                histogram.record(c.nanoseconds)
                ios += 1
                let lane = c.slot
                try queue.post(lanes[lane][cursor[lane]], slot: lane)
                cursor[lane] = cursor[lane] + 1 == lanes[lane].count ? 0 : cursor[lane] + 1
            }
            if MonotonicClock.nanoseconds() >= end { break }
        }
        let point = StorageBenchPoint(ring, pattern: pattern, blockSize: bs, queueDepth: qd, ios: ios, since: start, histogram,
                                      fixedBuffers: queue.fixedBuffers, fixedFiles: queue.fixedFiles,
                                      notes: fixed && !queue.fixedBuffers ? ["the kernel refused to pin the I/O buffers as fixed buffers (io_uring_register_buffers; raise the memlock limit, ulimit -l)"] : [])
        // Drain without counting: what was still in flight when time ran out.
        while queue.inFlight > 0 { try queue.reap(waitingFor: queue.inFlight) { (c: URingDirectQueue.Completion) throws(MemWallError) in _ = try c.result.get() } }
        return point
    }
}
