import MemWallCore

/// The kind of place a transfer's far side is; transports declare which they move.
public enum LocationKind: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    /// Host memory on a NUMA node: DRAM, or CXL / far memory on a CPU-less node.
    case memory
    /// A file or block device range (NVMe through io_uring).
    case storage
    /// A region a peer exported (RDMA, or its TCP emulation).
    case remote
    /// The raw value.
    public var description: String { rawValue }
}

/// Direction of a transfer, seen from the local memory region (NIXL's convention).
public enum TransferOperation: String, Sendable, Hashable, Codable, CustomStringConvertible {
    /// Target → local region.
    case read
    /// Local region → target.
    case write
    /// The raw value.
    public var description: String { rawValue }
}

/// Access a peer granted on an exported region.
public struct RemoteAccess: OptionSet, Sendable, Hashable {
    /// Bit set.
    public let rawValue: UInt8
    /// Wraps bits.
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Peers may read (RDMA READ).
    public static let read = RemoteAccess(rawValue: 1)
    /// Peers may write (RDMA WRITE).
    public static let write = RemoteAccess(rawValue: 2)
}

/// A region that a peer exported under a name, as this side knows it.
///
/// Created by a remote-capable transport when it resolves a name; the
/// `connection` reference keeps the path to the peer alive while descriptors
/// point at it.
public final class RemoteSegment: Sendable, Hashable, CustomStringConvertible {
    /// Peer identity ("10.0.0.2:18515", "rxe0/127.0.0.1:7471").
    public let peer: String
    /// Name the region was exported under ("kv/session-47291").
    public let name: String
    /// Exported length in bytes.
    public let byteCount: Int
    /// What the peer allows.
    public let access: RemoteAccess
    /// Remote virtual address (RDMA) or region token (emulation).
    package let remoteAddress: UInt64
    /// RDMA rkey, or the emulation's equivalent key.
    package let remoteKey: UInt32
    /// Keeps the connection that resolved this segment alive.
    package let connection: any AnyObject & Sendable

    /// Created by transports only.
    package init(peer: String, name: String, byteCount: Int, access: RemoteAccess,
                 remoteAddress: UInt64, remoteKey: UInt32, connection: any AnyObject & Sendable) {
        self.peer = peer
        self.name = name
        self.byteCount = byteCount
        self.access = access
        self.remoteAddress = remoteAddress
        self.remoteKey = remoteKey
        self.connection = connection
    }

    /// Identity comparison.
    public static func == (a: RemoteSegment, b: RemoteSegment) -> Bool { a === b }
    /// Identity hash.
    public func hash(into h: inout Hasher) { h.combine(ObjectIdentifier(self)) }
    /// `"kv/session-1 @ peer (64 MiB, rw)"`.
    public var description: String {
        let rw = (access.contains(.read) ? "r" : "") + (access.contains(.write) ? "w" : "")
        return "\(name) @ \(peer) (\(ByteCount(byteCount)), \(rw))"
    }
}

/// The far side of one descriptor.
public enum TransferTarget: Sendable, Hashable, CustomStringConvertible {
    /// Another memory region (e.g. on the CXL node).
    case memory(MemoryRegion)
    /// A file or block device.
    case storage(StorageTarget)
    /// A peer's exported region.
    case remote(RemoteSegment)

    /// The target's kind.
    public var kind: LocationKind {
        switch self {
        case .memory: .memory
        case .storage: .storage
        case .remote: .remote
        }
    }

    /// Length of the target in bytes.
    public var byteCount: Int64 {
        switch self {
        case .memory(let r): Int64(r.byteCount)
        case .storage(let s): s.byteCount
        case .remote(let r): Int64(r.byteCount)
        }
    }

    /// Identity comparison of the underlying object.
    public static func == (a: TransferTarget, b: TransferTarget) -> Bool {
        switch (a, b) {
        case let (.memory(x), .memory(y)): x === y
        case let (.storage(x), .storage(y)): x === y
        case let (.remote(x), .remote(y)): x === y
        default: false
        }
    }

    /// Identity hash.
    public func hash(into h: inout Hasher) {
        switch self {
        case .memory(let r): h.combine(ObjectIdentifier(r))
        case .storage(let s): h.combine(ObjectIdentifier(s))
        case .remote(let r): h.combine(ObjectIdentifier(r))
        }
    }

    /// What it names.
    public var description: String {
        switch self {
        case .memory(let r): r.description
        case .storage(let s): s.description
        case .remote(let r): r.description
        }
    }
}

/// One contiguous move: `length` bytes between a local region and a target.
public struct TransferDescriptor: Sendable, Hashable {
    /// The local, registered memory.
    public var local: MemoryRegion
    /// Offset in `local`.
    public var localOffset: Int
    /// The far side.
    public var target: TransferTarget
    /// Offset in the target.
    public var targetOffset: Int64
    /// Bytes to move.
    public var length: Int

    /// Creates a descriptor.
    public init(local: MemoryRegion, localOffset: Int = 0, target: TransferTarget, targetOffset: Int64 = 0, length: Int) {
        self.local = local
        self.localOffset = localOffset
        self.target = target
        self.targetOffset = targetOffset
        self.length = length
    }

    /// Identity-based equality of the regions plus the ranges.
    public static func == (a: TransferDescriptor, b: TransferDescriptor) -> Bool {
        a.local === b.local && a.localOffset == b.localOffset && a.target == b.target
            && a.targetOffset == b.targetOffset && a.length == b.length
    }

    /// Hash of the same fields.
    public func hash(into h: inout Hasher) {
        h.combine(ObjectIdentifier(local)); h.combine(localOffset); h.combine(target)
        h.combine(targetOffset); h.combine(length)
    }

    /// Checks lengths and both ranges; every transport calls this in `prepare`.
    /// - Throws: `invalidArgument` for a non-positive length, `outOfBounds` naming the range.
    public func validate(index: Int) throws(MemWallError) {
        guard length > 0 else {
            throw .invalid("length of descriptor \(index)", length, expected: "a positive number of bytes")
        }
        try local.checkBounds(offset: localOffset, length: length)
        let size = target.byteCount
        guard targetOffset >= 0, Int64(length) <= size, targetOffset <= size - Int64(length) else {
            throw MemWallError(.outOfBounds,
                "descriptor \(index): target range \(targetOffset)..<\(targetOffset + Int64(length)) is outside \(target) of \(size) bytes")
        }
    }
}
