#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import MemWallCore
import Transport

/// The connecting side's intra-host path to one exporting process: its pid, a
/// pidfd that tells whether that very process still lives, and the export
/// table it announced with addresses in its memory.
///
/// Exports that live in a sealed memfd of the peer (regions from
/// ``MemoryRegion/allocateShared(byteCount:placement:)``) are mapped here
/// (`pidfd_getfd`, `mmap`): their bytes move with plain loads and stores, no
/// system call at all. Every other export moves with
/// `process_vm_readv`/`process_vm_writev`: one copy by the kernel between the
/// two address spaces. Either way the copy runs on the posting thread, with no
/// socket and no thread of the exporting process involved. The TCP connection
/// stays for notifications and for noticing the peer's end.
///
/// The kernel checks only ptrace access, not export bounds: this side checks
/// every descriptor against the table the peer sent (never against a segment
/// a caller built), so an honest client touches nothing that was not exported.
final class IntraHostChannel: Sendable {
    /// The exporting process, in this side's pid namespace (the same as the peer's).
    let pid: Int32
    /// Bound to the process that was verified: readable once it has exited, so a
    /// recycled pid is never written to.
    private let pidfd: Int32
    /// Key → export, addresses in the peer's memory; fixed for the connection's life.
    private let exports: [UInt32: ExportedRegionInfo]
    private let funnel: SyscallFunnel
    private let peerName: String
    /// Key → where that export is mapped in this process, for the exports that are.
    private let mappings: [UInt32: Mapping]

    /// One export of the peer mapped here (shared with the peer's memfd).
    struct Mapping: Sendable {
        /// Byte 0 of the export in this process.
        let exportBase: UInt
        /// What `mmap` returned and its length (page-rounded), for `munmap`.
        let start: UInt
        let length: Int
    }

    /// Exports mapped here, of ``exportCount``.
    var mappedCount: Int { mappings.count }
    /// Exports the peer announced.
    var exportCount: Int { exports.count }

    /// Most iovec pairs per system call (`UIO_MAXIOV`).
    static let maximumBatch = 1024

    private init(pid: Int32, pidfd: Int32, exports: [ExportedRegionInfo], mappings: [UInt32: Mapping], funnel: SyscallFunnel, peerName: String) {
        self.pid = pid
        self.pidfd = pidfd
        self.exports = Dictionary(exports.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        self.mappings = mappings
        self.funnel = funnel
        self.peerName = peerName
    }

    deinit {
        for m in mappings.values { munmap(UnsafeMutableRawPointer(bitPattern: m.start), m.length) }
        Glibc.close(pidfd)
    }

    // MARK: Set-up

    /// The outcome of asking a listener for the intra-host path.
    enum Negotiation {
        /// Taken: the channel, and the export table to use (with the peer's addresses).
        case established(IntraHostChannel, [ExportedRegionInfo])
        /// Not taken; the TCP path serves this peer, for this reason.
        case declined(String)
    }

    /// Asks the listener on `fd` (which flagged the offer in its export-table
    /// frame) for the path, checks that it runs on this host and in this pid
    /// namespace, and proves its pid by reading the challenge's answer from it.
    /// Runs during connect, before the connection's threads start.
    /// - Throws: `malformedInput` when the listener breaks the protocol
    ///   (the stream cannot be trusted after that), `disconnected`, `timedOut`.
    static func negotiate(fd: Int32, funnel: SyscallFunnel, peer: String, timeout: Duration) throws(MemWallError) -> Negotiation {
        let own: HostIdentity
        do throws(MemWallError) { own = try HostIdentity.current() } catch {
            return .declined("this process cannot read its own host identity (\(error.message))")
        }
        var generator = SystemRandomNumberGenerator()
        let c0 = generator.next() as UInt64
        let c1 = generator.next() as UInt64
        let header = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
        defer { header.deallocate() }
        FrameHeader(kind: .intraHostProbe, tag: c0, offset: c1).store(to: header)
        if case .failure(let e) = SocketIO.writeFrame(funnel, fd, header: UnsafeRawBufferPointer(start: header, count: FrameHeader.size), payload: nil) {
            throw MemWallError(.disconnected, "\(peer) closed the connection while the intra-host path was set up", function: "writev", errno: e)
        }
        switch SocketIO.readFully(funnel, fd, header, FrameHeader.size) {
        case .success: break
        case .failure(let e) where e.errno == .wouldBlock:
            throw MemWallError(.timedOut, "\(peer) offered the intra-host path but did not answer the probe within \(timeout)")
        case .failure(let e):
            throw MemWallError(.disconnected, "\(peer) closed the connection instead of answering the intra-host probe", function: "read", errno: e.errno)
        }
        let h = FrameHeader(bytes: header)
        guard h.kind == FrameHeader.Kind.intraHostOffer.rawValue, h.status == 0, h.length <= UInt64(IntraHostOffer.maximumBytes) else {
            throw MemWallError(.malformedInput,
                "\(peer) answered the intra-host probe with frame kind \(h.kind), status \(h.status), \(h.length) bytes; expected kind \(FrameHeader.Kind.intraHostOffer.rawValue), status 0, at most \(IntraHostOffer.maximumBytes) bytes")
        }
        let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(h.length), alignment: 8)
        defer { payload.deallocate() }
        if h.length > 0, case .failure(let e) = SocketIO.readFully(funnel, fd, payload.baseAddress.unsafelyUnwrapped, Int(h.length)) {
            throw MemWallError(.disconnected, "\(peer) closed the connection while sending its intra-host offer", function: "read", errno: e.errno)
        }
        let offer = try IntraHostOffer.decode(UnsafeRawBufferPointer(payload), peer: peer)
        if let why = own.mismatch(with: offer.identity) { return .declined(why) }
        return verify(offer, challenge: (c0, c1), funnel: funnel, peer: peer)
    }

