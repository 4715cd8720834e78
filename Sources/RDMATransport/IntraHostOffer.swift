#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Transport

/// Whether a remote transport reaches peers on this host through the kernel
/// (`process_vm_readv`/`process_vm_writev`, one copy, no socket on the data
/// path) instead of through TCP.
///
/// The kernel lets a process use `process_vm_*` on another only where it may
/// ptrace it (same user and YAMA `ptrace_scope` 0, or an ancestor under scope 1,
/// or `CAP_SYS_PTRACE`). Such a peer can already read and write all of the
/// exporting process's memory, so offering it the path gives it nothing new;
/// a peer the kernel refuses is served over TCP, where the listener checks every
/// descriptor. Only ``grantSameUser`` widens who may attach.
public enum IntraHostPolicy: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Never: a listening side offers nothing and a connecting side moves every byte over TCP.
    case off
    /// A listening side offers the path; a connecting side takes it when the peer
    /// proves it is on this host and the kernel allows the access. Who may
    /// attach stays the kernel's ptrace rule. The default.
    case automatic
    /// As ``automatic``, and a listening side also calls
    /// `prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY)`, so that under YAMA
    /// `ptrace_scope` 1 every process of the same user may attach to it (scope 0
    /// behaviour for this process, for its whole life). `PR_SET_PTRACER` with
    /// one pid would be narrower, but it names a single process and each call
    /// replaces the last, so a server with several clients cannot grant them
    /// all; and the pid a client announces is not proven until after the grant.
    case grantSameUser = "grant-same-user"

    /// The raw value (`off`, `automatic`, `grant-same-user`).
    public var description: String { rawValue }
}

/// How a connected peer is reached, as decided when the connection was set up.
public enum RemotePeerPath: Sendable, Hashable, CustomStringConvertible {
    /// RDMA verbs on this device.
    case rdma(device: String)
    /// The TCP emulation; `intraHostDeclined` says why the intra-host path is not used.
    case tcp(intraHostDeclined: String)
    /// Into the exporting process `pid` (same boot id and pid namespace,
    /// identity proven by a challenge): `mapped` of its `exports` live in
    /// sealed memfds mapped here and move by `memcpy`, the others by
    /// `process_vm_readv`/`process_vm_writev`.
    case intraHost(pid: Int32, mapped: Int, exports: Int)

    /// `"rdma"`, `"tcp-emulation"` or `"intra-host"`.
    public var name: String {
        switch self {
        case .rdma: "rdma"
        case .tcp: "tcp-emulation"
        case .intraHost: "intra-host"
        }
    }

    /// Hardware for RDMA and for the kernel's cross-process copy; emulation for TCP.
    public var implementation: TransportImplementation {
        switch self {
        case .rdma, .intraHost: .hardware
        case .tcp(let why): .emulation(reason: "one-sided READ/WRITE emulated over TCP; intra-host path not used: \(why)")
        }
    }

    /// True for ``intraHost(pid:)``.
    public var isIntraHost: Bool { if case .intraHost = self { true } else { false } }

    /// `"intra-host into pid 4242 (1 of 1 exports mapped shared, memcpy)"`, `"tcp-emulation (emulation (…))"`.
    public var description: String {
        switch self {
        case .rdma(let d): "rdma on \(d)"
        case .intraHost(let pid, let mapped, let exports):
            "intra-host into pid \(pid) (" + (mapped == 0 ? "process_vm_readv/writev"
                : mapped == exports ? "\(mapped) of \(exports) exports mapped shared, memcpy"
                : "\(mapped) of \(exports) exports mapped shared, memcpy; the others process_vm_readv/writev") + ")"
        case .tcp: "tcp-emulation (\(implementation))"
        }
    }
}

/// What names this process's host and the pid numbering it sees: equal
/// identities mean "the same running kernel, the same pid namespace", where a
/// pid one process announces names a process the other can address.
struct HostIdentity: Sendable, Equatable {
    /// `/proc/sys/kernel/random/boot_id`, 16 bytes: new at every boot, per kernel.
    var bootID: [UInt8]
    /// Device and inode of `/proc/self/ns/pid`: equal only within one pid namespace.
    var pidNamespaceDevice: UInt64
    var pidNamespaceInode: UInt64
    /// This process, as numbered in that namespace.
    var pid: Int32

