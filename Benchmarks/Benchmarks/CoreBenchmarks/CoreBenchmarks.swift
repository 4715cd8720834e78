// Costs MemWall adds on the hot path, each next to what it wraps: the syscall
// funnel against a bare pread(2), and recording one latency sample.
import Benchmark
#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal],
                                           scalingFactor: .kilo, maxDuration: .seconds(2), maxIterations: 100_000)

    let path = "/tmp/memwall-bench-funnel"
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    var block = [UInt8](repeating: 7, count: 4096)
    _ = block.withUnsafeBytes { write(fd, $0.baseAddress, 4096) }

    Benchmark("pread 4 KiB, bare libc (reference)") { b in
        for _ in b.scaledIterations {
            blackHole(block.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, 0) })
        }
    }

    Benchmark("pread 4 KiB through SyscallFunnel") { b in
        let funnel = SyscallFunnel.system
        for _ in b.scaledIterations {
            blackHole(block.withUnsafeMutableBytes { funnel.pread(fd, $0.baseAddress!, 4096, 0) })
        }
    }

    Benchmark("LatencyHistogram.record") { b in
        var h = LatencyHistogram()
        var x: UInt64 = 1
        for _ in b.scaledIterations {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            h.record(x >> 44)
        }
        blackHole(h.count)
    }
}
