#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemWallCore
@testable import RDMATransport
import Testing
import Transport

/// `memwall rdma-serve` running as a separate process: the far side of two-process tests.
final class ServeProcess {
    let process = Process()
    private let stdinPipe = Pipe()
    private let stdoutPipe = Pipe()
    private var buffered = ""
    let port: UInt16

    /// The memwall executable next to the test bundle (both are built by `swift build --build-tests`).
    static var executable: URL? {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for dir in [bundle, bundle.deletingLastPathComponent()] {
            let u = dir.appendingPathComponent("memwall")
            if FileManager.default.isExecutableFile(atPath: u.path) { return u }
        }
        return nil
    }

    init(arguments: [String]) throws {
        guard let exe = Self.executable else {
            throw MemWallError(.missingDependency, "the memwall executable is not built next to the tests; run swift build first")
        }
        process.executableURL = exe
        process.arguments = ["rdma-serve"] + arguments
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        try process.run()
        var port: UInt16?
        let deadline = Date().addingTimeInterval(60)
        while port == nil, Date() < deadline {
            guard let line = Self.readLine(stdoutPipe, &buffered, deadline: deadline) else { break }
            let parts = line.split(separator: " ")
            if parts.first == "listening", parts.count > 1 { port = UInt16(parts[1]) }
        }
        guard let port else {
            process.terminate()
            throw MemWallError(.timedOut, "memwall rdma-serve did not report a port")
        }
        self.port = port
    }

    /// Next line of the server's output, or nil at end or after `seconds`.
    func nextLine(seconds: Double) -> String? {
        Self.readLine(stdoutPipe, &buffered, deadline: Date().addingTimeInterval(seconds))
    }

    private static func readLine(_ pipe: Pipe, _ buffered: inout String, deadline: Date) -> String? {
        let fd = pipe.fileHandleForReading.fileDescriptor
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
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { return nil }
            buffered += String(decoding: chunk[0 ..< n], as: UTF8.self)
        }
    }

    /// SIGKILL: the peer disappears without any goodbye.
    func kill() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Closing stdin asks the server to exit.
    func stop() {
        try? stdinPipe.fileHandleForWriting.close()
        process.waitUntilExit()
    }

    deinit { if process.isRunning { kill() } }
}

/// The two-process checks, run on the TCP emulation on the host and on RDMA in the lab.
enum TwoProcessChecks {
    /// - Parameter path: The path the peer must be reached on ("tcp-emulation", "intra-host", "rdma").
    static func run(client: any RemoteMemoryTransport, serveArguments: [String], path: String) async throws {
        let address = peerAddress(for: client)
        let serve = try ServeProcess(arguments: serveArguments + ["--address", address, "--export", "slot:8M:rw", "--export", "ro:64k:r", "--fill", "11"])
        defer { serve.stop() }
        let local = try MemoryRegion.allocate(byteCount: 8 << 20)
        try client.register(local)
        let peer = try client.connect(address: address, port: serve.port, timeout: .seconds(20))
        #expect(peer.path.name == path, "\(peer.path)")
        if case .intraHost(let pid, let mapped, let exports) = peer.path {
            #expect(pid == serve.process.processIdentifier)
            // rdma-serve exports shareable memory unless told otherwise.
            #expect(mapped == (serveArguments.contains("private") ? 0 : exports) && exports == 2, "\(peer.path)")
        }
        #expect(Set(peer.exports.map(\.name)) == ["slot", "ro"])
        let slot = try peer.segment(named: "slot")

        // READ what the other process filled in.
        try await client.transfer(.read, [TransferDescriptor(local: local, target: .remote(slot), length: slot.byteCount)])
        let expected = (0 ..< 4096).map { ServePatternMirror.byte($0, seed: 11) }
        #expect(local.withUnsafeBytes(offset: 0, length: 4096) { Array($0) } == expected)
        #expect(local.withUnsafeBytes(offset: slot.byteCount - 4096, length: 4096) { Array($0) }
                    == (slot.byteCount - 4096 ..< slot.byteCount).map { ServePatternMirror.byte($0, seed: 11) })

