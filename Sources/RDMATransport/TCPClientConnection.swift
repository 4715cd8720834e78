#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization
import Transport

/// The connecting side of one emulated connection: a sender thread that
/// writes frames (at most `sendQueueDepth` unanswered), and a receiver thread
/// that matches answers to descriptors, places READ data straight into the
/// local region, and enforces the operation timeout.
final class TCPClientConnection: RemoteConnectionHandle {
    /// One descriptor on its way.
    struct Operation: Sendable {
        let request: TransferRequest
        let index: Int
        let isRead: Bool
        let key: UInt32
        let remoteOffset: UInt64
        /// Address inside `registration.region`, which the request keeps alive.
        let localAddress: UInt
        let length: Int
        let registration: LocalRegistration

        init(request: TransferRequest, index: Int, isRead: Bool, key: UInt32, remoteOffset: UInt64,
             local: UnsafeMutableRawPointer, length: Int, registration: LocalRegistration) {
            self.request = request
            self.index = index
            self.isRead = isRead
            self.key = key
            self.remoteOffset = remoteOffset
            self.localAddress = UInt(bitPattern: local)
            self.length = length
            self.registration = registration
        }

        var local: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: localAddress).unsafelyUnwrapped }

        func finish(_ r: Result<Int, MemWallError>) {
            request.complete(descriptor: index, r, releasing: registration.use)
        }
    }

    private enum Item: Sendable {
        case operation(Operation)
        case notify(UInt32)
    }

    private struct Pending: Sendable {
        var operation: Operation
        var deadline: UInt64
    }

    private struct State: Sendable {
        var queue: [Item] = []
        var head = 0
        var pending: [UInt64: Pending] = [:]
        var nextTag: UInt64 = 1
        var closed: MemWallError?
    }

    /// The shared part both threads hold; the connection object's `deinit` shuts it down.
    private final class Core: Sendable {
        let fd: Int32
        let funnel: SyscallFunnel
        let peerName: String
        let timeout: Duration
        let depth: Int
        let state = Mutex(State())
        /// Where the sender thread parks while it has nothing to send.
        let senderParking = ThreadParking()

        init(fd: Int32, funnel: SyscallFunnel, peerName: String, timeout: Duration, depth: Int) {
            self.fd = fd
            self.funnel = funnel
            self.peerName = peerName
            self.timeout = timeout
            self.depth = depth
        }

        deinit { Glibc.close(fd) }

        var isOpen: Bool { state.withLock { $0.closed == nil } }

        /// Ends the connection: every queued and unanswered descriptor fails with `error`.
        func fail(_ error: MemWallError) {
            let (first, queued, pending) = state.withLock { s -> (Bool, [Item], [Pending]) in
                guard s.closed == nil else { return (false, [], []) }
                s.closed = error
                let q = Array(s.queue[s.head...])
                s.queue = []
                s.head = 0
                let p = Array(s.pending.values)
                s.pending = [:]
                return (true, q, p)
            }
            guard first else { return }
            shutdown(fd, SocketIO.shutdownBoth)
            for item in queued { if case .operation(let op) = item { op.finish(.failure(error)) } }
            for p in pending { p.operation.finish(.failure(error)) }
            senderParking.wakeOne()
        }

        // MARK: Sender thread

        func runSender() {
            let header = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
            defer { header.deallocate() }
            enum Next { case stop, idle, cancelled(Operation), item(Item, UInt64) }
            func take() -> Next {
                state.withLock { s -> Next in
                    if s.closed != nil { return .stop }
                    guard s.head < s.queue.count else { return .idle }
                    if case .operation = s.queue[s.head], s.pending.count >= depth { return .idle }
                    let item = s.queue[s.head]
                    s.head += 1
                    if s.head == s.queue.count { s.queue.removeAll(keepingCapacity: true); s.head = 0 }
                    // Cancelled or not is decided once, here: an operation recorded
                    // as unanswered is finished only by whoever takes it out of
                    // `pending` (its answer, or `fail`); one not recorded, only by
                    // this thread. Asking again after the lock let a cancel in
                    // between finish it twice (releasing its registration twice)
                    // and leave it in `pending`, never sent, to time out the connection.
                    if case .operation(let op) = item, op.request.isCancellationRequested { return .cancelled(op) }
                    let tag = s.nextTag
                    s.nextTag += 1
                    if case .operation(let op) = item {
                        s.pending[tag] = Pending(operation: op, deadline: MonotonicClock.nanoseconds() &+ timeout.nanosecondsClamped)
                    }
                    return .item(item, tag)
                }
            }
            while true {
                var next = Next.idle
                // The only thread that sends: it parks (no spin) until work is queued or the connection closes.
                senderParking.wait(spins: 0) {
                    next = take()
                    if case .idle = next { return false }
                    return true
                }
                switch next {
                case .stop, .idle: return
                case .cancelled(let op):
                    // Never handed to the socket: it ends as cancelled.
                    op.finish(.failure(MemWallError(.cancelled, "cancelled before it was sent")))
                case .item(.notify(let value), _):
                    FrameHeader(kind: .notify, key: value).store(to: header)
                    if !send(header, payload: nil) { return }
                case .item(.operation(let op), let tag):
                    FrameHeader(kind: op.isRead ? .read : .write, key: op.key, tag: tag, offset: op.remoteOffset,
                                length: UInt64(op.length)).store(to: header)
                    let payload = op.isRead ? nil : UnsafeRawBufferPointer(start: op.local, count: op.length)
                    if !send(header, payload: payload) { return }
                }
            }
        }

        private func send(_ header: UnsafeMutableRawPointer, payload: UnsafeRawBufferPointer?) -> Bool {
            let r = SocketIO.writeFrame(funnel, fd, header: UnsafeRawBufferPointer(start: header, count: FrameHeader.size),
                                        payload: payload)
            if case .failure(let e) = r {
                fail(MemWallError(.disconnected, "the connection to \(peerName) broke while sending", function: "writev", errno: e))
                return false
            }
            return true
        }

        // MARK: Receiver thread

        func runReceiver() {
            let header = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
            defer { header.deallocate() }
            while true {
                switch read(header, FrameHeader.size, idleAllowed: true) {
                case .failure(let e): fail(e); return
                case .success(false): return
                case .success(true): break
                }
                let answer: FrameHeader.Answer
                do throws(MemWallError) {
                    answer = try FrameHeader.decodeAnswer(UnsafeRawBufferPointer(start: header, count: FrameHeader.size))
                } catch {
                    fail(MemWallError(.malformedInput, "\(peerName) broke the protocol (\(error.message)); connection closed"))
                    return
                }
                let (tag, status, readLength): (UInt64, FrameHeader.Status, Int?) = switch answer {
                case .writeDone(let tag, let status): (tag, status, nil)
                case .readData(let tag, let status, let length): (tag, status, length)
                }
                guard let pending = state.withLock({ $0.pending.removeValue(forKey: tag) }) else {
                    fail(MemWallError(.malformedInput, "\(peerName) answered tag \(tag), which is not outstanding; closing the connection"))
                    return
                }
                let op = pending.operation
                senderParking.wakeOne()
                // The answer must be the one the operation asked for: read data for a
                // write would land in the write's source buffer.
                guard op.isRead == (readLength != nil) else {
                    let got = readLength == nil ? "a write-done" : "read data"
                    op.finish(.failure(MemWallError(.malformedInput, "\(peerName) answered a \(op.isRead ? "read" : "write") with \(got)")))
                    fail(MemWallError(.disconnected, "\(peerName) broke the protocol; connection closed"))
                    return
                }
                guard status == .ok else {
                    op.finish(.failure(remoteError(status, op)))
                    continue
                }
                if let readLength {
                    guard readLength == op.length else {
                        op.finish(.failure(MemWallError(.malformedInput, "\(peerName) sent \(readLength) bytes for a read of \(op.length)")))
                        fail(MemWallError(.disconnected, "\(peerName) broke the protocol; connection closed"))
                        return
                    }
                    switch read(op.local, op.length, idleAllowed: false) {
                    case .failure(let e):
                        op.finish(.failure(e))
                        fail(e)
                        return
                    case .success(false):
                        op.finish(.failure(MemWallError(.disconnected, "closed locally")))
                        return
                    case .success(true): break
                    }
                }
                op.finish(.success(op.length))
            }
        }

        private func remoteError(_ status: FrameHeader.Status, _ op: Operation) -> MemWallError {
            let what = "\(op.isRead ? "read" : "write") of \(op.length) bytes at offset \(op.remoteOffset) with key \(String(op.key, radix: 16))"
            switch status {
            case .unknownKey:
                return MemWallError(.remoteAccess, "\(peerName) refused the \(what): no region is exported under that key (unexported, or a bad key)")
            case .outOfBounds:
                return MemWallError(.remoteAccess, "\(peerName) refused the \(what): it is outside the exported region")
            case .notPermitted:
                return MemWallError(.remoteAccess, "\(peerName) refused the \(what): the region is not exported for that access")
            case .ok:
                return MemWallError(.remoteAccess, "\(peerName) refused the \(what) with status ok, which is a contradiction")
            }
        }

        /// Reads `count` bytes; `.success(false)` once the connection was closed locally.
        /// While idle between frames it checks the operation timeout.
        private func read(_ p: UnsafeMutableRawPointer, _ count: Int, idleAllowed: Bool) -> Result<Bool, MemWallError> {
            var done = 0
            while done < count {
                switch funnel.read(fd, p + done, count - done) {
                case .success(0):
                    if !isOpen { return .success(false) }
                    return .failure(MemWallError(.disconnected, "\(peerName) closed the connection", function: "read"))
                case .success(let n):
                    done += n
                case .failure(let e) where e == .wouldBlock || e == .interrupted:
                    // The 50 ms receive timeout, or a signal: nothing was read, try again.
                    if !isOpen { return .success(false) }
                    if let late = overdue() {
                        return .failure(MemWallError(.timedOut,
                            "\(peerName) did not answer a \(late.isRead ? "read" : "write") of \(late.length) bytes within \(timeout); connection closed",
                            errno: .timedOut))
                    }
                case .failure(let e):
                    if !isOpen { return .success(false) }
                    return .failure(MemWallError(.disconnected, "the connection to \(peerName) broke", function: "read", errno: e))
                }
            }
            return .success(true)
        }

        private func overdue() -> Operation? {
            let now = MonotonicClock.nanoseconds()
            return state.withLock { s in s.pending.values.first { $0.deadline < now }?.operation }
        }

        /// Takes the not-yet-sent descriptors of `request` out of the queue; they end as cancelled.
        func purge(_ request: TransferRequest) {
            let removed = state.withLock { s -> [Operation] in
                var kept: [Item] = []
                var out: [Operation] = []
                for item in s.queue[s.head...] {
                    if case .operation(let op) = item, op.request === request { out.append(op) } else { kept.append(item) }
                }
                s.queue = kept
                s.head = 0
                return out
            }
            for op in removed { op.finish(.failure(MemWallError(.cancelled, "cancelled before it was sent"))) }
        }

        func enqueue(_ ops: [Operation], notify: UInt32?) -> MemWallError? {
            let closed = state.withLock { s -> MemWallError? in
                if let c = s.closed { return c }
                for op in ops { s.queue.append(.operation(op)) }
                if let notify { s.queue.append(.notify(notify)) }
                return nil
            }
            if closed == nil { senderParking.wakeOne() }
            return closed
        }
    }

    private let core: Core
    private let sender: WorkerThread
    private let receiver: WorkerThread
    /// `"127.0.0.1:18515 (tcp-emulation)"`.
    let peerName: String
    /// The table the peer sent (with addresses in its memory on the intra-host path).
    let exports: [ExportedRegionInfo]
    /// How bytes reach the peer: TCP frames, or the kernel's cross-process copy.
    let path: RemotePeerPath
    /// The intra-host path, when the peer is on this host and proved it; then
    /// every descriptor goes through it and the socket carries notifications only.
    let intraHost: IntraHostChannel?

    /// Connects, reads the export table, takes the intra-host path when the
    /// peer offers it and `options` allow it, and starts both threads.
    init(address: String, port: UInt16, timeout: Duration, options: RemoteTransportOptions, funnel: SyscallFunnel) throws(MemWallError) {
        let sa = try SocketAddress.ipv4(address, port: port)
        let fd = try SocketIO.makeStreamSocket()
        let name = SocketAddress.describe(sa)
        do throws(MemWallError) {
            try SocketIO.connect(fd, to: sa, timeout: timeout)
            // The table is the first frame; wait for it no longer than the connect timeout.
            var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(max(timeout.components.attoseconds / 1_000_000_000_000, 0)))
            if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1000 }
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let hdr = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
            defer { hdr.deallocate() }
            switch SocketIO.readFully(funnel, fd, hdr, FrameHeader.size) {
            case .success: break
            case .failure(let e) where e.errno == .wouldBlock:
                throw MemWallError(.timedOut, "\(name) accepted but sent no export table within \(timeout); is it a MemWall peer?")
            case .failure(let e):
                throw MemWallError(.disconnected, "\(name) " + (e.errno.map { "was not reached or reset the connection (\($0.name)) before sending its export table; check that the host is reachable and runs memwall rdma-serve" } ?? "closed the connection before sending its export table"), function: "read", errno: e.errno)
            }
            let h = FrameHeader(bytes: hdr)
            guard h.kind == FrameHeader.Kind.exportTable.rawValue, h.length <= UInt64(ExportTableCodec.maximumBytes) else {
                throw MemWallError(.malformedInput, "\(name) did not start with an export table; is it a MemWall tcp-emulation peer?")
            }
            let table = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(h.length), alignment: 8)
            defer { table.deallocate() }
            if h.length > 0, case .failure(let e) = SocketIO.readFully(funnel, fd, table.baseAddress.unsafelyUnwrapped, Int(h.length)) {
                throw MemWallError(.disconnected, "\(name) closed the connection while sending its export table", function: "read", errno: e.errno)
            }
            var exports = try ExportTableCodec.decode(UnsafeRawBufferPointer(table), peer: name)
            var path = RemotePeerPath.tcp(intraHostDeclined: "the peer does not offer it (it runs with intra-host off, or an older MemWall)")
            var channel: IntraHostChannel?
            if h.key & FrameHeader.offersIntraHost != 0 {
                if options.intraHost == .off {
                    path = .tcp(intraHostDeclined: "turned off on this side (intra-host: off)")
                } else {
                    switch try IntraHostChannel.negotiate(fd: fd, funnel: funnel, peer: name, timeout: timeout) {
                    case .established(let c, let table):
                        channel = c
                        path = .intraHost(pid: c.pid, mapped: c.mappedCount, exports: c.exportCount)
                        exports = table
                    case .declined(let why):
                        path = .tcp(intraHostDeclined: why)
                    }
                }
            }
            self.exports = exports
            self.path = path
            self.intraHost = channel
            // From now on the receiver wakes every 50 ms to check the operation timeout.
            var poll = timeval(tv_sec: 0, tv_usec: 50_000)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &poll, socklen_t(MemoryLayout<timeval>.size))
        } catch {
            Glibc.close(fd)
            throw error
        }
        let core = Core(fd: fd, funnel: funnel, peerName: name, timeout: options.operationTimeout, depth: options.sendQueueDepth)
        self.core = core
        self.peerName = name
        do throws(MemWallError) {
            self.sender = try WorkerThread(name: "mw-tcp-send") { core.runSender() }
        } catch {
            core.fail(MemWallError(.disconnected, "closed"))
            throw error
        }
        do throws(MemWallError) {
            self.receiver = try WorkerThread(name: "mw-tcp-recv") { core.runReceiver() }
        } catch {
            core.fail(MemWallError(.disconnected, "closed"))
            throw error
        }
    }

    deinit {
        core.fail(MemWallError(.disconnected, "the connection to \(peerName) was released"))
        sender.join()
        receiver.join()
    }

    var isConnected: Bool { core.isOpen }

    func disconnect() {
        core.fail(MemWallError(.disconnected, "the connection to \(peerName) was closed by this side"))
        sender.join()
        receiver.join()
    }

    /// Closes the connection without waiting for its threads (from a posting
    /// thread that found the peer gone); queued descriptors fail with `error`.
    func close(because error: MemWallError) { core.fail(error) }

    /// Cancels what of `request` has not been sent yet.
    func purge(_ request: TransferRequest) { core.purge(request) }

    /// Queues descriptors (and a trailing notification) in order.
    func enqueue(_ ops: [Operation], notify: UInt32?) {
        if let error = core.enqueue(ops, notify: notify) {
            for op in ops { op.finish(.failure(error)) }
        }
    }
}