    /// Opens a pidfd on the announced pid, reads the challenge's answer from that
    /// process, and checks the process still lives, in that order: whatever
    /// answered is then the process the pidfd holds.
    private static func verify(_ offer: IntraHostOffer, challenge: (UInt64, UInt64), funnel: SyscallFunnel,
                               peer: String) -> Negotiation {
        let pid = offer.identity.pid
        let pidfd = memwall_pidfd_open(pid)
        guard pidfd >= 0 else {
            let e = Errno.current
            return .declined(e.rawValue == ESRCH
                ? "pid \(pid), which it announced, is no process here"
                : "pidfd_open(\(pid)) failed with \(e.name): without it a recycled pid could not be told apart (Linux 5.3 or later needed)")
        }
        var answer: (UInt64, UInt64) = (0, 0)
        let got = withUnsafeMutableBytes(of: &answer) { buffer -> Result<Int, Errno> in
            var local = iovec(iov_base: buffer.baseAddress, iov_len: IntraHostChallenge.size)
            var remote = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(offer.challengeAddress)), iov_len: IntraHostChallenge.size)
            return funnel.transfer("process_vm_readv", requested: IntraHostChallenge.size) { n in
                local.iov_len = n
                remote.iov_len = n
                return memwall_process_vm(pid, 0, &local, 1, &remote, 1)
            }
        }
        var reason: String?
        switch got {
        case .success(IntraHostChallenge.size):
            // Computed only now, so the expected bytes were nowhere in this process during the read.
            if answer != IntraHostChallenge.answer(challenge.0, challenge.1) {
                reason = "pid \(pid) does not hold the answer to this connection's challenge (not the process at the other end of the socket: a forged identity?)"
            }
        case .success(let n):
            reason = "reading the challenge from pid \(pid) moved \(n) of \(IntraHostChallenge.size) bytes"
        case .failure(let e) where e == .notPermitted:
            reason = "the kernel refused process_vm_readv into pid \(pid) (EPERM): it needs ptrace access — the same user with YAMA "
                + "ptrace_scope 0 (now \(IntraHostSupport.yamaScopeDescription)), CAP_SYS_PTRACE, or the exporting process's consent "
                + "(start it with --intra-host grant-same-user)"
        case .failure(let e):
            reason = "process_vm_readv of the challenge from pid \(pid) failed with \(e.name)"
        }
        if reason == nil && !IntraHostChannel.isAlive(pidfd) {
            reason = "pid \(pid) exited while the intra-host path was set up"
        }
        if let reason {
            Glibc.close(pidfd)
            return .declined(reason)
        }
        let mappings = map(offer, pidfd: pidfd)
        return .established(IntraHostChannel(pid: pid, pidfd: pidfd, exports: offer.exports, mappings: mappings, funnel: funnel, peerName: peer),
                            offer.exports)
    }

    /// Maps the exports the verified peer keeps in sealed memfds: a duplicate
    /// of its descriptor (`pidfd_getfd`, so it comes from that very process),
    /// checked to be sealed against shrinking and long enough — so no access
    /// here can ever fault past its end — then mapped with the access the peer
    /// granted. An export that fails any step is served by `process_vm_*`.
    private static func map(_ offer: IntraHostOffer, pidfd: Int32) -> [UInt32: Mapping] {
        let byKey = Dictionary(offer.exports.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        var out: [UInt32: Mapping] = [:]
        for s in offer.shared {
            guard let e = byKey[s.key] else { continue }
            let fd = memwall_pidfd_getfd(pidfd, s.fd)
            guard fd >= 0 else { continue }
            defer { Glibc.close(fd) }
            var st = stat()
            guard memwall_shared_memory_is_sealed(fd) == 1, fstat(fd, &st) == 0, st.st_size >= 0,
                  UInt64(st.st_size) >= s.fileOffset + UInt64(e.byteCount) else { continue }
            let page = UInt64(PageSize.bytes)
            let start = s.fileOffset / page * page
            let length = PageSize.roundUp(Int(s.fileOffset - start) + e.byteCount)
            let prot = PROT_READ | (e.access.contains(.write) ? PROT_WRITE : 0)
            guard let p = mmap(nil, length, prot, MAP_SHARED, fd, off_t(start)), p != MAP_FAILED else { continue }
            let base = UInt(bitPattern: p)
            out[s.key] = Mapping(exportBase: base + UInt(s.fileOffset - start), start: base, length: length)
        }
        return out
    }

    private static func isAlive(_ pidfd: Int32) -> Bool {
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 0
    }

    /// False once the verified process has exited.
    var isAlive: Bool { Self.isAlive(pidfd) }

    // MARK: Data path

    /// The address in the peer of `length` bytes at `offset` of the export with
    /// `key` that starts at `base`, checked against the table the peer sent.
    /// - Throws: `remoteAccess` for a key the peer never announced or another
    ///   base than it gave, a range outside that export, or an access it did not grant.
    func resolve(key: UInt32, base: UInt64, offset: UInt64, length: Int, need: RemoteAccess, index: Int) throws(MemWallError) -> Target {
        guard let e = exports[key], e.address == base else {
            throw MemWallError(.remoteAccess, "descriptor \(index): \(peerName) exported nothing under key \(String(key, radix: 16)) at \(String(base, radix: 16)) (a segment it did not hand out)")
        }
        guard e.access.contains(need) else {
            throw MemWallError(.remoteAccess, "descriptor \(index): \(peerName) exported '\(e.name)' without \(need == .read ? "read" : "write") access")
        }
        guard length > 0, offset <= UInt64(e.byteCount), UInt64(length) <= UInt64(e.byteCount) - offset else {
            throw MemWallError(.remoteAccess,
                "descriptor \(index): \(offset)..<\(offset + UInt64(max(length, 0))) is outside '\(e.name)' of \(e.byteCount) bytes that \(peerName) exported")
        }
        if let m = mappings[key] { return .mapped(m.exportBase + UInt(offset)) }
        return .peer(e.address + offset)
    }

    /// Where a descriptor's bytes are on the far side.
    enum Target: Sendable {
        /// At this address in the peer: moved by `process_vm_*`.
        case peer(UInt64)
        /// At this address of this process, in a mapping of the peer's memfd: moved by `memcpy`.
        case mapped(UInt)
    }

    /// One descriptor on this path: local bytes, and their place on the far side.
    struct Move: Sendable {
        /// Inside a registered region that the prepared transfer keeps alive.
        let localAddress: UInt
        /// In the peer, or (``mapped``) in this process's mapping of it, which the channel keeps.
        let remote: UInt64
        let mapped: Bool
        let length: Int

        init(local: UnsafeMutableRawPointer, target: Target, length: Int) {
            self.localAddress = UInt(bitPattern: local)
            switch target {
            case .peer(let a): remote = a; mapped = false
            case .mapped(let a): remote = UInt64(a); mapped = true
            }
            self.length = length
        }
    }

    /// Moves every descriptor now, on the calling thread, batching up to
    /// ``maximumBatch`` per system call and resuming partial transfers, and
    /// reports each one to `complete` in order. EINTR and EAGAIN are retried.
    /// A descriptor whose peer range is not mapped (EFAULT) fails alone with
    /// `remoteAccess`; any other error fails the descriptor it stopped at, with
    /// the errno and the call named; once the peer is gone (ESRCH, or its pidfd
    /// readable) every remaining one fails with `disconnected`.
    /// - Returns: False when the peer was found gone.
    func move(_ operation: TransferOperation, _ moves: [Move], complete: (Int, Result<Int, MemWallError>) -> Void) -> Bool {
        let function = operation == .read ? "process_vm_readv" : "process_vm_writev"
        guard isAlive else {
            failAll(moves.indices, function: function, errno: .init(rawValue: ESRCH), complete)
            return false
        }
        // Runs of descriptors to mapped exports are copied here; the others go to the kernel in batches.
        var i = 0
        while i < moves.count {
            var j = i
            let mapped = moves[i].mapped
            while j < moves.count && moves[j].mapped == mapped { j += 1 }
            if mapped {
                for k in i ..< j {
                    let m = moves[k]
                    let local = UnsafeMutableRawPointer(bitPattern: m.localAddress).unsafelyUnwrapped
                    let far = UnsafeMutableRawPointer(bitPattern: UInt(m.remote)).unsafelyUnwrapped
                    if operation == .read { local.copyMemory(from: far, byteCount: m.length) } else { far.copyMemory(from: local, byteCount: m.length) }
                    complete(k, .success(m.length))
                }
            } else if !kernelCopy(operation, moves, i ..< j, complete: complete) {
                failAll(j ..< moves.count, function: function, errno: .init(rawValue: ESRCH), complete)
                return false
            }
            i = j
        }
        return true
    }

    /// The `process_vm_*` part of ``move(_:_:complete:)`` for `range`.
    /// - Returns: False when the peer was found gone (the rest of `range` then failed).
    private func kernelCopy(_ operation: TransferOperation, _ moves: [Move], _ range: Range<Int>,
                            complete: (Int, Result<Int, MemWallError>) -> Void) -> Bool {
        let function = operation == .read ? "process_vm_readv" : "process_vm_writev"
        let write: Int32 = operation == .read ? 0 : 1
        var i = range.lowerBound
        var done = 0  // bytes of descriptor i already moved
        let batch = min(range.count, Self.maximumBatch)
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: 2 * batch) { iov -> Bool in
            let local = iov.baseAddress.unsafelyUnwrapped
            let remote = local + batch
            while i < range.upperBound {
                let end = min(range.upperBound, i + batch)
                var requested = -done
                for k in i ..< end { requested += moves[k].length }
                let r = funnel.transfer(function, requested: requested) { allowed -> Int in
                    // iovec pairs of equal length from (i, done), cut at `allowed` bytes.
                    var n = 0
                    var left = allowed
                    var k = i
                    var skip = done
                    while left > 0 && k < end {
                        let m = moves[k]
                        let len = min(m.length - skip, left)
                        local[n] = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: m.localAddress + UInt(skip)), iov_len: len)
                        remote[n] = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(m.remote) + UInt(skip)), iov_len: len)
                        n += 1
                        left -= len
                        skip = 0
                        k += 1
                    }
                    return memwall_process_vm(pid, write, local, UInt(n), remote, UInt(n))
                }
                switch r {
                case .success(let moved) where moved > 0:
                    var left = moved
                    while left > 0 && i < range.upperBound {
                        let take = min(moves[i].length - done, left)
                        left -= take
                        done += take
                        if done == moves[i].length {
                            complete(i, .success(moves[i].length))
                            i += 1
                            done = 0
                        }
                    }
                case .failure(let e) where e == .interrupted || e == .wouldBlock:
                    continue
                case .failure(let e) where e.rawValue == ESRCH:
                    failAll(i ..< range.upperBound, function: function, errno: e, complete)
                    return false
                case .success, .failure(.badAddress):
                    // Nothing moved: the peer range at descriptor i is not (or no longer) mapped.
                    if !isAlive {
                        failAll(i ..< range.upperBound, function: function, errno: .init(rawValue: ESRCH), complete)
                        return false
                    }
                    complete(i, .failure(MemWallError(.remoteAccess,
                        "descriptor \(i): \(peerName) (pid \(pid)) has no memory mapped at \(String(moves[i].remote + UInt64(done), radix: 16)); was the region freed while still exported?",
                        function: function, errno: .badAddress)))
                    i += 1
                    done = 0
                case .failure(let e):
                    complete(i, .failure(.system(function, e, "descriptor \(i): moving \(moves[i].length) bytes with \(peerName) (pid \(pid)) failed")))
                    i += 1
                    done = 0
                }
            }
            return true
        }
    }

    private func failAll(_ range: Range<Int>, function: String, errno: Errno, _ complete: (Int, Result<Int, MemWallError>) -> Void) {
        let e = MemWallError(.disconnected, "\(peerName) (pid \(pid)) has exited; connect again", function: function, errno: errno)
        for i in range { complete(i, .failure(e)) }
    }
}

