import ArgumentParser
import CMemWallShim
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import MemWallCore
import NUMATransport
import Transport

/// `memwall bench memory`: the matrix Intel MLC gives — copy bandwidth between
/// every pair of memory nodes over a size sweep, and idle latency from every
/// CPU node to every memory node by a randomised pointer chase.
struct BenchMemoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory",
        abstract: "Copy bandwidth between every pair of NUMA nodes over a size sweep, and idle latency by pointer chase.",
        discussion: """
        Copies go through MemWall's NUMA transport (threads placed near the destination, only as
        many as pay off); each point also times a one-thread memcpy of the same buffers for a
        ratio. On a one-node host the far node is an emulated pool in DRAM and every line says so.
        """
    )

    @Option(help: "Copy sizes to sweep, comma-separated.")
    var sizes: String = "4k,256k,4M,64M"

    @Option(help: "Seconds to spend on each copy point, and at most on the timed loads of each latency point.")
    var seconds: Double = 0.5

    @Option(name: .customLong("chase-size"), help: "Pointer-chase buffer (well above the last-level cache).")
    var chaseSize: String = "128M"

    @Option(name: .customLong("chase-loads"), help: "Dependent loads per latency point.")
    var chaseLoads: Int = 4_000_000

    @Option(name: .customLong("emulated-capacity"), help: "Capacity of the emulated far pool on one-node hosts.")
    var emulatedCapacity: String = "1G"

    @Flag(name: .customLong("no-latency"), help: "Skip the pointer chase.")
    var noLatency = false

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try OptionCheck.finite("--seconds", seconds, above: 0, atMost: 600, unit: "seconds")
        try OptionCheck.inRange("--chase-loads", chaseLoads, 1000 ... 1_000_000_000, unit: "loads")
        for size in try BenchOutput.sizeList(sizes, what: "--sizes") {
            try OptionCheck.inRange("--sizes", size, 1 ... (16 << 30), unit: "bytes")
        }
        _ = try OptionCheck.size("--chase-size", chaseSize, (1 << 20) ... (64 << 30))
        _ = try OptionCheck.size("--emulated-capacity", emulatedCapacity, (1 << 20) ... (1 << 40))
    }

    func run() async throws {
        let sweep = try BenchOutput.sizeList(sizes, what: "--sizes")
        let chaseBytes = try ByteCount.parse(chaseSize).rawValue
        let allocator = NUMAAllocator(emulatedCapacity: try ByteCount.parse(emulatedCapacity).rawValue)
        let transport = NUMATransport(allocator: allocator)
        let nodes = allocator.nodes
        let initiators = nodes.filter { !$0.cpus.isEmpty }
        var progress = ProgressReporter("bench memory",
                                        total: nodes.count * nodes.count * sweep.count + (noLatency ? 0 : initiators.count * nodes.count),
                                        enabled: !output.quiet)
        var done = 0
        var copies: [CopyPoint] = []
        for from in nodes {
            for to in nodes {
                for size in sweep {
                    let p = try await MemoryBench.copy(transport: transport, allocator: allocator, from: from, to: to, bytes: size, seconds: seconds)
                    copies.append(p)
                    done += 1
                    progress.update(done, "copy \(from.id)->\(to.id) \(ByteCount(size)): \(BenchOutput.fixed(p.gigabytesPerSecond)) GB/s")
                }
            }
        }
        var latencies: [LatencyPoint] = []
        if !noLatency {
            for cpuNode in initiators {
                for memNode in nodes {
                    let ns = try MemoryBench.chase(allocator: allocator, cpus: cpuNode.cpus, memoryNode: memNode.id,
                                                   bytes: chaseBytes, loads: chaseLoads, seconds: seconds)
                    latencies.append(LatencyPoint(cpuNode: cpuNode.id, memoryNode: memNode.id, memoryIsEmulated: memNode.isEmulated,
                                                  chaseBytes: chaseBytes, nanosecondsPerLoad: ns))
                    done += 1
                    progress.update(done, "latency CPU node \(cpuNode.id) -> memory node \(memNode.id): \(BenchOutput.fixed(ns, 1)) ns")
                }
            }
        }
        let report = MemoryBenchReport(
            nodes: nodes.map { NodeSummary(id: $0.id, description: $0.description, cpus: $0.cpus, bytes: $0.totalBytes, isEmulated: $0.isEmulated) },
            transport: "\(transport.name) (\(transport.capabilities.implementation))",
            copies: copies, latencies: latencies)
        if output.json { try Output.printJSON(report) } else { printTables(report, sizes: sweep) }
    }

    private func printTables(_ r: MemoryBenchReport, sizes: [Int]) {
        print("memwall bench memory via \(r.transport)")
        for n in r.nodes { print("  \(n.description)\(n.cpus.isEmpty ? "" : ", CPUs \(n.cpus.map(String.init).joined(separator: ","))")") }
        for size in sizes {
            print("\ncopy bandwidth, \(ByteCount(size)) (GB/s; in brackets: ratio to a one-thread memcpy of the same buffers; threads)")
            print("from \\ to" + r.nodes.map { BenchOutput.pad("node \($0.id)\($0.isEmulated ? " (emul.)" : "")", 26) }.joined())
            for from in r.nodes {
                var line = "node \(from.id)".padded(to: 9)
                for to in r.nodes {
                    guard let p = r.copies.first(where: { $0.fromNode == from.id && $0.toNode == to.id && $0.bytes == size }) else { continue }
                    line += BenchOutput.pad("\(BenchOutput.fixed(p.gigabytesPerSecond)) (\(BenchOutput.fixed(p.ratioToMemcpy))x, \(p.threads)t)", 26)
                }
                print(line)
            }
        }
        if !r.latencies.isEmpty {
            print("\nidle latency, ns per dependent load (randomised pointer chase over \(ByteCount(r.latencies[0].chaseBytes)))")
            let mems = r.nodes
            print("CPU \\ mem" + mems.map { BenchOutput.pad("node \($0.id)\($0.isEmulated ? " (emul.)" : "")", 18) }.joined())
            for cpu in Set(r.latencies.map(\.cpuNode)).sorted() {
                var line = "node \(cpu)".padded(to: 9)
                for m in mems {
                    if let p = r.latencies.first(where: { $0.cpuNode == cpu && $0.memoryNode == m.id }) {
                        line += BenchOutput.pad(BenchOutput.fixed(p.nanosecondsPerLoad, 1), 18)
                    }
                }
                print(line)
            }
        }
        if r.nodes.contains(where: \.isEmulated) {
            print("\nnote: the far node is emulation (a capacity-limited pool in DRAM on this one-node host); its figures are DRAM's")
        }
    }
}

