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

    @Option(help: "Seconds to spend on each copy point.")
    var seconds: Double = 0.5

    @Option(name: .customLong("chase-size"), help: "Pointer-chase buffer (well above the last-level cache).")
    var chaseSize: String = "128M"

    @Option(name: .customLong("chase-loads"), help: "Dependent loads per latency point.")
    var chaseLoads: Int = 4_000_000

    @Option(name: .customLong("emulated-capacity"), help: "Capacity of the emulated far pool on one-node hosts.")
    var emulatedCapacity: String = "1G"

    @Flag(name: .customLong("no-latency"), help: "Skip the pointer chase.")
    var noLatency = false

    @Flag(help: "Stable JSON on standard output.")
    var json = false

    @Flag(help: "No progress on standard error.")
    var quiet = false

    func validate() throws {
        guard seconds > 0, seconds <= 600 else { throw ValidationError("invalid --seconds '\(seconds)': expected (0, 600]") }
        guard chaseLoads >= 1000 else { throw ValidationError("invalid --chase-loads '\(chaseLoads)': expected at least 1000") }
        _ = try BenchOutput.sizeList(sizes, what: "--sizes")
    }

    func run() async throws {
        let sweep = try BenchOutput.sizeList(sizes, what: "--sizes")
        let chaseBytes = try ByteCount.parse(chaseSize).rawValue
        guard chaseBytes >= 1 << 20 else { throw ValidationError("invalid --chase-size '\(chaseSize)': expected at least 1M") }
        let allocator = NUMAAllocator(emulatedCapacity: try ByteCount.parse(emulatedCapacity).rawValue)
        let transport = NUMATransport(allocator: allocator)
        let nodes = allocator.nodes
        let initiators = nodes.filter { !$0.cpus.isEmpty }
        var progress = ProgressReporter("bench memory",
                                        total: nodes.count * nodes.count * sweep.count + (noLatency ? 0 : initiators.count * nodes.count),
                                        enabled: !quiet)
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
                                                   bytes: chaseBytes, loads: chaseLoads)
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
        if json { try BenchOutput.printJSON(report) } else { printTables(report, sizes: sweep) }
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

struct NodeSummary: Codable {
    var id: Int
    var description: String
    var cpus: [Int]
    var bytes: Int
    var isEmulated: Bool
}

struct CopyPoint: Codable {
    var fromNode: Int
    var toNode: Int
    var bytes: Int
    var threads: Int
    /// Median over samples, decimal GB/s.
    var gigabytesPerSecond: Double
    /// One-thread memcpy of the same buffers, same method.
    var memcpyGigabytesPerSecond: Double
    var ratioToMemcpy: Double
    var samples: Int
    var emulated: Bool
}

struct LatencyPoint: Codable {
    var cpuNode: Int
    var memoryNode: Int
    var memoryIsEmulated: Bool
    var chaseBytes: Int
    var nanosecondsPerLoad: Double
}

struct MemoryBenchReport: Codable {
    var nodes: [NodeSummary]
    var transport: String
    var copies: [CopyPoint]
    var latencies: [LatencyPoint]
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
        // Enough copies per sample that timer and hand-off noise stay small.
        let perSample = max(1, (32 << 20) / bytes)
        // Warm-up: threads started (and calibrated), TLB filled.
        try await transport.post(prepared).wait()
        // Waiting suspends this task rather than spinning, so the copy threads
        // have the CPUs to themselves, as the one-thread memcpy does.
        let viaTransport = try await sampleMedianAsync(seconds: seconds / 2, bytesPerSample: bytes * perSample) {
            for _ in 0..<perSample { try await transport.post(prepared).wait() }
        }
        let s = src.baseAddress, d = dst.baseAddress
        let viaMemcpy = try sampleMedian(seconds: seconds / 2, bytesPerSample: bytes * perSample) {
            for _ in 0..<perSample { memcpy(d, s, bytes) }
        }
        let threads = try transport.copyThreads(bytes: bytes, destinationNode: to.id)
        return CopyPoint(fromNode: from.id, toNode: to.id, bytes: bytes, threads: threads,
                         gigabytesPerSecond: viaTransport.gbps, memcpyGigabytesPerSecond: viaMemcpy.gbps,
                         ratioToMemcpy: viaMemcpy.gbps > 0 ? viaTransport.gbps / viaMemcpy.gbps : 0,
                         samples: viaTransport.samples, emulated: from.isEmulated || to.isEmulated)
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
    static func chase(allocator: NUMAAllocator, cpus: [Int], memoryNode: Int, bytes: Int, loads: Int) throws -> Double {
        let region = try allocator.allocate(byteCount: bytes, on: memoryNode, transparentHugePages: true)
        let line = 64
        let lines = region.byteCount / line
        var order = Array(0..<lines)
        var rng = SystemRandomNumberGenerator()
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
        for _ in 0..<min(lines, loads) { p = p.load(as: UnsafeRawPointer.self) }  // warm TLB and caches
        let t0 = MonotonicClock.nanoseconds()
        for _ in 0..<loads { p = p.load(as: UnsafeRawPointer.self) }
        let dt = MonotonicClock.nanoseconds() - t0
        // Using the final pointer keeps the loop from being optimised away.
        guard p >= UnsafeRawPointer(base) else { throw MemWallError(.corrupted, "pointer chase left its buffer") }
        return Double(dt) / Double(loads)
    }
}