/// What this host allows of the intra-host path, found once per process.
enum IntraHostSupport {
    /// Nil when `process_vm_readv` works here at all (checked on this process's
    /// own memory, which any ptrace rule allows: what refuses it is a seccomp
    /// filter, as in container runtimes' default profiles); else why not.
    static let unavailableReason: String? = {
        var source: UInt64 = 0x1234_5678_9ABC_DEF0
        var target: UInt64 = 0
        let r = withUnsafeMutableBytes(of: &source) { s in
            withUnsafeMutableBytes(of: &target) { t -> Int in
                var l = iovec(iov_base: t.baseAddress, iov_len: 8)
                var rm = iovec(iov_base: s.baseAddress, iov_len: 8)
                return memwall_process_vm(getpid(), 0, &l, 1, &rm, 1)
            }
        }
        if r == 8 && target == source { return nil }
        let e = Errno.current
        return "process_vm_readv is refused in this process (\(r < 0 ? e.name : "moved \(r) of 8 bytes")): a seccomp filter (container) forbids it"
    }()

    /// YAMA's `ptrace_scope`, or nil without YAMA.
    static var yamaScope: Int? {
        let fd = open("/proc/sys/kernel/yama/ptrace_scope", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var b = [UInt8](repeating: 0, count: 8)
        let n = b.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return Int(String(decoding: b[0 ..< n], as: UTF8.self).filter(\.isNumber))
    }

    /// `"YAMA ptrace_scope 1"`, `"no YAMA"`.
    static var yamaScopeDescription: String { yamaScope.map { "YAMA ptrace_scope \($0)" } ?? "no YAMA" }

    /// Who may attach to an exporting process under this host's rule.
    static var ptraceRule: String {
        switch yamaScope {
        case nil, 0?: "peers of the same user (or with CAP_SYS_PTRACE) may attach (\(yamaScopeDescription))"
        case 1?: "YAMA ptrace_scope 1: only ancestors, holders of CAP_SYS_PTRACE, or peers of the same user when the exporter runs with --intra-host grant-same-user"
        case let s?: "YAMA ptrace_scope \(s): only holders of CAP_SYS_PTRACE\(s >= 3 ? " (and not even them: scope 3)" : "")"
        }
    }

    /// Calls `prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY)` once per process.
    /// - Returns: What was done, for the listener's label.
    static let grantSameUser: String = {
        guard let scope = yamaScope else { return "no grant needed (no YAMA: the same user may attach)" }
        guard scope == 1 else { return "no grant made (YAMA ptrace_scope \(scope): a grant would not help)" }
        if memwall_allow_ptrace_from_same_user() == 0 { return "processes of the same user may attach (PR_SET_PTRACER_ANY)" }
        return "PR_SET_PTRACER_ANY failed (\(Errno.current.name)); only ancestors may attach"
    }()

    /// The label of the intra-host path in a transport's capabilities.
    static func capability(_ policy: IntraHostPolicy) -> PeerPathCapability {
        let mechanism = "exports in sealed memfds mapped and copied with memcpy, others moved by process_vm_readv/writev"
        if policy == .off {
            return PeerPathCapability(name: "intra-host", mechanism: mechanism, implementation: .unavailable(reason: "turned off (intra-host: off): every byte goes over TCP"))
        }
        if let why = unavailableReason {
            return PeerPathCapability(name: "intra-host", mechanism: mechanism, implementation: .unavailable(reason: why + "; TCP serves peers on this host"))
        }
        do throws(MemWallError) { _ = try HostIdentity.current() } catch {
            return PeerPathCapability(name: "intra-host", mechanism: mechanism, implementation: .unavailable(reason: error.message))
        }
        return PeerPathCapability(name: "intra-host", mechanism: mechanism + ", to exporting processes on this host (same boot id and pid namespace, pid proven by a challenge), chosen per peer at connect; "
                                  + ptraceRule + (policy == .grantSameUser ? "; listeners grant same-user peers" : ""), implementation: .hardware)
    }
}
