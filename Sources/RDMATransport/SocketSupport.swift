#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

/// IPv4 socket plumbing for the TCP emulation and the rdmacm address.
enum SocketAddress {
    /// Parses a dotted IPv4 address ("localhost" means 127.0.0.1).
    /// - Throws: `invalidArgument` naming the value.
    static func ipv4(_ address: String, port: UInt16) throws(MemWallError) -> sockaddr_in {
        let text = address == "localhost" ? "127.0.0.1" : address
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        guard inet_pton(AF_INET, text, &sa.sin_addr) == 1 else {
            throw .invalid("IPv4 address", address, expected: "a dotted IPv4 address such as 127.0.0.1")
        }
        return sa
    }

    /// The local address a connected or bound socket uses.
    static func local(_ fd: Int32) -> sockaddr_in {
        var sa = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return sa
    }

    /// `"a.b.c.d:port"` of a socket address.
    static func describe(_ sa: sockaddr_in) -> String {
        var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        var a = sa.sin_addr
        _ = inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
        let host = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(host):\(UInt16(bigEndian: sa.sin_port))"
    }
}

/// Socket calls the emulation needs, through the fault-injecting funnel where bytes move.
enum SocketIO {
    /// `SHUT_RDWR` (2 on Linux): Glibc's Swift module does not export it in every build mode.
    static let shutdownBoth: Int32 = 2

