#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KVPlacement
@testable import KVPool
import MemWallCore
import Testing
import Transport

/// `memwall` (built next to the test bundle) running as another process.
final class MemWallProcess {
    let process = Process()
    private let stdinPipe = Pipe()
    private let stdoutPipe = Pipe()
    private var buffered = ""

    /// The memwall executable next to the test bundle (`swift build --build-tests` builds both).
    static var executable: URL? {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for dir in [bundle, bundle.deletingLastPathComponent()] {
            let u = dir.appendingPathComponent("memwall")
            if FileManager.default.isExecutableFile(atPath: u.path) { return u }
        }
        return nil
    }

    init(_ arguments: [String]) throws {
        guard let exe = Self.executable else {
            throw MemWallError(.missingDependency, "the memwall executable is not built next to the tests; run swift build --build-tests first")
        }
        process.executableURL = exe
        process.arguments = arguments
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    /// Waits for the worker's "attached PID" line.
    func waitAttached(seconds: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while let line = readLine(deadline: deadline) {
            if line.hasPrefix("attached ") { return true }
        }
        return false
    }

    /// Waits until the process stopped itself (SIGSTOP at its --stop-at point): state 'T' in /proc.
    func waitStopped(seconds: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let s = PoolProcessIdentity.procStat(of: pid), s.state == UInt8(ascii: "T") { return true }
            if !process.isRunning { return false }
            usleep(1000)
        }
        return false
    }

    /// SIGKILL: no handler runs, nothing is released; then reaped.
    func kill() {
        Glibc.kill(pid, SIGKILL)
        process.waitUntilExit()
    }

    /// Closes standard input (a worker started with --until-stdin-closes then reports) and
    /// returns everything it printed after the "attached" line, and its exit status.
    func finish(seconds: Double = 120) -> (status: Int32, output: String) {
        try? stdinPipe.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(seconds)
        var out = ""
        while let line = readLine(deadline: deadline) { out += line + "\n" }
        out += buffered
        process.waitUntilExit()
        return (process.terminationStatus, out)
    }

    private func readLine(deadline: Date) -> String? {
        let fd = stdoutPipe.fileHandleForReading.fileDescriptor
        while true {
            if let nl = buffered.firstIndex(of: "\n") {
                let line = String(buffered[..<nl])
                buffered.removeSubrange(...nl)
                return line
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(min(left, 1) * 1000)) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { return nil }
            buffered += String(decoding: chunk[0 ..< n], as: UTF8.self)
        }
    }

    deinit { if process.isRunning { kill() } }

    /// Runs `memwall ARGS` to the end and returns its standard output.
    static func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let p = try MemWallProcess(arguments)
        return p.finish()
    }

    /// `memwall pool stat NAME --json --no-pages`, decoded.
    static func stat(_ name: String) throws -> KVPoolStatus {
        let (status, output) = try run(["pool", "stat", name, "--json", "--no-pages"])
        #expect(status == 0, "memwall pool stat exited with \(status)")
        return try JSONDecoder().decode(KVPoolStatus.self, from: Data(output.utf8))
    }
}

/// A worker's report (see `memwall pool worker`).
struct WorkerReport: Decodable {
    var requests: Int
    var blocks: Int
    var hits: Int
    var loaded: Int
    var verified: Int
    var corrupt: Int
    var vanished: Int
    var stored: Int
    var storeFailures: Int
    var views: Int

    static func parse(_ text: String) throws -> WorkerReport {
        guard let start = text.firstIndex(of: "{") else {
            throw MemWallError(.malformedInput, "the worker printed no report: \(text)")
        }
        return try JSONDecoder().decode(WorkerReport.self, from: Data(text[start...].utf8))
    }
}

@Suite("KVPool across processes", .serialized)
struct PoolProcessTests {
    static var canRun: Bool { MemWallProcess.executable != nil }

    @Test func fourProcessesShareOneCopyOfEachBlock() throws {
        guard Self.canRun else { print("skip: the memwall executable is not built next to the tests"); return }
        try PoolProcessChecks.fourProcesses(node: nil)
    }

    @Test func killedProcessesAreReclaimedAndNothingHalfWrittenIsServed() throws {
        guard Self.canRun else { print("skip: the memwall executable is not built next to the tests"); return }
        try PoolProcessChecks.crashes(runs: 100, node: nil)
    }
}

/// The multi-process checks, run on the host and, with the pool on CPU-less node 1, in the lab.
enum PoolProcessChecks {
    /// Four processes store and load overlapping prefixes at once; every block
    /// read is checked; each distinct block is written once and held once.
    static func fourProcesses(node: Int?, device: String? = nil) throws {
        let documents = 4, documentBlocks = 8, ownBlocks = 2, requests = 60, workers = 4
        let distinct = documents * documentBlocks + workers * requests * ownBlocks
        let s = try ScratchPool("four", blocks: distinct + 64, blockBytes: 16384, node: node, device: device)
        let procs = try (1...workers).map { seed in
            try MemWallProcess(["pool", "worker", s.name, "--seed", "\(seed)", "--requests", "\(requests)",
                                "--documents", "\(documents)", "--document-blocks", "\(documentBlocks)",
                                "--own-blocks", "\(ownBlocks)", "--views"])
        }
        let reports = try procs.map { p -> WorkerReport in
            let (status, out) = p.finish()
            #expect(status == 0, "worker exited with \(status): \(out)")
            return try WorkerReport.parse(out)
        }
        for r in reports {
            #expect(r.requests == requests && r.corrupt == 0 && r.vanished == 0 && r.storeFailures == 0)
            #expect(r.verified == r.loaded + r.views, "every block read was checked and matched")
        }
        #expect(reports.reduce(0) { $0 + $1.hits } > 0, "the processes found each other's blocks")
        #expect(reports.reduce(0) { $0 + $1.stored } == distinct, "each distinct block was written by exactly one process")
        let st = try MemWallProcess.stat(s.name)
        #expect(st.blocks == distinct)
        #expect(st.bytesUsed == distinct * s.pool.blockBytes, "one copy of each block, not one per process")
        #expect(st.references == 0 && st.reserved == 0 && st.processesDead == 0 && st.problems.isEmpty, "\(st.problems)")
        #expect(st.processesAlive == 1, "only this test's own attachment is left")
        #expect(st.counters["corrupt"] == 0)
    }

