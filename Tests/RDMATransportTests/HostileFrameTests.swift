#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemWallCore
@testable import RDMATransport
import Testing
import Transport

/// A raw TCP peer that speaks (or abuses) the emulation's wire format.
private final class RawPeer {
    let fd: Int32

    /// Connects to 127.0.0.1:`port` and reads the listener's export table frame.
    init(port: UInt16) throws {
        fd = try SocketIO.makeStreamSocket()
        try SocketIO.connect(fd, to: try SocketAddress.ipv4("127.0.0.1", port: port), timeout: .seconds(10))
        SocketIO.setReceiveTimeout(fd, .seconds(20))
        let header = try read(FrameHeader.size)
        let h = header.withUnsafeBytes { FrameHeader(bytes: $0.baseAddress!) }
        #expect(h.kind == FrameHeader.Kind.exportTable.rawValue)
        _ = try read(Int(h.length))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func read(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        if count > 0, case .failure(let e) = out.withUnsafeMutableBytes({ SocketIO.readFully(.system, fd, $0.baseAddress!, count) }) {
            throw MemWallError(.disconnected, "raw peer read: \(e)")
        }
        return out
    }

    /// True once the listener closed this connection (read gives 0 or ECONNRESET), false if it answered.
    func listenerClosed() -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, 0)
        return n == 0 || (n < 0 && errno == ECONNRESET)
    }
}

private func frame(kind: UInt8, status: UInt8 = 0, key: UInt32 = 0, tag: UInt64 = 0, offset: UInt64 = 0, length: UInt64 = 0) -> [UInt8] {
    var h = FrameHeader(kind: .write)
    h.kind = kind
    h.status = status
    h.key = key
    h.tag = tag
    h.offset = offset
    h.length = length
    var out = [UInt8](repeating: 0, count: FrameHeader.size)
    out.withUnsafeMutableBytes { h.store(to: $0.baseAddress!) }
    return out
}

@Suite("Hostile frames against a live listener", .timeLimit(.minutes(3)),
       .enabled(if: ServeProcess.executable != nil, "needs the memwall executable built next to the tests (swift build)"))
struct HostileFrameTests {
    @Test("hostile frames from raw sockets close only their own connection; `memwall rdma-serve` keeps serving a well-behaved peer")
    func listenerSurvives() async throws {
        let serve = try ServeProcess(arguments: ["--transport", "tcp", "--address", "127.0.0.1", "--export", "slot:1M:rw"])
        defer { serve.stop() }
        let hostile: [(String, [UInt8])] = [
            // The frame that killed the process: a write of 2^64-1 bytes for a key nobody exported.
            ("write of 2^64-1 bytes, unknown key", frame(kind: 2, key: 0xDEAD_BEEF, tag: 1, length: .max)),
            ("read of 2^64-1 bytes", frame(kind: 3, key: 1, tag: 2, length: .max)),
            ("write past 1 TiB at offset 2^64-1", frame(kind: 2, key: 1, tag: 3, offset: .max, length: 1 << 41)),
            ("unknown kind", frame(kind: 99, tag: 4)),
            ("answer kind sent to the listener", frame(kind: 5, tag: 5)),
            ("request with a status", frame(kind: 3, status: 2, key: 1, tag: 6, length: 8)),
            ("notify with a payload", frame(kind: 4, key: 1, length: 10)),
            ("intra-host probe with a payload", frame(kind: 7, tag: 1, offset: 2, length: 10)),
            ("intra-host probe with a key", frame(kind: 7, key: 3, tag: 1, offset: 2)),
            ("intra-host offer sent to the listener", frame(kind: 8, length: 60)),
            ("garbage", (0 ..< 64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }),
        ]
        for (what, bytes) in hostile {
            let peer = try RawPeer(port: serve.port)
            peer.send(bytes)
            #expect(peer.listenerClosed(), "the listener kept a connection that sent: \(what)")
        }
        // Truncated header: half a frame, then the peer goes away.
        do {
            let peer = try RawPeer(port: serve.port)
            peer.send(Array(frame(kind: 2, key: 1, length: 8).prefix(16)))
        }
        // A second intra-host probe on one connection: the first is answered, the second closes it.
        do {
            let peer = try RawPeer(port: serve.port)
            peer.send(frame(kind: 7, tag: 1, offset: 2))
            let head = try peer.read(FrameHeader.size)
            let h = head.withUnsafeBytes { FrameHeader(bytes: $0.baseAddress!) }
            #expect(h.kind == FrameHeader.Kind.intraHostOffer.rawValue)
            let offer = try peer.read(Int(h.length))
            #expect(try offer.withUnsafeBytes { try IntraHostOffer.decode($0, peer: "rdma-serve") }.identity.pid == serve.process.processIdentifier)
            peer.send(frame(kind: 7, tag: 3, offset: 4))
            #expect(peer.listenerClosed(), "the listener answered a second intra-host probe")
        }
        // A refused write's payload is still read off the stream, and the answer says why.
        do {
            let peer = try RawPeer(port: serve.port)
            peer.send(frame(kind: 2, key: 0xDEAD_BEEF, tag: 9, length: 4096) + [UInt8](repeating: 7, count: 4096))
            let answer = try peer.read(FrameHeader.size)
            let decoded = try answer.withUnsafeBytes { try FrameHeader.decodeAnswer($0) }
            #expect(decoded == .writeDone(tag: 9, status: .unknownKey))
        }

        // The server process is alive and serves a well-behaved peer: write, read back, compare.
        #expect(serve.process.isRunning)
        // Over TCP, so the listener's own serving is what is checked.
        let client = try TCPEmulationTransport(options: RemoteTransportOptions(operationTimeout: .seconds(10), intraHost: .off))
        let local = try MemoryRegion.allocate(byteCount: 1 << 20)
        try client.register(local)
        let remote = try client.connect(address: "127.0.0.1", port: serve.port, timeout: .seconds(10))
        let slot = try remote.segment(named: "slot")
        fill(local, offset: 0, length: 65_536, seed: 5)
        try await client.transfer(.write, [TransferDescriptor(local: local, target: .remote(slot), targetOffset: 100, length: 65_536)])
        try await client.transfer(.read, [TransferDescriptor(local: local, localOffset: 512 << 10, target: .remote(slot), targetOffset: 100, length: 65_536)])
        #expect(firstMismatch(local, offset: 512 << 10, length: 65_536, seed: 5) == nil)
    }
}

