#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemWallCore
@testable import RDMATransport
import Synchronization
import Testing
import Transport

/// What a test's offer is built from: the listener's region and where the answer to the challenge goes.
private struct OfferContext: Sendable {
    let region: MemoryRegion
    /// 4 KiB whose first 16 bytes hold the answer (or whatever a forger puts there).
    let answer: MemoryRegion

    /// An offer of `identity`, with the region exported as "slot" (key 1) at its real address,
    /// and `shared` entries as given.
    func offer(identity: HostIdentity, shared: [IntraHostOffer.SharedExport] = []) -> [UInt8] {
        let export = ExportedRegionInfo(name: "slot", byteCount: region.byteCount, access: [.read, .write],
                                        address: UInt64(UInt(bitPattern: region.baseAddress)), key: 1)
        return IntraHostOffer(identity: identity, challengeAddress: UInt64(UInt(bitPattern: answer.baseAddress)), exports: [export],
                              shared: shared).encode()
    }

    /// Stores the correct answer to a challenge.
    func storeAnswer(_ c0: UInt64, _ c1: UInt64) {
        let (a0, a1) = IntraHostChallenge.answer(c0, c1)
        answer.baseAddress.storeBytes(of: a0, as: UInt64.self)
        answer.baseAddress.storeBytes(of: a1, toByteOffset: 8, as: UInt64.self)
    }

    /// Stores the challenge itself where the answer belongs.
    func storeChallenge(_ c0: UInt64, _ c1: UInt64) {
        answer.baseAddress.storeBytes(of: c0.littleEndian, as: UInt64.self)
        answer.baseAddress.storeBytes(of: c1.littleEndian, toByteOffset: 8, as: UInt64.self)
    }
}

/// A listener in this process that offers the intra-host path and answers the
/// probe with an offer the test builds from the challenge: a real one, or a forged one.
private final class OfferingListener: Sendable {
    let fd: Int32
    let port: UInt16
    let context: OfferContext
    private let thread: WorkerThread

    /// - Parameters:
    ///   - region: What the offer exports as "slot" (1 MiB of private memory by default).
    ///   - makeOffer: Given the challenge, the offer to send (as bytes).
    init(region: MemoryRegion? = nil, makeOffer: @escaping @Sendable (OfferContext, UInt64, UInt64) -> [UInt8]) throws {
        let context = OfferContext(region: try region ?? MemoryRegion.allocate(byteCount: 1 << 20), answer: try MemoryRegion.allocate(byteCount: 4096))
        let fd = try SocketIO.makeStreamSocket()
        var sa = try SocketAddress.ipv4("127.0.0.1", port: 0)
        let bound = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 1) == 0 else {
            close(fd)
            throw MemWallError(.systemCall, "the test listener cannot listen")
        }
        self.fd = fd
        self.port = UInt16(bigEndian: SocketAddress.local(fd).sin_port)
        self.context = context
        // Serves one connection; detached when the listener goes (WorkerThread's deinit).
        self.thread = try WorkerThread(name: "offering") {
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            defer { close(c) }
            let table = ExportTableCodec.encode([ExportedRegionInfo(name: "slot", byteCount: 1 << 20, access: [.read, .write], address: 0, key: 1)])
            let h = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
            defer { h.deallocate() }
            FrameHeader(kind: .exportTable, key: FrameHeader.offersIntraHost, length: UInt64(table.count)).store(to: h)
            _ = table.withUnsafeBytes { SocketIO.writeFrame(.system, c, header: UnsafeRawBufferPointer(start: h, count: FrameHeader.size), payload: $0) }
            guard case .success = SocketIO.readFully(.system, c, h, FrameHeader.size),
                  case .intraHostProbe(let c0, let c1)? = try? FrameHeader.decodeRequest(UnsafeRawBufferPointer(start: h, count: FrameHeader.size))
            else { return }
            let offer = makeOffer(context, c0, c1)
            FrameHeader(kind: .intraHostOffer, length: UInt64(offer.count)).store(to: h)
            _ = offer.withUnsafeBytes { SocketIO.writeFrame(.system, c, header: UnsafeRawBufferPointer(start: h, count: FrameHeader.size), payload: $0) }
            var byte: UInt8 = 0
            _ = recv(c, &byte, 1, 0)   // until the connector closes
        }
    }

    deinit {
        shutdown(fd, SocketIO.shutdownBoth)
        close(fd)
    }
}

