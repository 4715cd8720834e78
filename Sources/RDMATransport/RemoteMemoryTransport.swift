import MemWallCore
import Transport

/// A region that a peer announced under a name, as listed in its export table.
public struct ExportedRegionInfo: Sendable, Hashable, CustomStringConvertible {
    /// Name the peer exported it under ("kv/session-47291").
    public var name: String
    /// Length in bytes.
    public var byteCount: Int
    /// What the peer allows this side to do.
    public var access: RemoteAccess
    /// Remote virtual address (RDMA) or the emulation's base token.
    package var address: UInt64
    /// RDMA rkey, or the emulation's per-export key.
    package var key: UInt32

    package init(name: String, byteCount: Int, access: RemoteAccess, address: UInt64, key: UInt32) {
        self.name = name
        self.byteCount = byteCount
        self.access = access
        self.address = address
        self.key = key
    }

    /// `"kv/slot-3 (1 MiB, rw)"`.
    public var description: String {
        let rw = (access.contains(.read) ? "r" : "") + (access.contains(.write) ? "w" : "")
        return "\(name) (\(ByteCount(byteCount)), \(rw))"
    }
}

/// A notification a peer sent after the data of one of its transfers landed here.
public struct RemoteNotification: Sendable, Hashable {
    /// Who sent it ("127.0.0.1:40122").
    public var peer: String
    /// The 32-bit value the sender attached (a session id, a slot number).
    public var value: UInt32

    /// Creates a notification record.
    public init(peer: String, value: UInt32) {
        self.peer = peer
        self.value = value
    }
}

/// What a connection object must offer a ``RemotePeer``.
package protocol RemoteConnectionHandle: AnyObject, Sendable {
    /// False once the peer went away or ``disconnect()`` ran.
    var isConnected: Bool { get }
    /// Closes the connection; descriptors still in flight fail with `disconnected`.
    func disconnect()
}

/// A connection to a peer, and the table of regions that peer exported.
///
/// The table is the one the peer sent when the connection was established;
/// regions it exports later are seen after reconnecting.
public final class RemotePeer: Sendable, CustomStringConvertible {
    /// `"127.0.0.1:18515"`, with the device for RDMA (`"rxe0/127.0.0.1:18515"`).
    public let address: String
    /// Every region the peer exported, in its order.
    public let exports: [ExportedRegionInfo]
    /// How bytes reach this peer (RDMA, TCP, or the intra-host path), decided
    /// when the connection was set up; the TCP label says why the intra-host
    /// path was not taken.
    public let path: RemotePeerPath
    package let connection: any RemoteConnectionHandle

    package init(address: String, exports: [ExportedRegionInfo], path: RemotePeerPath, connection: any RemoteConnectionHandle) {
        self.address = address
        self.exports = exports
        self.path = path
        self.connection = connection
    }

    /// Looks up the region exported under `name`, for use as a descriptor target.
    /// - Throws: `notFound` naming the regions the peer does export.
    public func segment(named name: String) throws(MemWallError) -> RemoteSegment {
        guard let e = exports.first(where: { $0.name == name }) else {
            let known = exports.map(\.name)
            throw MemWallError(.notFound,
                "peer \(address) exports no region named '\(name)'; it exports "
                    + (known.isEmpty ? "nothing" : known.map { "'\($0)'" }.joined(separator: ", ")))
        }
        return RemoteSegment(peer: address, name: e.name, byteCount: e.byteCount, access: e.access,
                             remoteAddress: e.address, remoteKey: e.key, connection: connection)
    }

    /// True while the connection is up.
    public var isConnected: Bool { connection.isConnected }

    /// Closes the connection. Idempotent.
    public func disconnect() { connection.disconnect() }

    /// `"peer 127.0.0.1:18515 (2 exports, intra-host (…))"`.
    public var description: String { "peer \(address) (\(exports.count) exports, \(path))" }
}

/// A transport whose targets are regions other processes or hosts exported
/// by name: RDMA verbs, or its TCP emulation.
///
/// The receiving side ``export(_:offset:length:as:access:)``s parts of its
/// registered memory and ``listen(address:port:)``s; the sending side
/// ``connect(address:port:timeout:)``s, resolves names to
/// ``RemoteSegment``s with ``RemotePeer/segment(named:)`` and moves bytes
/// with one-sided READ and WRITE. The receiver's CPU takes no part in the
/// data path on RDMA; in the emulation a receiver thread places the bytes.
public protocol RemoteMemoryTransport: Transport {
    /// Makes `length` bytes of `region` at `offset` reachable by peers under `name`.
    /// Peers connecting afterwards see it in their export table.
    /// - Parameters:
    ///   - access: What peers may do; remote write is granted only when asked for.
    /// - Throws: `alreadyExists` for a name in use, `outOfBounds`, `invalidArgument`
    ///   for an empty name or empty access, `systemCall` from registration.
    func export(_ region: MemoryRegion, offset: Int, length: Int, as name: String, access: RemoteAccess) throws(MemWallError)

    /// Withdraws a name from peers that connect later.
    /// - Throws: `notFound` for a name that was never exported.
    func unexport(_ name: String) throws(MemWallError)

    /// Starts accepting connections; returns the port (useful with port 0).
    /// - Throws: `invalidArgument` for an address that is not IPv4, `systemCall` from bind.
    func listen(address: String, port: UInt16) throws(MemWallError) -> UInt16

    /// Connects to a listening peer and receives its export table.
    /// - Throws: `disconnected` when nothing listens there, `timedOut`, `invalidArgument`.
    func connect(address: String, port: UInt16, timeout: Duration) throws(MemWallError) -> RemotePeer

    /// The one posting entry point each remote transport implements: posts
    /// `prepared` and, when `notifyValue` is given, a notification that the peer
    /// sees only after all of the transfer's data has landed. Callers use
    /// ``Transport/post(_:)`` or ``post(_:notify:)``.
    func post(_ prepared: PreparedTransfer, notifyValue: UInt32?) throws(MemWallError) -> TransferRequest

    /// Waits for the next notification a peer sent to this side.
    /// - Throws: `timedOut` when none arrives within `timeout`.
    func nextNotification(timeout: Duration) async throws(MemWallError) -> RemoteNotification
}

extension RemoteMemoryTransport {
    /// Starts moving a prepared list; returns at once.
    public func post(_ prepared: PreparedTransfer) throws(MemWallError) -> TransferRequest {
        try post(prepared, notifyValue: nil)
    }

    /// Posts a prepared WRITE and, after all of its data has landed at the
    /// peer, delivers `value` to the peer's ``nextNotification(timeout:)``.
    /// - Throws: `invalidArgument` for a READ (notifications follow writes).
    public func post(_ prepared: PreparedTransfer, notify value: UInt32) throws(MemWallError) -> TransferRequest {
        guard prepared.operation == .write else {
            throw MemWallError(.invalidArgument, "notifications follow WRITE transfers; this one is a \(prepared.operation)")
        }
        return try post(prepared, notifyValue: value)
    }

    /// Exports a whole region under `name`.
    public func export(_ region: MemoryRegion, as name: String, access: RemoteAccess) throws(MemWallError) {
        try export(region, offset: 0, length: region.byteCount, as: name, access: access)
    }
}

extension Duration {
    /// Whole nanoseconds, saturating at zero for negative durations.
    var nanosecondsClamped: UInt64 {
        let (s, a) = components
        if s < 0 { return 0 }
        return UInt64(s) &* 1_000_000_000 &+ UInt64(max(a, 0) / 1_000_000_000)
    }
}