/// A memory node as `bench memory` reports it.
struct NodeSummary: Codable {
    var id: Int, description: String, cpus: [Int], bytes: Int, isEmulated: Bool
}

/// One copy point: transport and one-thread memcpy on the same buffers.
struct CopyPoint: Codable {
    var fromNode, toNode, bytes, threads: Int
    /// Median over samples, decimal GB/s.
    var gigabytesPerSecond: Double
    /// One-thread memcpy of the same buffers, same method.
    var memcpyGigabytesPerSecond: Double
    var ratioToMemcpy: Double, samples: Int, emulated: Bool
}

/// One idle-latency point of the pointer chase.
struct LatencyPoint: Codable {
    var cpuNode, memoryNode: Int, memoryIsEmulated: Bool, chaseBytes: Int, nanosecondsPerLoad: Double
}

/// What `bench memory --json` prints.
struct MemoryBenchReport: Codable {
    var nodes: [NodeSummary], transport: String, copies: [CopyPoint], latencies: [LatencyPoint]
}

/// The measuring loops.
enum MemoryBench {
    /// Copies `bytes` from a region on `from` to one on `to` through the
    /// transport, in samples of several copies; reports the median sample and,
    /// measured the same way on the same buffers, a one-thread memcpy.
    static func copy(transport: NUMATransport, allocator: NUMAAllocator, from: NUMAAllocator.Node, to: NUMAAllocator.Node,
                     bytes: Int, seconds: Double) async throws -> CopyPoint {
        let src = try allocator.allocate(byteCount: bytes, on: from.id, transparentHugePages: true)
        let dst = try allocator.allocate(byteCount: bytes, on: to.id, transparentHugePages: true)
        src.withUnsafeMutableBytes { b in _ = b.initializeMemory(as: UInt8.self, repeating: 0xA5) }
        try transport.register(src)
        defer { try? transport.deregister(src) }
        let prepared = try transport.prepare(.write, [TransferDescriptor(local: src, target: .memory(dst), length: bytes)])
        // Warm-up: threads started (and calibrated), TLB filled; it also times one copy.
        var t0 = MonotonicClock.nanoseconds()
        try await transport.post(prepared).wait()
        let perSample = copiesPerSample(bytes: bytes, oneCopyNanoseconds: MonotonicClock.nanoseconds() - t0, seconds: seconds / 2)
        // Waiting suspends this task rather than spinning, so the copy threads
        // have the CPUs to themselves, as the one-thread memcpy does.
        let viaTransport = try await sampleMedianAsync(seconds: seconds / 2, bytesPerSample: bytes * perSample) {
            for _ in 0..<perSample { try await transport.post(prepared).wait() }
        }
        let s = src.baseAddress, d = dst.baseAddress
        t0 = MonotonicClock.nanoseconds()
        memcpy(d, s, bytes)
        let memcpyPerSample = copiesPerSample(bytes: bytes, oneCopyNanoseconds: MonotonicClock.nanoseconds() - t0, seconds: seconds / 2)
        let viaMemcpy = try sampleMedian(seconds: seconds / 2, bytesPerSample: bytes * memcpyPerSample) {
            for _ in 0..<memcpyPerSample { memcpy(d, s, bytes) }
        }
        let threads = try transport.copyThreads(bytes: bytes, destinationNode: to.id)
        return CopyPoint(fromNode: from.id, toNode: to.id, bytes: bytes, threads: threads,
                         gigabytesPerSecond: viaTransport.gbps, memcpyGigabytesPerSecond: viaMemcpy.gbps,
                         ratioToMemcpy: viaMemcpy.gbps > 0 ? viaTransport.gbps / viaMemcpy.gbps : 0,
                         samples: viaTransport.samples, emulated: from.isEmulated || to.isEmulated)
    }