@Suite("The intra-host path: proof of identity and fallbacks", .timeLimit(.minutes(2)),
       .enabled(if: IntraHostSupport.unavailableReason == nil, "process_vm_readv is refused in this process (seccomp)"))
struct IntraHostTests {
    /// Connects a fresh client to a listener whose offer `makeOffer` builds.
    private func connect(funnel: SyscallFunnel = .system, region: MemoryRegion? = nil,
                         _ makeOffer: @escaping @Sendable (OfferContext, UInt64, UInt64) -> [UInt8]) throws -> (RemotePeer, OfferingListener, TCPEmulationTransport) {
        let listener = try OfferingListener(region: region, makeOffer: makeOffer)
        let client = try TCPEmulationTransport(funnel: funnel)
        let peer = try client.connect(address: "127.0.0.1", port: listener.port, timeout: .seconds(10))
        return (peer, listener, client)
    }

    private func declined(_ peer: RemotePeer) -> String? {
        if case .tcp(let why) = peer.path { return why }
        return nil
    }

    /// `slot` with some fields changed, as a caller forging a segment would build it.
    private func forged(_ slot: RemoteSegment, byteCount: Int? = nil, address: UInt64? = nil, key: UInt32? = nil) -> RemoteSegment {
        RemoteSegment(peer: slot.peer, name: slot.name, byteCount: byteCount ?? slot.byteCount, access: slot.access,
                      remoteAddress: address ?? slot.remoteAddress, remoteKey: key ?? slot.remoteKey, connection: slot.connection)
    }

    /// Writes 64 KiB of pattern `seed` to "slot" at `offset` and checks the bytes landed in the listener's region.
    private func writeLands(_ peer: RemotePeer, _ client: TCPEmulationTransport, _ listener: OfferingListener,
                            offset: Int, seed: Int) async throws -> (MemoryRegion, RemoteSegment) {
        let local = try MemoryRegion.allocate(byteCount: 65_536)
        try client.register(local)
        fill(local, offset: 0, length: 65_536, seed: seed)
        let slot = try peer.segment(named: "slot")
        try await client.transfer(.write, [TransferDescriptor(local: local, target: .remote(slot), targetOffset: Int64(offset), length: 65_536)])
        #expect(firstMismatch(listener.context.region, offset: offset, length: 65_536, seed: seed) == nil)
        return (local, slot)
    }

    @Test("a listener that proves it is this process gets the path, and bytes land in its memory")
    func honestOffer() async throws {
        let me = try HostIdentity.current()
        let (peer, listener, client) = try connect { l, c0, c1 in
            l.storeAnswer(c0, c1)
            return l.offer(identity: me)
        }
        #expect(peer.path == .intraHost(pid: getpid(), mapped: 0, exports: 1))
        #expect(peer.path.implementation.isHardware)
        let (local, slot) = try await writeLands(peer, client, listener, offset: 4096, seed: 21)
        // The peer's table is the authority: a segment forged longer, moved elsewhere, or with a
        // key the peer never gave is refused before any byte moves.
        for bad in [forged(slot, byteCount: slot.byteCount * 4), forged(slot, address: slot.remoteAddress &+ 4096), forged(slot, key: 2)] {
            let offset = bad.byteCount > slot.byteCount ? Int64(slot.byteCount) : 0
            let e = caught { try client.prepare(.write, [TransferDescriptor(local: local, target: .remote(bad), targetOffset: offset, length: 4096)]) }
            #expect(e?.code == .remoteAccess, "\(bad)")
        }
    }