    /// This process's identity.
    /// - Throws: `unsupported` when `/proc` does not give it (no procfs, a
    ///   sandbox): the intra-host path is then neither offered nor taken.
    static func current() throws(MemWallError) -> HostIdentity {
        let path = "/proc/sys/kernel/random/boot_id"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .system("open", .current, "cannot read \(path), which tells whether a peer runs on this host") }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
        guard n > 0, let boot = parseBootID(buffer[0 ..< n]) else {
            throw MemWallError(.unsupported, "\(path) does not hold a UUID; cannot tell whether a peer runs on this host")
        }
        var st = stat()
        guard stat("/proc/self/ns/pid", &st) == 0 else {
            throw .system("stat", .current, "cannot identify this process's pid namespace (/proc/self/ns/pid)")
        }
        return HostIdentity(bootID: boot, pidNamespaceDevice: UInt64(st.st_dev), pidNamespaceInode: UInt64(st.st_ino), pid: getpid())
    }

    /// The 16 bytes of a UUID in its text form (`0f2128d5-b241-…`, trailing
    /// newline allowed); nil for anything else.
    static func parseBootID<C: Collection>(_ text: C) -> [UInt8]? where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(16)
        var high: UInt8?
        for c in text {
            let v: UInt8
            switch c {
            case UInt8(ascii: "0") ... UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
            case UInt8(ascii: "a") ... UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A") ... UInt8(ascii: "F"): v = c - UInt8(ascii: "A") + 10
            case UInt8(ascii: "-"), UInt8(ascii: "\n"): continue
            default: return nil
            }
            if let h = high {
                guard out.count < 16 else { return nil }
                out.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        return out.count == 16 && high == nil ? out : nil
    }

    /// Why `peer` is not reachable from here through the kernel, or nil when it is
    /// (same boot and pid namespace; the pid itself is proven separately).
    func mismatch(with peer: HostIdentity) -> String? {
        if peer.bootID != bootID { return "it runs on another host (its boot id differs from this one's)" }
        if peer.pidNamespaceDevice != pidNamespaceDevice || peer.pidNamespaceInode != pidNamespaceInode {
            return "it runs in another pid namespace (a container), where its pid means another process"
        }
        return nil
    }
}

/// The proof that the pid a listener announces is the process at the other end
/// of the socket: the connector sends 16 random bytes, the listener stores a
/// transform of them in its own memory and says where, the connector reads them
/// there with `process_vm_readv`. The transform keeps the connector from
/// finding the answer in its own memory (where the challenge itself is), so a
/// listener cannot point it at the connector, nor at any process into which it
/// cannot place bytes of its choosing.
enum IntraHostChallenge {
    /// Bytes stored and read back.
    static let size = 16
    private static let mask0: UInt64 = 0x4D57_2049_4E54_5241  // "MW INTRA"
    private static let mask1: UInt64 = 0x2D48_4F53_5420_5631  // "-HOST V1"

    /// The 16 bytes the listener stores for challenge `(c0, c1)`, little-endian.
    static func answer(_ c0: UInt64, _ c1: UInt64) -> (UInt64, UInt64) {
        ((c0 ^ mask0).littleEndian, (c1 ^ mask1).littleEndian)
    }
}

/// What a listener answers to a connector's intra-host probe: who it is, where
/// it stored the challenge's answer, its export table with the virtual
/// address of every export in its own memory, and which exports live in a
/// sealed memfd the connector may map. Little-endian:
/// `magic:u32 bootID:16 pidNamespaceDevice:u64 pidNamespaceInode:u64 pid:u32
/// challengeAddress:u64 tableLength:u32 table sharedCount:u32
/// { key:u32 fd:u32 fileOffset:u64 }*` (the table in ``ExportTableCodec``'s format).
///
/// It is sent only when asked (frame kind 7, after the listener flagged the
/// offer in its export-table frame), so a connector of an older MemWall, which
/// never asks, sees the protocol it knows.
struct IntraHostOffer: Sendable, Equatable {
    var identity: HostIdentity
    var challengeAddress: UInt64
    /// The exports, each `address` being byte 0 of it in the listener's memory.
    var exports: [ExportedRegionInfo]
    /// The exports a connector may map instead of copying through the kernel.
    var shared: [SharedExport] = []

    /// An export that lives in a memfd of the listener: descriptor `fd` there
    /// (the connector takes a duplicate with `pidfd_getfd`), byte 0 of the
    /// export at `fileOffset` in it.
    struct SharedExport: Sendable, Equatable {
        var key: UInt32
        var fd: Int32
        var fileOffset: UInt64
    }
    /// Bytes per shared-export entry.
    static let sharedEntrySize = 4 + 4 + 8

    static let magic: UInt32 = 0x3149_574D  // "MWI1"
    /// Bytes before the table.
    static let headSize = 4 + 16 + 8 + 8 + 4 + 8 + 4
    /// Largest offer accepted: the head, the largest export table, and a
    /// shared entry for each of its exports.
    static let maximumBytes = headSize + ExportTableCodec.maximumBytes + 4 + ExportTableCodec.maximumEntries * sharedEntrySize
    /// Largest pid Linux hands out (`PID_MAX_LIMIT` on 64-bit kernels).
    static let maximumPID: Int32 = 4_194_304