/// The decoders themselves: every 32 bytes decode or give an error that names the value.
@Suite struct FrameDecoderTests {
    @Test("a length over 1 TiB is an error naming it and the bound, in both directions")
    func hugeLength() throws {
        let bytes = frame(kind: 2, key: 9, length: .max)
        let e = try #require(bytes.withUnsafeBytes { b in Result { () throws(MemWallError) in try FrameHeader.decodeRequest(b) } }.failure)
        #expect(e.code == .malformedInput)
        #expect(e.message.contains("18446744073709551615") && e.message.contains("\(FrameHeader.maximumLength)"), "\(e.message)")
        let answer = frame(kind: 6, tag: 1, length: .max)
        #expect(answer.withUnsafeBytes { b in Result { () throws(MemWallError) in try FrameHeader.decodeAnswer(b) } }.failure != nil)
    }

    @Test("requests and answers are told apart; statuses and payloads are checked")
    func kindsAndStatuses() throws {
        func request(_ b: [UInt8]) -> FrameHeader.Request? { try? b.withUnsafeBytes { try FrameHeader.decodeRequest($0) } }
        func answer(_ b: [UInt8]) -> FrameHeader.Answer? { try? b.withUnsafeBytes { try FrameHeader.decodeAnswer($0) } }
        #expect(request(frame(kind: 2, key: 3, tag: 4, offset: 5, length: 6)) == .write(key: 3, tag: 4, offset: 5, length: 6))
        #expect(request(frame(kind: 4, key: 8)) == .notify(8))
        #expect(request(frame(kind: 7, tag: 5, offset: 6)) == .intraHostProbe(challenge0: 5, challenge1: 6))
        #expect(request(frame(kind: 7, tag: 5, offset: 6, length: 1)) == nil, "a probe carries no payload")
        #expect(request(frame(kind: 8, length: 52)) == nil, "an offer is an answer, never a request")
        #expect(answer(frame(kind: 8, length: 52)) == nil, "an offer comes only during connect, never as a data-phase answer")
        #expect(request(frame(kind: 5, tag: 1)) == nil)
        #expect(request(Array(frame(kind: 2).prefix(31))) == nil)
        #expect(answer(frame(kind: 6, status: 0, tag: 2, length: 16)) == .readData(tag: 2, status: .ok, length: 16))
        #expect(answer(frame(kind: 6, status: 1, tag: 2, length: 16)) == nil, "a refused read carries no payload")
        #expect(answer(frame(kind: 5, status: 9, tag: 2)) == nil, "status 9 does not exist")
        #expect(answer(frame(kind: 2, tag: 2)) == nil)
    }