    @Test("an export in a sealed memfd is mapped and copied with memcpy; the bytes are the peer's")
    func sharedExportMapped() async throws {
        let me = try HostIdentity.current()
        let shared = try MemoryRegion.allocateShared(byteCount: 1 << 20)
        let fd = try #require(shared.sharedFile)
        let (peer, listener, client) = try connect(region: shared) { l, c0, c1 in
            l.storeAnswer(c0, c1)
            return l.offer(identity: me, shared: [.init(key: 1, fd: fd, fileOffset: 0)])
        }
        #expect(peer.path == .intraHost(pid: getpid(), mapped: 1, exports: 1))
        #expect(peer.path.description.contains("mapped shared"))
        // The listener's own mapping of the memfd sees the bytes: one memory, two mappings.
        let (local, slot) = try await writeLands(peer, client, listener, offset: 8192, seed: 31)
        fill(listener.context.region, offset: 0, length: 4096, seed: 32)
        try await client.transfer(.read, [TransferDescriptor(local: local, target: .remote(slot), length: 4096)])
        #expect(firstMismatch(local, offset: 0, length: 4096, seed: 32) == nil)
        // Bounds are still the peer's table's.
        let longer = forged(slot, byteCount: slot.byteCount * 2)
        #expect(caught { try client.prepare(.write, [TransferDescriptor(local: local, target: .remote(longer), targetOffset: Int64(slot.byteCount), length: 16)]) }?.code == .remoteAccess)
    }

    @Test("a shared entry naming no memfd, or one shorter than the export, is not mapped: process_vm serves it")
    func sharedEntryRefused() async throws {
        let me = try HostIdentity.current()
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        defer { close(pipeFDs[0]); close(pipeFDs[1]) }
        let short = try MemoryRegion.allocateShared(byteCount: 4096)
        let shortFD = try #require(short.sharedFile)
        for (what, fd) in [("a pipe", pipeFDs[0]), ("a memfd of 4 KiB for an export of 1 MiB", shortFD), ("no descriptor at all", Int32(99_999))] {
            let (peer, listener, client) = try connect { l, c0, c1 in
                l.storeAnswer(c0, c1)
                return l.offer(identity: me, shared: [.init(key: 1, fd: fd, fileOffset: 0)])
            }
            #expect(peer.path == .intraHost(pid: getpid(), mapped: 0, exports: 1), "\(what): \(peer.path)")
            _ = try await writeLands(peer, client, listener, offset: 0, seed: 33)
        }
        withExtendedLifetime(short) {}
    }

    @Test("a forged boot id: another host, so TCP")
    func forgedBootID() throws {
        var forged = try HostIdentity.current()
        forged.bootID[0] ^= 0xFF
        let (peer, _, _) = try connect { [forged] l, c0, c1 in
            l.storeAnswer(c0, c1)
            return l.offer(identity: forged)
        }
        let why = try #require(declined(peer), "\(peer.path)")
        #expect(why.contains("another host"), "\(why)")
        #expect(peer.path.implementation.isEmulation)
    }

    @Test("a forged pid namespace: TCP")
    func forgedPidNamespace() throws {
        var forged = try HostIdentity.current()
        forged.pidNamespaceInode &+= 1
        let (peer, _, _) = try connect { [forged] l, c0, c1 in
            l.storeAnswer(c0, c1)
            return l.offer(identity: forged)
        }
        #expect(declined(peer)?.contains("pid namespace") == true, "\(peer.path)")
    }

    @Test("a forged pid (another process of this host): the challenge is not there, so TCP")
    func forgedPid() throws {
        // The parent of this test process: alive, on this host, in this pid namespace, and
        // reachable by process_vm_readv as root; it holds no answer at any address the listener can name.
        var forged = try HostIdentity.current()
        forged.pid = getppid()
        let (peer, _, _) = try connect { [forged] l, c0, c1 in
            l.storeAnswer(c0, c1)
            return l.offer(identity: forged)
        }
        let why = try #require(declined(peer), "\(peer.path)")
        #expect(why.contains("pid \(getppid())"), "\(why)")
    }