    func encode() -> [UInt8] {
        let table = ExportTableCodec.encode(exports)
        var out: [UInt8] = []
        out.reserveCapacity(Self.headSize + table.count)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(Self.magic)
        out.append(contentsOf: identity.bootID)
        put(identity.pidNamespaceDevice)
        put(identity.pidNamespaceInode)
        put(UInt32(bitPattern: identity.pid))
        put(challengeAddress)
        put(UInt32(table.count))
        out.append(contentsOf: table)
        put(UInt32(shared.count))
        for e in shared {
            put(e.key)
            put(UInt32(bitPattern: e.fd))
            put(e.fileOffset)
        }
        return out
    }

    /// Decodes a listener's offer. Total: any bytes give an offer or an error,
    /// never a trap; the work is linear in `bytes.count`.
    /// - Throws: `malformedInput` naming the field, its value and what is valid:
    ///   a wrong size or magic, a pid outside 1…4194304, a challenge address of 0
    ///   or one whose 16 bytes wrap, a table length beyond the bytes that
    ///   follow, an export at address 0 or a key used twice, what
    ///   ``ExportTableCodec/decode(_:peer:)`` refuses, or a shared entry whose
    ///   key names no export (or one named before), whose fd is negative, or
    ///   whose file range wraps; and bytes after the last entry.
    static func decode(_ bytes: UnsafeRawBufferPointer, peer: String) throws(MemWallError) -> IntraHostOffer {
        func bad(_ what: String) -> MemWallError {
            MemWallError(.malformedInput, "the intra-host offer from \(peer) is malformed: \(what); is it a MemWall peer of the same version?")
        }
        guard bytes.count >= headSize, bytes.count <= maximumBytes, let base = bytes.baseAddress else {
            throw bad("it has \(bytes.count) bytes; valid are \(headSize) to \(maximumBytes)")
        }
        func u64(_ at: Int) -> UInt64 { UInt64(littleEndian: base.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: base.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        guard u32(0) == magic else { throw bad("magic \(String(u32(0), radix: 16)), expected \(String(magic, radix: 16))") }
        let boot = Array(UnsafeRawBufferPointer(rebasing: bytes[4 ..< 20]))
        let pid = Int32(bitPattern: u32(36))
        guard pid >= 1, pid <= maximumPID else { throw bad("pid \(pid); valid are 1 to \(maximumPID)") }
        let challenge = u64(40)
        guard challenge != 0, challenge <= UInt64.max - UInt64(IntraHostChallenge.size) else {
            throw bad("challenge address \(challenge); valid is a nonzero address whose \(IntraHostChallenge.size) bytes do not wrap")
        }
        let tableLength = Int(u32(48))
        guard tableLength <= bytes.count - headSize - 4 else {
            throw bad("a table of \(tableLength) bytes announced, \(bytes.count - headSize) bytes follow (with the shared-entry count)")
        }
        let tableEnd = headSize + tableLength
        let exports = try ExportTableCodec.decode(UnsafeRawBufferPointer(rebasing: bytes[headSize ..< tableEnd]), peer: peer)
        var lengths: [UInt32: UInt64] = [:]
        for e in exports {
            guard e.address != 0 else { throw bad("export '\(e.name)' is at address 0") }
            guard lengths.updateValue(UInt64(e.byteCount), forKey: e.key) == nil else {
                throw bad("key \(String(e.key, radix: 16)) names two exports")
            }
        }
        let sharedCount = Int(u32(tableEnd))
        guard sharedCount <= exports.count, (bytes.count - tableEnd - 4) == sharedCount * sharedEntrySize else {
            throw bad("\(sharedCount) shared entries announced for \(exports.count) exports, \(bytes.count - tableEnd - 4) bytes follow (\(sharedEntrySize) per entry)")
        }
        var shared: [SharedExport] = []
        shared.reserveCapacity(sharedCount)
        var sharedKeys = Set<UInt32>()
        for i in 0 ..< sharedCount {
            let at = tableEnd + 4 + i * sharedEntrySize
            let key = u32(at)
            let fd = Int32(bitPattern: u32(at + 4))
            let offset = u64(at + 8)
            guard let length = lengths[key], sharedKeys.insert(key).inserted else {
                throw bad("shared entry \(i) names key \(String(key, radix: 16)), which no export has or an earlier entry named")
            }
            guard fd >= 0 else { throw bad("shared entry \(i) has fd \(fd)") }
            guard offset <= UInt64(Int64.max) - length else {
                throw bad("shared entry \(i) places \(length) bytes at file offset \(offset), past 2^63")
            }
            shared.append(SharedExport(key: key, fd: fd, fileOffset: offset))
        }
        return IntraHostOffer(identity: HostIdentity(bootID: boot, pidNamespaceDevice: u64(20), pidNamespaceInode: u64(28), pid: pid),
                              challengeAddress: challenge, exports: exports, shared: shared)
    }
}