    @Test("export tables: strict decoding, and decode ∘ encode is the identity")
    func exportTable() throws {
        let infos = [ExportedRegionInfo(name: "slot", byteCount: 8 << 20, access: [.read, .write], address: 4096, key: 1),
                     ExportedRegionInfo(name: "ro", byteCount: 1, access: .read, address: 0, key: 2)]
        let bytes = ExportTableCodec.encode(infos)
        #expect(try bytes.withUnsafeBytes { try ExportTableCodec.decode($0, peer: "p") } == infos)
        func refused(_ b: [UInt8]) -> String? {
            b.withUnsafeBytes { p in Result { () throws(MemWallError) in try ExportTableCodec.decode(p, peer: "p") } }.failure?.message
        }
        #expect(refused(bytes + [0])?.contains("1 bytes follow the last entry") == true)
        #expect(refused([0xFF, 0xFF, 0xFF, 0xFF])?.contains("4294967295 entries announced") == true)
        let dup = ExportTableCodec.encode([infos[1], infos[1]])
        #expect(refused(dup)?.contains("'ro' appears twice") == true)
        var noAccess = ExportTableCodec.encode([infos[1]])
        noAccess[noAccess.count - 1] = 0
        #expect(refused(noAccess)?.contains("access bits 0") == true)
    }
}

private extension Result {
    var failure: Failure? { if case .failure(let e) = self { e } else { nil } }
}

/// The connector's side: a hostile listener (a raw socket in this process) that
/// answers a write with read data must not get its bytes into the write's source buffer.
@Suite("Hostile listener against the connector", .timeLimit(.minutes(1)))
struct HostileListenerTests {
    @Test("read data sent in answer to a write is a protocol error; the source buffer is untouched")
    func readDataForAWrite() async throws {
        let listenFD = try SocketIO.makeStreamSocket()
        defer { close(listenFD) }
        var sa = try SocketAddress.ipv4("127.0.0.1", port: 0)
        let bound = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listenFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(bound == 0 && listen(listenFD, 1) == 0)
        let port = UInt16(bigEndian: SocketAddress.local(listenFD).sin_port)
        let payload = 4096
        // The hostile side: export table, then answer the first request with read data.
        let server = Thread {
            let c = accept(listenFD, nil, nil)
            guard c >= 0 else { return }
            defer { close(c) }
            let table = ExportTableCodec.encode([ExportedRegionInfo(name: "slot", byteCount: 1 << 20, access: [.read, .write], address: 0, key: 1)])
            _ = table.withUnsafeBytes { t in
                frame(kind: 1, length: UInt64(table.count)).withUnsafeBytes { h in SocketIO.writeFrame(.system, c, header: h, payload: t) }
            }
            var header = [UInt8](repeating: 0, count: FrameHeader.size)
            guard case .success = header.withUnsafeMutableBytes({ SocketIO.readFully(.system, c, $0.baseAddress!, FrameHeader.size) }),
                  let request = try? header.withUnsafeBytes({ try FrameHeader.decodeRequest($0) }),
                  case .write(_, let tag, _, let length) = request else { return }
            _ = SocketIO.discard(.system, c, length)
            let evil = [UInt8](repeating: 0xEE, count: length)
            _ = evil.withUnsafeBytes { e in
                frame(kind: 6, tag: tag, length: UInt64(length)).withUnsafeBytes { h in SocketIO.writeFrame(.system, c, header: h, payload: e) }
            }
            var byte: UInt8 = 0
            _ = recv(c, &byte, 1, 0)   // until the connector closes
        }
        server.start()

        let client = try TCPEmulationTransport(options: RemoteTransportOptions(operationTimeout: .seconds(10)))
        let local = try MemoryRegion.allocate(byteCount: 1 << 20)
        try client.register(local)
        fill(local, offset: 0, length: payload, seed: 3)
        let peer = try client.connect(address: "127.0.0.1", port: port, timeout: .seconds(10))
        let slot = try peer.segment(named: "slot")
        let failure = await caughtAsync {
            try await client.transfer(.write, [TransferDescriptor(local: local, target: .remote(slot), length: payload)])
        }
        #expect(failure?.code == .malformedInput, "got \(String(describing: failure))")
        #expect(firstMismatch(local, offset: 0, length: payload, seed: 3) == nil, "the listener's bytes landed in the write's source")
    }
}