    @Test("a listener that stores the challenge itself, not its answer, is refused")
    func echoedChallenge() throws {
        let me = try HostIdentity.current()
        let (peer, _, _) = try connect { l, c0, c1 in
            l.storeChallenge(c0, c1)
            return l.offer(identity: me)
        }
        #expect(declined(peer)?.contains("does not hold the answer") == true, "\(peer.path)")
    }

    @Test("the kernel refusing process_vm_readv (EPERM) falls back to TCP, and the label says what would allow it")
    func refusedByKernel() throws {
        let faults = FaultInjector([.init("process_vm_readv", .error(.notPermitted), times: 1)])
        let me = try HostIdentity.current()
        let (peer, _, _) = try connect(funnel: SyscallFunnel(faults: faults)) { l, c0, c1 in
            l.storeAnswer(c0, c1)
            return l.offer(identity: me)
        }
        #expect(faults.firedCount("process_vm_readv") == 1)
        let why = try #require(declined(peer), "\(peer.path)")
        #expect(why.contains("EPERM") && why.contains("grant-same-user"), "\(why)")
    }

    @Test("a client with intra-host off never asks, whatever the listener offers")
    func clientTurnedOff() throws {
        let me = try HostIdentity.current()
        let listener = try OfferingListener { l, c0, c1 in
            l.storeAnswer(c0, c1)
            return l.offer(identity: me)
        }
        let client = try TCPEmulationTransport(options: RemoteTransportOptions(intraHost: .off))
        let peer = try client.connect(address: "127.0.0.1", port: listener.port, timeout: .seconds(10))
        #expect(declined(peer)?.contains("turned off on this side") == true, "\(peer.path)")
        #expect(client.capabilities.peerPaths.first?.implementation.isHardware == false)
    }

    @Test("a malformed offer fails the connect with malformed-input")
    func malformedOffer() throws {
        let me = try HostIdentity.current()
        let listener = try OfferingListener { l, c0, c1 in
            l.storeAnswer(c0, c1)
            var bytes = l.offer(identity: me)
            bytes[0] ^= 0xFF   // the magic
            return bytes
        }
        let client = try TCPEmulationTransport()
        let e = caught { try client.connect(address: "127.0.0.1", port: listener.port, timeout: .seconds(10)) }
        #expect(e?.code == .malformedInput)
        #expect(e?.message.contains("magic") == true, "\(String(describing: e))")
    }