    /// A TCP socket with Nagle off (small acknowledgements must not wait) and large buffers.
    static func makeStreamSocket() throws(MemWallError) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("socket", .current, "cannot create a TCP socket") }
        tune(fd)
        return fd
    }

    static func tune(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var size: Int32 = 4 << 20
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sets (or clears, with nil) how long a blocking read waits.
    static func setReceiveTimeout(_ fd: Int32, _ timeout: Duration?) {
        var tv = timeval()
        if let timeout {
            let ns = max(timeout.nanosecondsClamped, 1_000_000)
            tv.tv_sec = Int(ns / 1_000_000_000)
            tv.tv_usec = Int(ns % 1_000_000_000 / 1000)
        }
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Connects with a deadline.
    /// - Throws: `disconnected` (refused: nothing listens), `timedOut`, `systemCall`.
    static func connect(_ fd: Int32, to sa: sockaddr_in, timeout: Duration) throws(MemWallError) {
        let where_ = SocketAddress.describe(sa)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var addr = sa
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        var err = rc == 0 ? Errno(rawValue: 0) : Errno.current
        if rc != 0 && err.rawValue == EINPROGRESS {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ms = Int32(clamping: timeout.nanosecondsClamped / 1_000_000)
            let n = poll(&p, 1, max(ms, 1))
            if n == 0 {
                throw MemWallError(.timedOut, "connecting to \(where_) did not finish within \(timeout)", function: "connect")
            }
            var soErr: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &soErr, &len)
            err = Errno(rawValue: soErr)
        }
        _ = fcntl(fd, F_SETFL, flags)
        guard err.rawValue == 0 else {
            if err == .connectionRefused {
                throw MemWallError(.disconnected,
                    "nothing is listening at \(where_); start the peer (memwall rdma-serve) or check the address and port",
                    function: "connect", errno: err)
            }
            if err.rawValue == ECONNRESET {
                // The listener closed while this connection was being set up.
                throw MemWallError(.disconnected, "\(where_) reset the connection while it was being set up; is the peer shutting down?",
                                   function: "connect", errno: err)
            }
            throw .system("connect", err, "cannot connect to \(where_)")
        }
    }

    /// Why a stream stopped.
    enum StreamEnd: Error {
        /// The peer closed its end (read returned 0).
        case closed
        /// A system call failed.
        case failed(Errno)

        var errno: Errno? { if case .failed(let e) = self { e } else { nil } }
    }

    /// Reads exactly `count` bytes.
    static func readFully(_ funnel: SyscallFunnel, _ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Result<Void, StreamEnd> {
        var done = 0
        while done < count {
            switch funnel.read(fd, buffer + done, count - done) {
            case .success(0): return .failure(.closed)
            case .success(let n): done += n
            case .failure(let e) where e == .interrupted: continue
            case .failure(let e): return .failure(.failed(e))
            }
        }
        return .success(())
    }

    /// Reads and drops `count` bytes (the payload of a refused write).
    static func discard(_ funnel: SyscallFunnel, _ fd: Int32, _ count: Int) -> Result<Void, StreamEnd> {
        var left = count
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { scratch.deallocate() }
        while left > 0 {
            let n = min(left, 64 * 1024)
            if case .failure(let e) = readFully(funnel, fd, scratch, n) { return .failure(e) }
            left -= n
        }
        return .success(())
    }

    /// Writes a header and an optional payload with `writev`, resuming short writes.
    static func writeFrame(_ funnel: SyscallFunnel, _ fd: Int32, header: UnsafeRawBufferPointer,
                           payload: UnsafeRawBufferPointer?) -> Result<Void, Errno> {
        let total = header.count + (payload?.count ?? 0)
        var sent = 0
        while sent < total {
            let r = funnel.transfer("write", requested: total - sent) { allowed in
                var iov = [iovec](repeating: iovec(), count: 2)
                var n = 0
                var budget = allowed
                var skip = sent
                for part in [header, payload ?? UnsafeRawBufferPointer(start: nil, count: 0)] where part.count > 0 {
                    if skip >= part.count { skip -= part.count; continue }
                    let len = min(part.count - skip, budget)
                    guard len > 0, let base = part.baseAddress else { break }
                    iov[n] = iovec(iov_base: UnsafeMutableRawPointer(mutating: base + skip), iov_len: len)
                    n += 1
                    budget -= len
                    skip = 0
                }
                return iov.withUnsafeBufferPointer { Int(writev(fd, $0.baseAddress, Int32(n))) }
            }
            switch r {
            case .success(let n): sent += n
            // A signal or a full send buffer interrupted nothing that was sent: go on.
            case .failure(let e) where e == .wouldBlock || e == .interrupted: continue
            case .failure(let e): return .failure(e)
            }
        }
        return .success(())
    }
}

/// The emulation's fixed 32-byte frame header, little-endian:
/// kind:u8 status:u8 pad:u16 key:u32 tag:u64 offset:u64 length:u64.
struct FrameHeader {
    enum Kind: UInt8 {
        /// Listener → connector: the export table follows (`length` bytes).
        case exportTable = 1
        /// Connector → listener: place `length` bytes at `offset` of the export with `key`.
        case write = 2
        /// Connector → listener: send back `length` bytes from `offset` of the export with `key`.
        case read = 3
        /// Connector → listener: deliver `key` as a notification once everything before it landed.
        case notify = 4
        /// Listener → connector: the write with `tag` landed (or `status` says why not).
        case writeDone = 5
        /// Listener → connector: read data for `tag` follows (when `status` is ok).
        case readData = 6
        /// Connector → listener, only after the listener flagged ``offersIntraHost``:
        /// asks for the intra-host path; the 16-byte challenge is in `tag` and `offset`.
        case intraHostProbe = 7
        /// Listener → connector, only in answer to a probe: an ``IntraHostOffer`` of `length` bytes follows.
        case intraHostOffer = 8
    }

    /// Bit in the `key` field of the export-table frame: the listener offers the
    /// intra-host path (see ``IntraHostOffer``). Connectors that do not know it
    /// ignore the field, so it changes nothing for them.
    static let offersIntraHost: UInt32 = 1

    enum Status: UInt8 {
        case ok = 0
        case unknownKey = 1
        case outOfBounds = 2
        case notPermitted = 3
    }

    static let size = 32
    var kind: UInt8
    var status: UInt8 = 0
    var key: UInt32 = 0
    var tag: UInt64 = 0
    var offset: UInt64 = 0
    var length: UInt64 = 0

    init(kind: Kind, status: Status = .ok, key: UInt32 = 0, tag: UInt64 = 0, offset: UInt64 = 0, length: UInt64 = 0) {
        self.kind = kind.rawValue
        self.status = status.rawValue
        self.key = key
        self.tag = tag
        self.offset = offset
        self.length = length
    }

    /// Largest payload one frame may announce (1 TiB). Far above any region this
    /// host can register, and small enough that every length converts to `Int`
    /// and every `offset + length` against an export fits in 64 bits.
    static let maximumLength: UInt64 = 1 << 40

    /// What the listener accepts from a connector, checked.
    enum Request: Equatable {
        /// `length` payload bytes follow the header, whatever the verdict on them.
        case write(key: UInt32, tag: UInt64, offset: UInt64, length: Int)
        case read(key: UInt32, tag: UInt64, offset: UInt64, length: Int)
        case notify(UInt32)
        /// Asks for the intra-host path with this challenge; no payload.
        case intraHostProbe(challenge0: UInt64, challenge1: UInt64)
    }

    /// What the connector accepts from a listener, checked.
    enum Answer: Equatable {
        case writeDone(tag: UInt64, status: Status)
        /// `length` payload bytes follow when `status` is ok (never otherwise).
        case readData(tag: UInt64, status: Status, length: Int)
    }

    /// Decodes one header a connector sent (the listener's side of the wire).
    /// Total: any 32 bytes give a request or an error, never a trap.
    /// - Throws: `malformedInput` naming the field, its value and what is valid;
    ///   the connection cannot be resynchronised after one, so callers close it.
    static func decodeRequest(_ raw: UnsafeRawBufferPointer) throws(MemWallError) -> Request {
        let h = try FrameHeader(checking: raw)
        guard h.status == 0 else {
            throw MemWallError(.malformedInput, "a request frame carries status \(h.status); connectors send 0")
        }
        switch Kind(rawValue: h.kind) {
        case .write?:
            return .write(key: h.key, tag: h.tag, offset: h.offset, length: try h.payloadLength())
        case .read?:
            return .read(key: h.key, tag: h.tag, offset: h.offset, length: try h.payloadLength())
        case .notify?:
            guard h.length == 0 else {
                throw MemWallError(.malformedInput, "a notify frame announces \(h.length) payload bytes; it carries none")
            }
            return .notify(h.key)
        case .intraHostProbe?:
            guard h.length == 0, h.key == 0 else {
                throw MemWallError(.malformedInput, "an intra-host probe announces \(h.length) payload bytes and key \(h.key); it carries neither")
            }
            return .intraHostProbe(challenge0: h.tag, challenge1: h.offset)
        default:
            throw MemWallError(.malformedInput,
                "frame kind \(h.kind) is not a request: expected write (2), read (3), notify (4) or intra-host probe (7); not a MemWall peer, or another protocol version")
        }
    }

    /// Decodes one header a listener sent (the connector's side of the wire).
    /// - Throws: `malformedInput` naming the field, its value and what is valid.
    static func decodeAnswer(_ raw: UnsafeRawBufferPointer) throws(MemWallError) -> Answer {
        let h = try FrameHeader(checking: raw)
        guard let status = Status(rawValue: h.status) else {
            throw MemWallError(.malformedInput, "an answer frame carries status \(h.status); valid are 0 (ok) to 3 (not permitted)")
        }
        switch Kind(rawValue: h.kind) {
        case .writeDone?:
            guard h.length == 0 else {
                throw MemWallError(.malformedInput, "a write-done frame announces \(h.length) payload bytes; it carries none")
            }
            return .writeDone(tag: h.tag, status: status)
        case .readData?:
            let length = try h.payloadLength()
            guard status == .ok || length == 0 else {
                throw MemWallError(.malformedInput, "a refused read's answer announces \(length) payload bytes; it carries none")
            }
            return .readData(tag: h.tag, status: status, length: length)
        default:
            throw MemWallError(.malformedInput,
                "frame kind \(h.kind) is not an answer: expected write-done (5) or read-data (6); not a MemWall peer, or another protocol version")
        }
    }

    /// Reads the raw fields of exactly `size` bytes.
    /// - Throws: `malformedInput` for any other count.
    private init(checking raw: UnsafeRawBufferPointer) throws(MemWallError) {
        guard raw.count == Self.size, let base = raw.baseAddress else {
            throw MemWallError(.malformedInput, "a frame header is \(Self.size) bytes, not \(raw.count)")
        }
        self.init(bytes: base)
    }

    /// `length` as a byte count, once it is known to be within ``maximumLength``.
    private func payloadLength() throws(MemWallError) -> Int {
        guard length <= Self.maximumLength else {
            throw MemWallError(.malformedInput,
                "a frame announces \(length) payload bytes; at most \(Self.maximumLength) (1 TiB) are valid")
        }
        return Int(length)
    }

    init(bytes p: UnsafeRawPointer) {
        kind = p.load(as: UInt8.self)
        status = p.load(fromByteOffset: 1, as: UInt8.self)
        key = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        tag = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        offset = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        length = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: kind, as: UInt8.self)
        p.storeBytes(of: status, toByteOffset: 1, as: UInt8.self)
        p.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: key.littleEndian, toByteOffset: 4, as: UInt32.self)
        p.storeBytes(of: tag.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: offset.littleEndian, toByteOffset: 16, as: UInt64.self)
        p.storeBytes(of: length.littleEndian, toByteOffset: 24, as: UInt64.self)
    }
}
