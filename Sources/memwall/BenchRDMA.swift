import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import MemWallCore
import RDMATransport
import Transport

/// `memwall bench rdma`: one-sided WRITE and READ bandwidth and latency over a
/// size sweep, reported the way perftest's ib_write_bw / ib_read_lat do, on
/// RDMA verbs or on the TCP emulation (labelled as such).
struct BenchRDMACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rdma",
        abstract: "Measure remote WRITE/READ bandwidth and latency (perftest-style) over RDMA or its TCP emulation.",
        discussion: """
            Without --connect a server transport in this process exports the target region on the RDMA \
            device's own address (127.0.0.1 for tcp; on RDMA the server's CPU takes no part in one-sided transfers). RDMA completions are polled \
            on the posting thread, as perftest does. Bandwidth keeps --tx-depth requests in flight; latency \
            posts one at a time.
            """)

    @OptionGroup var selection: RemoteTransportSelection

    @Option(name: .long, help: "Operations, comma-separated: write, read.")
    var ops: String = "write,read"

    @Option(name: .long, help: "What to measure, comma-separated: bw, lat.")
    var mode: String = "bw,lat"

    @Option(name: .long, help: "Message sizes, comma-separated (e.g. 2,64,4k,64k,1M).")
    var sizes: String = "2,64,4k,64k,1M"

    @Option(name: [.customShort("n"), .long], help: "Iterations per size (perftest -n).")
    var iterations: Int = 1000

    @Option(name: .long, help: "Requests kept in flight for bandwidth (perftest -t).")
    var txDepth: Int = 128

    @Option(name: .long, help: "Bandwidth: messages per request, posted as one work-request list with selective signalling (perftest -l).")
    var postList: Int = 16

    @Option(name: .long, help: "RDMA posting path: direct (RDMADirectQueue: preallocated slots, no per-transfer objects, as perftest's loop) or request (a TransferRequest per post). TCP always uses request.")
    var path: String = "direct"

    @Option(name: .long, help: "Give the CPU away (sched_yield) every N empty completion polls, so kernel-side NIC work on this CPU (soft-RoCE) is not starved; 0 spins without yielding (perftest's loop).")
    var yieldEvery: Int = 8

    @Option(name: .long, help: "Direct queue: after this many empty polls in a row, sleep on the completion channel until the next completion (default: never; spin and yield).")
    var sleepAfter: Int?

    @Option(name: .long, help: "Use a peer started with 'memwall rdma-serve --export bench:SIZE:rw' at HOST:PORT.")
    var connect: String?

    @Option(name: .long, help: "Bandwidth: move this many bytes per size (iterations = bytes / size, at least one request) instead of -n messages, so small and large sizes run alike in one call.")
    var bytesPerSize: String?

    @Flag(name: .long, help: "Allocate the local region 2 MiB-aligned with MADV_HUGEPAGE.")
    var hugePages = false

    @Flag(name: .long, help: "Print stable JSON (schema memwall.bench.rdma/1).")
    var json = false

    /// One row of perftest-style output: a bandwidth or a latency figure for one size.
    struct Row: Codable {
        var operation, metric: String, bytes, iterations: Int
        /// Bandwidth rows: average MiB/s (perftest's "MB/sec") and GB/s.
        var mebibytesPerSecond, gigabytesPerSecond, messagesPerSecond: Double?
        /// Latency rows, microseconds.
        var minMicroseconds, typicalMicroseconds, averageMicroseconds, p99Microseconds, p999Microseconds, maxMicroseconds: Double?
    }

    /// What `bench rdma --json` prints.
    struct Report: Codable {
        var schema = "memwall.bench.rdma/1"
        /// The transport, and the implementation of the path the peer got.
        var transport, implementation: String
        /// "direct queue" or "request path".
        var path: String
        /// How bytes reached the peer: "rdma", "tcp-emulation" or "intra-host".
        var peerPath: String
        /// Why the peer path is what it is (the TCP label says why not intra-host).
        var peerPathDetail: String
        var device: String?, peer: String, rows: [Row]
    }

    func validate() throws {
        try OptionCheck.inRange("--iterations", iterations, 1 ... 1_000_000_000)
        try OptionCheck.inRange("--tx-depth", txDepth, 1 ... 16384)
        try OptionCheck.inRange("--post-list", postList, 1 ... 1024)
        try OptionCheck.inRange("--yield-every", yieldEvery, 0 ... 1_000_000, unit: "polls (0: never)")
        if let sleepAfter { try OptionCheck.inRange("--sleep-after", sleepAfter, 1 ... 1_000_000_000, unit: "polls") }
        if let bytesPerSize {
            guard let n = try? ByteCount.parse(bytesPerSize).rawValue, n > 0 else {
                throw ValidationError("invalid --bytes-per-size '\(bytesPerSize)': expected a positive size such as 1G")
            }
        }
        guard ["direct", "request"].contains(path) else { throw ValidationError("invalid --path '\(path)': expected direct or request") }
    }

    func run() async throws {
        let operations = try Self.list(ops, allowed: ["write", "read"], what: "--ops")
        let modes = try Self.list(mode, allowed: ["bw", "lat"], what: "--mode")
        let sizeList = try Self.sizeList(sizes)
        let maxSize = sizeList.max() ?? 1
        let callerPolls = selection.resolvedKind == .rdma
        let client = try selection.open(callerPolls: callerPolls)
        var server: (any RemoteMemoryTransport)?
        var serverRegion: MemoryRegion?
        let peer: RemotePeer
        if let connect {
            let (host, port) = try Self.hostPort(connect)
            peer = try client.connect(address: host, port: port, timeout: .seconds(10))
        } else {
            let s = try selection.open()
            // Shareable for the TCP emulation, as `memwall rdma-serve` exports by default.
            let r = s is TCPEmulationTransport ? try MemoryRegion.allocateShared(byteCount: maxSize) : try MemoryRegion.allocate(byteCount: maxSize)
            try s.register(r)
            try s.export(r, as: "bench", access: [.read, .write])
            let address = RemoteTransportSelection.defaultAddress(for: s)
            let port = try s.listen(address: address, port: 0)
            peer = try client.connect(address: address, port: port, timeout: .seconds(10))
            server = s
            serverRegion = r
        }
        let segment = try peer.segment(named: "bench")
        guard segment.byteCount >= maxSize else {
            throw MemWallError(.outOfBounds, "the peer's 'bench' region has \(ByteCount(segment.byteCount)); the largest size asked for is \(ByteCount(maxSize))")
        }
        let local = try MemoryRegion.allocate(byteCount: maxSize, transparentHugePages: hugePages)
        local.withUnsafeMutableBytes { b in for i in 0 ..< b.count { b[i] = UInt8(truncatingIfNeeded: i) } }
        try client.register(local)
        let poller = try (client as? RDMATransport)?.completionPoller(for: peer)
        var emptyPolls = 0
        let every = yieldEvery
        let progress: () -> Void = poller.map { p in
            {
                if p.poll() == 0 {
                    emptyPolls += 1
                    if every > 0 && emptyPolls % every == 0 { sched_yield() }
                }
            }
        } ?? { sched_yield() }
        let direct: RDMADirectQueue? = if path == "direct", let rdma = client as? RDMATransport {
            try RDMADirectQueue(transport: rdma, peer: peer, depth: min(txDepth, selection.sqDepth - 1))
        } else {
            nil
        }
        let label = "\(peer.path), \(direct == nil ? "request path" : "direct queue")"
        if !json { print("memwall bench rdma — \(label), peer \(peer.address)") }
        var rows: [Row] = []
        var reporter = ProgressReporter("bench rdma", total: operations.count * modes.count * sizeList.count, enabled: !json)
        var step = 0
        for op in operations {
            let operation: TransferOperation = op == "read" ? .read : .write
            for m in modes {
                for size in sizeList {
                    let one = TransferDescriptor(local: local, target: .remote(segment), length: size)
                    let row: Row
                    if m == "bw" {
                        let list = try client.prepare(operation, Array(repeating: one, count: postList))
                        let iterations = bytesPerSize.flatMap { try? ByteCount.parse($0).rawValue }.map { max(postList, $0 / size) } ?? self.iterations
                        row = if let direct {
                            try Self.bandwidth(direct, list, messageBytes: size, iterations: iterations, window: txDepth, yieldEvery: yieldEvery, sleepAfter: sleepAfter)
                        } else {
                            try Self.bandwidth(client, list, messageBytes: size, iterations: iterations, window: txDepth, progress: progress)
                        }
                    } else {
                        let single = try client.prepare(operation, [one])
                        row = if let direct {
                            try Self.latency(direct, single, iterations: iterations, yieldEvery: yieldEvery, sleepAfter: sleepAfter)
                        } else {
                            try Self.latency(client, single, iterations: iterations, progress: progress)
                        }
                    }
                    rows.append(row)
                    step += 1
                    reporter.update(step, "\(op) \(m) \(ByteCount(size))")
                }
            }
        }
        withExtendedLifetime((server, serverRegion, direct)) {}
        let report = Report(transport: client.name, implementation: peer.path.implementation.description,
                            path: direct == nil ? "request path" : "direct queue", peerPath: peer.path.name,
                            peerPathDetail: peer.path.description,
                            device: (client as? RDMATransport)?.deviceName, peer: peer.address, rows: rows)
        peer.disconnect()
        if json {
            try Output.printJSON(report)
        } else {
            Self.printTable(report)
        }
    }

    /// Keeps `window` messages in flight, `iterations` messages in all; perftest's bw loop.
    /// Each request carries `prepared.descriptors.count` messages of `messageBytes`.
    static func bandwidth(_ t: any RemoteMemoryTransport, _ prepared: PreparedTransfer, messageBytes: Int, iterations messages: Int,
                          window messageWindow: Int, progress: () -> Void) throws -> Row {
        let perRequest = prepared.descriptors.count
        let iterations = max(1, (messages + perRequest - 1) / perRequest)
        let window = max(1, messageWindow / perRequest)
        var inFlight: [TransferRequest] = []
        inFlight.reserveCapacity(window)
        var head = 0
        var posted = 0
        var done = 0
        // A short warm-up so connection setup and first-touch faults are not timed.
        for _ in 0 ..< min(16, iterations) {
            let r = try t.post(prepared)
            while r.poll() == .pending { progress() }
            try r.waitBlocking()
        }
        let start = MonotonicClock.nanoseconds()
        while done < iterations {
            while posted < iterations && posted - done < window {
                inFlight.append(try t.post(prepared))
                posted += 1
            }
            progress()
            while head < inFlight.count, inFlight[head].poll() != .pending {
                try inFlight[head].waitBlocking()
                head += 1
                done += 1
            }
            if head > 1024 { inFlight.removeFirst(head); head = 0 }
        }
        return bandwidthRow(prepared, messageBytes: messageBytes, messages: iterations * perRequest, since: start)
    }

    /// The bandwidth loop on a direct queue: `window` messages in flight in
    /// slots, each slot reposted as soon as it is reaped.
    static func bandwidth(_ q: RDMADirectQueue, _ prepared: PreparedTransfer, messageBytes: Int, iterations messages: Int,
                          window messageWindow: Int, yieldEvery: Int, sleepAfter: Int?) throws -> Row {
        let perRequest = prepared.descriptors.count
        let iterations = max(1, (messages + perRequest - 1) / perRequest)
        let slots = max(1, min(q.depth, messageWindow / perRequest))
        for s in 0 ..< min(16, iterations, slots) { try q.post(prepared, slot: s) }
        try q.reap(waitingFor: q.inFlight) { c in _ = try c.result.get() }
        var free = Array((0 ..< slots).reversed())
        var posted = 0
        var done = 0
        let start = MonotonicClock.nanoseconds()
        while done < iterations {
            while posted < iterations, let s = free.popLast() {
                try q.post(prepared, slot: s)
                posted += 1
            }
            try q.reap(waitingFor: 1, yieldEvery: yieldEvery, sleepAfter: sleepAfter) { c in
                _ = try c.result.get()
                free.append(c.slot)
                done += 1
            }
        }
        return bandwidthRow(prepared, messageBytes: messageBytes, messages: iterations * perRequest, since: start)
    }

    /// The latency loop on a direct queue: one slot, posted and reaped in turn.
    static func latency(_ q: RDMADirectQueue, _ prepared: PreparedTransfer, iterations: Int, yieldEvery: Int, sleepAfter: Int?) throws -> Row {
        var h = LatencyHistogram()
        let warmUp = min(16, iterations)
        for i in 0 ..< iterations + warmUp {
            try q.post(prepared, slot: 0)
            try q.reap(waitingFor: 1, yieldEvery: yieldEvery, sleepAfter: sleepAfter) { c in
                _ = try c.result.get()
                if i >= warmUp { h.record(c.nanoseconds) }
            }
        }
        return latencyRow(prepared, iterations: iterations, h)
    }

    /// A bandwidth row: `messages` of `messageBytes` moved since `start` (monotonic ns).
    static func bandwidthRow(_ prepared: PreparedTransfer, messageBytes: Int, messages: Int, since start: UInt64) -> Row {
        let ns = Double(MonotonicClock.nanoseconds() - start)
        let bytes = Double(messageBytes) * Double(messages)
        return Row(operation: prepared.operation.rawValue, metric: "bw", bytes: messageBytes, iterations: messages,
                   mebibytesPerSecond: bytes / ns * 1e9 / 1_048_576, gigabytesPerSecond: bytes / ns,
                   messagesPerSecond: Double(messages) / ns * 1e9)
    }

    static func latencyRow(_ prepared: PreparedTransfer, iterations: Int, _ h: LatencyHistogram) -> Row {
        let us = { (v: UInt64) in Double(v) / 1000 }
        return Row(operation: prepared.operation.rawValue, metric: "lat", bytes: prepared.totalBytes, iterations: iterations,
                   minMicroseconds: us(h.min), typicalMicroseconds: us(h.percentile(50)), averageMicroseconds: h.mean / 1000,
                   p99Microseconds: us(h.percentile(99)), p999Microseconds: us(h.percentile(99.9)), maxMicroseconds: us(h.max))
    }

    /// One request at a time; perftest's lat loop. Latency is post → completion
    /// as the request's telemetry stamps it.
    static func latency(_ t: any RemoteMemoryTransport, _ prepared: PreparedTransfer, iterations: Int,
                        progress: () -> Void) throws -> Row {
        var h = LatencyHistogram()
        for i in 0 ..< iterations + min(16, iterations) {
            let r = try t.post(prepared)
            while r.poll() == .pending { progress() }
            // The request's own post and completion stamps: no extra clock reads in the
            // loop (on the lab guest the clock is an emulated HPET, several µs per read).
            let report = try r.waitBlocking()
            if i >= min(16, iterations) { h.record(report.nanoseconds) }
        }
        return latencyRow(prepared, iterations: iterations, h)
    }

    static func printTable(_ r: Report) {
        func f(_ v: Double?, _ w: Int) -> String {
            let s = v.map { formatDecimal($0, places: 2) } ?? "-"
            return String(repeating: " ", count: max(0, w - s.count)) + s
        }
        func p(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
        let bw = r.rows.filter { $0.metric == "bw" }
        if !bw.isEmpty {
            print(p("op", 6) + p("#bytes", 10) + p("#iterations", 13) + p("BW average[MB/sec]", 20) + p("GB/s", 9) + p("MsgRate[Mpps]", 15))
            for row in bw {
                print(p(row.operation, 6) + p("\(row.bytes)", 10) + p("\(row.iterations)", 13) + f(row.mebibytesPerSecond, 20)
                      + f(row.gigabytesPerSecond, 9) + f(row.messagesPerSecond.map { $0 / 1e6 }, 15))
            }
        }
        let lat = r.rows.filter { $0.metric == "lat" }
        if !lat.isEmpty {
            print(p("op", 6) + p("#bytes", 10) + p("#iterations", 13) + p("t_min[usec]", 13) + p("t_typical", 11) + p("t_avg", 9)
                  + p("99%", 9) + p("99.9%", 9) + p("t_max", 10))
            for row in lat {
                print(p(row.operation, 6) + p("\(row.bytes)", 10) + p("\(row.iterations)", 13) + f(row.minMicroseconds, 13)
                      + f(row.typicalMicroseconds, 11) + f(row.averageMicroseconds, 9) + f(row.p99Microseconds, 9)
                      + f(row.p999Microseconds, 9) + f(row.maxMicroseconds, 10))
            }
        }
    }

    static func list(_ text: String, allowed: [String], what: String) throws -> [String] {
        let items = text.split(separator: ",").map { String($0).trimmingWhitespace().lowercased() }
        guard !items.isEmpty, items.allSatisfy(allowed.contains) else {
            throw ValidationError("invalid \(what) '\(text)': expected a comma-separated list of \(allowed.joined(separator: ", "))")
        }
        return items
    }

    static func sizeList(_ text: String) throws -> [Int] {
        var out: [Int] = []
        for part in text.split(separator: ",") {
            guard let n = try? ByteCount.parse(String(part)).rawValue, n > 0, n <= Int(UInt32.max) else {
                throw ValidationError("invalid size '\(part)' in --sizes: expected a positive size up to 4G such as 2, 4k or 1M")
            }
            out.append(n)
        }
        guard !out.isEmpty else { throw ValidationError("invalid --sizes '\(text)': expected sizes such as 2,64,4k,1M") }
        return out
    }

    static func hostPort(_ text: String) throws -> (String, UInt16) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            throw ValidationError("invalid --connect '\(text)': expected HOST:PORT such as 127.0.0.1:18515")
        }
        return (String(text[..<colon]), port)
    }
}