    /// Copies per sample: enough (up to 32 MiB worth) that timer and hand-off
    /// noise stay small, but few enough that the three samples a median needs
    /// fit in `seconds`, so --seconds is kept even for small copies.
    static func copiesPerSample(bytes: Int, oneCopyNanoseconds: UInt64, seconds: Double) -> Int {
        let budget = seconds * 1e9 / 4
        let fit = Int(min(budget / Double(max(oneCopyNanoseconds, 1)), Double(Int32.max)))
        return max(1, min((32 << 20) / max(bytes, 1), fit))
    }

    private static func sampleMedianAsync(seconds: Double, bytesPerSample: Int, _ body: () async throws -> Void) async throws -> (gbps: Double, samples: Int) {
        var rates: [Double] = []
        let end = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        repeat {
            let t0 = MonotonicClock.nanoseconds()
            try await body()
            let dt = max(MonotonicClock.nanoseconds() - t0, 1)
            rates.append(Double(bytesPerSample) / Double(dt))
        } while MonotonicClock.nanoseconds() < end || rates.count < 3
        rates.sort()
        return (rates[rates.count / 2], rates.count)
    }

    private static func sampleMedian(seconds: Double, bytesPerSample: Int, _ body: () throws -> Void) throws -> (gbps: Double, samples: Int) {
        var rates: [Double] = []
        let end = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        repeat {
            let t0 = MonotonicClock.nanoseconds()
            try body()
            let dt = max(MonotonicClock.nanoseconds() - t0, 1)
            rates.append(Double(bytesPerSample) / Double(dt))
        } while MonotonicClock.nanoseconds() < end || rates.count < 3
        rates.sort()
        return (rates[rates.count / 2], rates.count)
    }

    /// Nanoseconds per load of a pointer chase through a random cyclic
    /// permutation of the cache lines of a buffer on `memoryNode`, from a thread
    /// pinned to `cpus`. Random order defeats the prefetchers; every load
    /// depends on the one before, so loads cannot overlap.
    /// At most `loads` loads are timed, fewer (but at least 1000) when the
    /// warm-up walk shows they would take longer than `seconds`.
    static func chase(allocator: NUMAAllocator, cpus: [Int], memoryNode: Int, bytes: Int, loads maximumLoads: Int,
                      seconds: Double) throws -> Double {
        let region = try allocator.allocate(byteCount: bytes, on: memoryNode, transparentHugePages: true)
        let line = 64
        let lines = region.byteCount / line
        var order = Array(0..<lines)
        var rng = SplitMix64(seed: UInt64.random(in: .min ... .max))
        order.shuffle(using: &rng)
        let base = region.baseAddress
        for i in 0..<lines {
            let here = base + order[i] * line
            let next = base + order[(i + 1) % lines] * line
            here.storeBytes(of: UnsafeRawPointer(next), as: UnsafeRawPointer.self)
        }
        let pins = cpus.map { Int32($0) }
        _ = pins.withUnsafeBufferPointer { memwall_pin_current_thread($0.baseAddress, Int32($0.count)) }
        defer {
            let all = (0..<Int32(sysconf(Int32(_SC_NPROCESSORS_ONLN)))).map { $0 }
            _ = all.withUnsafeBufferPointer { memwall_pin_current_thread($0.baseAddress, Int32($0.count)) }
        }
        var p = UnsafeRawPointer(base + order[0] * line)
        let warmUp = min(lines, maximumLoads)
        var t0 = MonotonicClock.nanoseconds()
        for _ in 0..<warmUp { p = p.load(as: UnsafeRawPointer.self) }  // warm TLB and caches
        let perLoad = Double(max(MonotonicClock.nanoseconds() - t0, 1)) / Double(warmUp)
        let loads = max(1000, min(maximumLoads, Int(min(seconds * 1e9 / perLoad, Double(Int32.max)))))
        t0 = MonotonicClock.nanoseconds()
        for _ in 0..<loads { p = p.load(as: UnsafeRawPointer.self) }
        let dt = MonotonicClock.nanoseconds() - t0
        // Using the final pointer keeps the loop from being optimised away.
        guard p >= UnsafeRawPointer(base) else { throw MemWallError(.corrupted, "pointer chase left its buffer") }
        return Double(dt) / Double(loads)
    }
}