        // WRITE then READ back, over sizes and offsets, into the other process's memory.
        for (i, size) in [1, 4097, 65_536, 2 << 20].enumerated() {
            let remote = 1000 * i + 3
            fill(local, offset: 0, length: size, seed: 40 + i)
            try await client.transfer(.write, [TransferDescriptor(local: local, target: .remote(slot), targetOffset: Int64(remote), length: size)])
            let back = 4 << 20
            try await client.transfer(.read, [TransferDescriptor(local: local, localOffset: back, target: .remote(slot), targetOffset: Int64(remote), length: size)])
            #expect(firstMismatch(local, offset: back, length: size, seed: 40 + i) == nil, "size \(size)")
        }

        // A notification reaches the other process after its data.
        let ds = [TransferDescriptor(local: local, target: .remote(slot), length: 1 << 20)]
        try await client.post(try client.prepare(.write, ds), notify: 47_291).wait()
        var sawNote = false
        while let line = serve.nextLine(seconds: 20) {
            if line.hasPrefix("notification") && line.hasSuffix(" 47291") { sawNote = true; break }
        }
        #expect(sawNote)

        // The peer disappears (SIGKILL) in the middle of a stream of long transfers.
        // A transport that completes asynchronously has the kill land while a request
        // is pending; one that moves the bytes inside post (the intra-host path) has
        // it land from another thread while a post is copying.
        let big = (0 ..< 512).map {
            TransferDescriptor(local: local, localOffset: ($0 % 128) * 65_536, target: .remote(slot), targetOffset: Int64(($0 % 128) * 65_536), length: 65_536)
        }
        let prepared = try client.prepare(.write, big)
        var failure: MemWallError?
        let pid = serve.process.processIdentifier
        var killed = false
        var killer: WorkerThread?
        for round in 0 ..< 2000 where failure == nil {
            let req: TransferRequest
            do {
                req = try client.post(prepared)
            } catch {
                // The death was already noticed: posting is refused at once.
                failure = error
                break
            }
            if case .pending = req.poll(), !killed {
                serve.kill()
                killed = true
            } else if round == 2, !killed {
                // An OS thread, not a task: the posting loop may hold the only free one.
                killer = try WorkerThread(name: "killer") {
                    usleep(2000)
                    Glibc.kill(pid, SIGKILL)
                }
                killed = true
            }
            do { try await req.wait() } catch { failure = error }
            #expect(req.descriptorStatuses.allSatisfy { $0.isFinal })
        }
        killer?.join()
        serve.process.waitUntilExit()
        #expect(failure?.code == .disconnected || failure?.code == .timedOut, "got \(String(describing: failure))")
        // Later posts are refused at once (or fail), never hang.
        let late = await caughtAsync { try await client.transfer(.write, [big[0]]) }
        #expect(late != nil)

        // A new server process: reconnecting works.
        let again = try ServeProcess(arguments: serveArguments + ["--address", address, "--export", "slot:1M:rw"])
        defer { again.stop() }
        let peer2 = try client.connect(address: address, port: again.port, timeout: .seconds(20))
        fill(local, offset: 0, length: 65_536, seed: 77)
        let seg2 = try peer2.segment(named: "slot")
        try await client.transfer(.write, [TransferDescriptor(local: local, target: .remote(seg2), length: 65_536)])
        try await client.transfer(.read, [TransferDescriptor(local: local, localOffset: 1 << 20, target: .remote(seg2), length: 65_536)])
        #expect(firstMismatch(local, offset: 1 << 20, length: 65_536, seed: 77) == nil)
        // Asking for a name the new server never exported.
        #expect(caught { try peer2.segment(named: "ro") }?.code == .notFound)
    }
}