    /// `runs` processes killed with SIGKILL — at a random moment, or stopped first
    /// at a chosen point (holding the lock, half-way through writing a block,
    /// holding a view) — while another process keeps reading and writing.
    /// After each kill the next attach reclaims everything the dead process
    /// held; `pool stat` then shows no dead process, no reference or
    /// reservation of one, and consistent tables; no read anywhere is corrupt.
    static func crashes(runs: Int, node: Int?, device: String? = nil) throws {
        let s = try ScratchPool("crash", blocks: 96, blockBytes: 16384, node: node, device: device)
        let shape = ["--documents", "6", "--document-blocks", "8"]
        let survivor = try MemWallProcess(["pool", "worker", s.name, "--seed", "999", "--requests", "100000000", "--seconds", "600",
                                           "--own-blocks", "2", "--views", "--until-stdin-closes", "--pause-us", "300"] + shape)
        #expect(survivor.waitAttached())
        var rng = SplitMix64(seed: 0xC0A5)
        let points: [KVPoolTestPoint] = [.lockHeld, .writing, .beforeView, .viewHeld]
        var stoppedAt: [KVPoolTestPoint: Int] = [:]
        var before = try KVPool.status(name: s.name, pages: false)
        for run in 0..<runs {
            let point: KVPoolTestPoint? = run % 3 == 0 ? points[(run / 3) % points.count] : nil
            let writer = point.map { $0 == .lockHeld || $0 == .writing } ?? (rng.next() % 2 == 0)
            var args = ["pool", "worker", s.name, "--seed", "\(run + 1)", "--requests", "100000000", "--seconds", "60"] + shape
            args += writer ? ["--own-blocks", "4"] : ["--own-blocks", "0", "--views"]
            if let point { args += ["--stop-at", point.rawValue] }
            let victim = try MemWallProcess(args)
            #expect(victim.waitAttached(), "run \(run): the worker attached")
            if let point {
                #expect(victim.waitStopped(), "run \(run): the worker reached \(point)")
                stoppedAt[point, default: 0] += 1
            } else {
                usleep(UInt32(rng.next() % 15_000))
            }
            victim.kill()

            // What `pool stat` sees before anyone attaches: the dead process and what it held.
            let dead = try KVPool.status(name: s.name, pages: false)
            #expect(dead.processesDead <= 1)
            if point == .viewHeld && dead.processesDead == 1 { #expect(dead.referencesOfDead >= 1, "run \(run): its view's reference is still counted") }
            if point == .writing && dead.processesDead == 1 { #expect(dead.reservationsOfDead >= 1, "run \(run): its half-written block is still reserved") }

            // The next attach reclaims it.
            let next = try KVPool.attach(name: s.name)
            next.close()
            let after = try MemWallProcess.stat(s.name)
            #expect(after.processesDead == 0 && after.referencesOfDead == 0 && after.reservationsOfDead == 0, "run \(run)")
            #expect(after.problems.isEmpty, "run \(run): \(after.problems)")
            #expect(after.processesAlive == 2, "run \(run): the survivor and this test")
            #expect(after.reclaimedProcesses == before.reclaimedProcesses + 1, "run \(run): the dead process was reclaimed exactly once")
            switch point {
            case .lockHeld?: #expect(after.repairs == before.repairs + 1, "run \(run): the lock's dead owner was found and the tables rebuilt")
            case .writing?: #expect(after.reclaimedReservations > before.reclaimedReservations, "run \(run)")
            case .viewHeld?: #expect(after.reclaimedReferences > before.reclaimedReferences, "run \(run)")
            default: break
            }
            before = after
        }
        #expect(stoppedAt.count == points.count, "every stop point was reached: \(stoppedAt)")
        let (status, out) = survivor.finish()
        #expect(status == 0)
        let report = try WorkerReport.parse(out)
        #expect(report.corrupt == 0 && report.requests > 0, "the survivor read \(report.verified) blocks, all intact")
        #expect(report.verified > 0)

        // Every block left in the pool has the bytes its key says.
        let verifier = try KVPool.attach(name: s.name)
        defer { verifier.close() }
        var keys = (0..<6).flatMap { d in (0..<8).map { PoolWorkload.documentKey(d, $0) } }
        keys += (1...runs).flatMap { seed in (0..<1000).flatMap { r in (0..<4).map { PoolWorkload.ownKey(seed: UInt64(seed), r, $0) } } }
            .filter { (try? verifier.lookup([$0]).count) == 1 }
        let b = try Blocks(count: 1, blockBytes: s.pool.blockBytes)
        var checked = 0
        for k in keys {
            let r = try verifier.load([k], into: b.buffers(1))
            if r.succeeded { #expect(b.holds(k, at: 0)); checked += 1 } else { #expect(r.failed[0].error.code == .notFound) }
        }
        #expect(checked > 0)
        let final = try MemWallProcess.stat(s.name)
        #expect(final.reserved == 0 && final.references == 0 && final.processesDead == 0 && final.problems.isEmpty)
        #expect(final.reclaimedProcesses == runs)
        #expect(final.counters["corrupt"] == 0)
    }
}