    @Test("in one process, a listener and its peer: writes, reads, notifications, and deregistration held while revealed")
    func inProcessRoundTrip() async throws {
        let server = try TCPEmulationTransport()
        let client = try TCPEmulationTransport()
        let p = try RemotePair.make(server: server, client: client)
        #expect(p.peer.path == .intraHost(pid: getpid(), mapped: 0, exports: 2))
        try await RemoteConformance.roundTrip(p)
        try await RemoteConformance.descriptorLists(p)
        try await RemoteConformance.notificationAfterData(p)
        try await RemoteConformance.boundsAndPermissions(p, forgedKeyKillsConnection: false)
        #expect(try await RemoteConformance.forgedKey(p)?.code == .remoteAccess)
        // Unexported, but the connected peer still knows where it is: deregistration waits for it to leave.
        try server.unexport("ro")
        #expect(caught { try server.deregister(p.readOnlyRegion) }?.message.contains("intra-host") == true)
        p.peer.disconnect()
        var freed = false
        for _ in 0 ..< 200 where !freed {
            freed = (try? server.deregister(p.readOnlyRegion)) != nil
            if !freed { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(freed, "the region stayed held after the peer disconnected")
    }
}

@Suite struct IntraHostOfferCodecTests {
    private func refused(_ b: [UInt8]) -> String? {
        b.withUnsafeBytes { p -> String? in
            do throws(MemWallError) { _ = try IntraHostOffer.decode(p, peer: "p"); return nil } catch { return error.message }
        }
    }

    private let sample = IntraHostOffer(
        identity: HostIdentity(bootID: Array(1 ... 16), pidNamespaceDevice: 4, pidNamespaceInode: 4_026_531_836, pid: 4242),
        challengeAddress: 0x7F00_0000_1000,
        exports: [ExportedRegionInfo(name: "slot", byteCount: 8 << 20, access: [.read, .write], address: 0x7F00_0010_0000, key: 1),
                  ExportedRegionInfo(name: "ro", byteCount: 4096, access: .read, address: 0x7F00_0020_0000, key: 2)],
        shared: [.init(key: 2, fd: 7, fileOffset: 4096)])

    @Test("decode ∘ encode is the identity")
    func roundTrip() throws {
        let bytes = sample.encode()
        #expect(bytes.count == IntraHostOffer.headSize + ExportTableCodec.encode(sample.exports).count + 4 + IntraHostOffer.sharedEntrySize)
        #expect(try bytes.withUnsafeBytes { try IntraHostOffer.decode($0, peer: "p") } == sample)
    }

    @Test("every field is bounded: each bad value is refused with its name")
    func refusals() {
        let good = sample.encode()
        #expect(refused(Array(good.prefix(IntraHostOffer.headSize - 1)))?.contains("valid are \(IntraHostOffer.headSize)") == true)
        var pid0 = sample; pid0.identity.pid = 0
        #expect(refused(pid0.encode())?.contains("pid 0") == true)
        var pidHuge = sample; pidHuge.identity.pid = IntraHostOffer.maximumPID + 1
        #expect(refused(pidHuge.encode())?.contains("pid \(IntraHostOffer.maximumPID + 1)") == true)
        var noChallenge = sample; noChallenge.challengeAddress = 0
        #expect(refused(noChallenge.encode())?.contains("challenge address 0") == true)
        var wraps = sample; wraps.challengeAddress = .max - 3
        #expect(refused(wraps.encode())?.contains("challenge address") == true)
        #expect(refused(good + [0])?.contains("announced") == true)
        var atZero = sample; atZero.exports[0].address = 0
        #expect(refused(atZero.encode())?.contains("address 0") == true)
        var twoKeys = sample
        twoKeys.exports.append(ExportedRegionInfo(name: "other", byteCount: 4096, access: .read, address: 0x10_0000, key: 1))
        #expect(refused(twoKeys.encode())?.contains("names two exports") == true)
        var badTable = good
        badTable[IntraHostOffer.headSize] = 0xFF   // the table's entry count
        #expect(refused(badTable)?.contains("export table") == true)
        var unknownKey = sample; unknownKey.shared[0].key = 9
        #expect(refused(unknownKey.encode())?.contains("no export has") == true)
        var twice = sample; twice.shared.append(twice.shared[0])
        #expect(refused(twice.encode())?.contains("an earlier entry named") == true)
        var negative = sample; negative.shared[0].fd = -1
        #expect(refused(negative.encode())?.contains("fd -1") == true)
        var far = sample; far.shared[0].fileOffset = UInt64(Int64.max)
        #expect(refused(far.encode())?.contains("past 2^63") == true)
        #expect(refused(Array(good.dropLast()))?.contains("shared entries announced") == true)
    }

    @Test("boot ids parse from /proc's text form only")
    func bootID() throws {
        let text = Array("0f2128d5-b241-4147-885d-27a4b43572bf\n".utf8)
        #expect(HostIdentity.parseBootID(text)?.count == 16)
        #expect(HostIdentity.parseBootID(text)?.first == 0x0F)
        #expect(HostIdentity.parseBootID(Array("0f2128d5".utf8)) == nil)
        #expect(HostIdentity.parseBootID(Array("zz2128d5-b241-4147-885d-27a4b43572bf".utf8)) == nil)
        #expect(HostIdentity.parseBootID(Array("0f2128d5-b241-4147-885d-27a4b43572bf00".utf8)) == nil)
        let me = try HostIdentity.current()
        #expect(me.pid == getpid() && me.mismatch(with: me) == nil)
    }
}