/// Mirror of `memwall rdma-serve --fill`'s pattern (Sources/memwall/RDMAServeCommand.swift).
enum ServePatternMirror {
    static func byte(_ i: Int, seed: Int) -> UInt8 { patternByte(i, seed: seed) }
}

@Suite("Two processes over the TCP emulation", .timeLimit(.minutes(3)),
       .enabled(if: ServeProcess.executable != nil, "needs the memwall executable built next to the tests (swift build)"))
struct TwoProcessTCPTests {
    @Test("conformance, notification, peer killed mid-transfer, reconnect")
    func twoProcesses() async throws {
        try await TwoProcessChecks.run(client: try TCPEmulationTransport(options: RemoteTransportOptions(operationTimeout: .seconds(10), intraHost: .off)),
                                       serveArguments: ["--transport", "tcp"], path: "tcp-emulation")
    }
}

@Suite("Two processes on the intra-host path", .timeLimit(.minutes(3)),
       .enabled(if: ServeProcess.executable != nil, "needs the memwall executable built next to the tests (swift build)"),
       .enabled(if: IntraHostSupport.unavailableReason == nil, "process_vm_readv is refused in this process (seccomp)"))
struct TwoProcessIntraHostTests {
    @Test("chosen automatically on one host (shared exports mapped); conformance, notification, peer killed mid-transfer, reconnect")
    func twoProcesses() async throws {
        let client = try TCPEmulationTransport(options: RemoteTransportOptions(operationTimeout: .seconds(10)))
        #expect(client.capabilities.peerPaths.map(\.name) == ["intra-host"])
        #expect(client.capabilities.peerPaths.first?.implementation.isHardware == true, "\(client.capabilities.peerPaths)")
        try await TwoProcessChecks.run(client: client, serveArguments: ["--transport", "tcp"], path: "intra-host")
    }

    @Test("exports in private memory: the same checks through process_vm_readv/writev")
    func privateMemory() async throws {
        let client = try TCPEmulationTransport(options: RemoteTransportOptions(operationTimeout: .seconds(10)))
        try await TwoProcessChecks.run(client: client, serveArguments: ["--transport", "tcp", "--memory", "private"], path: "intra-host")
    }

    @Test("a server started with --intra-host off is reached over TCP, and the label says why")
    func serverTurnedOff() async throws {
        let serve = try ServeProcess(arguments: ["--transport", "tcp", "--intra-host", "off", "--address", "127.0.0.1", "--export", "slot:1M:rw"])
        defer { serve.stop() }
        let client = try TCPEmulationTransport()
        let peer = try client.connect(address: "127.0.0.1", port: serve.port, timeout: .seconds(20))
        guard case .tcp(let why) = peer.path else { Issue.record("expected TCP, got \(peer.path)"); return }
        #expect(why.contains("does not offer"), "\(why)")
        #expect(peer.path.implementation.isEmulation)
        let local = try MemoryRegion.allocate(byteCount: 65_536)
        try client.register(local)
        fill(local, offset: 0, length: 65_536, seed: 8)
        let slot = try peer.segment(named: "slot")
        try await client.transfer(.write, [TransferDescriptor(local: local, target: .remote(slot), length: 65_536)])
        zero(local)
        try await client.transfer(.read, [TransferDescriptor(local: local, target: .remote(slot), length: 65_536)])
        #expect(firstMismatch(local, offset: 0, length: 65_536, seed: 8) == nil)
    }
}

@Suite("Two processes over RDMA on soft-RoCE", .enabled(if: inLab, "runs in the lab guest (make lab)"), .timeLimit(.minutes(5)))
struct TwoProcessRDMAInLab {
    @Test("conformance, notification, peer killed mid-transfer, reconnect")
    func twoProcesses() async throws {
        try await TwoProcessChecks.run(client: try makeRDMA(RemoteTransportOptions(operationTimeout: .seconds(30))),
                                       serveArguments: ["--transport", "rdma", "--device", labDevice, "--cm", labManager.rawValue], path: "rdma")
    }
}
