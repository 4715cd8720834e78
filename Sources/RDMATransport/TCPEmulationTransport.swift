#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization
import Transport

/// One-sided READ and WRITE into regions a peer exported by name, emulated
/// over TCP when this host has no RDMA device.
///
/// Semantics match ``RDMATransport``: the sender names a remote region and an
/// offset; the receiver's application does nothing per transfer. A receiver
/// thread per connection checks every descriptor against the exported bounds,
/// key and permissions before it places a single byte, so no peer reaches
/// memory that was not exported to it. Many descriptors are in flight per
/// connection (pipelined), and a notification is delivered only after every
/// byte sent before it has landed. Always labelled "emulation".
///
/// One difference from RDMA: a descriptor the receiver refuses (bad key,
/// bounds, permission) fails alone with `remoteAccess` and the connection
/// stays up, where RDMA's queue pair would enter the error state.
public final class TCPEmulationTransport: RemoteMemoryTransport {
    /// Declares "tcp-emulation": remote targets, in software.
    public let capabilities = TransportCapabilities(
        name: "tcp-emulation", targets: [.remote],
        implementation: .emulation(reason: "no RDMA device in use; one-sided READ/WRITE emulated over TCP"))
    /// Per-path estimate fed by finished requests.
    public let costEstimator = PathCostEstimator()
    /// This instance; only it posts what it prepared.
    public let identity = TransportIdentity()
    /// Options in force.
    public let options: RemoteTransportOptions

    let funnel: SyscallFunnel
    private let registrations = RegionTable<VerbsMemoryRegistration?>(transportName: "tcp-emulation")
    private let exports = ExportTable()
    private let notifications = NotificationQueue()
    private let listeners = Mutex<[TCPListener]>([])
    private let nextKey = Atomic<UInt32>(0x5EED_0001)

    /// Creates the emulation.
    /// - Parameters:
    ///   - options: Queue depth and timeouts.
    ///   - funnel: System-call door; tests inject socket faults here ("read", "write").
    /// - Throws: `invalidArgument` for bad options.
    public init(options: RemoteTransportOptions = RemoteTransportOptions(), funnel: SyscallFunnel = .system) throws(MemWallError) {
        try options.validate()
        self.options = options
        self.funnel = funnel
        // A peer closing mid-write must surface as EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
    }

    deinit { close() }

    /// Stops listening and closes every accepted connection. Connections this
    /// side opened close when their ``RemotePeer`` is disconnected or released.
    public func close() {
        let ls = listeners.withLock { l -> [TCPListener] in defer { l = [] }; return l }
        for l in ls { l.stop() }
    }

    // MARK: Registration and exports

    /// Records `region` as local memory for descriptors (the emulation pins nothing).
    public func register(_ region: MemoryRegion) throws(MemWallError) {
        try registrations.register(region) { () throws(MemWallError) -> VerbsMemoryRegistration? in nil }
    }

    /// Forgets `region`; refused while exported or in flight.
    public func deregister(_ region: MemoryRegion) throws(MemWallError) {
        try registrations.deregister(region, exported: exports.uses(region), transport: name)
    }

    /// Exports part of a registered region under `name`, with its own key.
    public func export(_ region: MemoryRegion, offset: Int, length: Int, as name: String, access: RemoteAccess) throws(MemWallError) {
        try ExportTable.validate(region, offset: offset, length: length, name: name, access: access)
        _ = try registrations.registration(of: region)
        let key = nextKey.wrappingAdd(0x9E37_79B1, ordering: .relaxed).newValue
        try exports.add(LocalExport(name: name, region: region, offset: offset, length: length, access: access,
                                    key: key, address: 0, registration: nil))
    }

    /// Withdraws `name`; connections that already know its key are refused from now on.
    public func unexport(_ name: String) throws(MemWallError) { try exports.remove(name) }

    /// Names currently exported.
    public var exportedRegions: [ExportedRegionInfo] { exports.snapshot }

    // MARK: Connections

    /// Listens on `address:port` (loopback by default) and serves peers from a thread per connection.
    public func listen(address: String = "127.0.0.1", port: UInt16) throws(MemWallError) -> UInt16 {
        let l = try TCPListener(address: address, port: port,
                                serving: .init(exports: exports, notifications: notifications, funnel: funnel))
        listeners.withLock { $0.append(l) }
        return l.port
    }

    /// Connects to a listening peer and reads its export table.
    public func connect(address: String, port: UInt16, timeout: Duration = .seconds(5)) throws(MemWallError) -> RemotePeer {
        let conn = try TCPClientConnection(address: address, port: port, timeout: timeout, options: options, funnel: funnel)
        return RemotePeer(address: conn.peerName, exports: conn.exports, connection: conn)
    }

    /// Waits for the next notification from any peer.
    public func nextNotification(timeout: Duration) async throws(MemWallError) -> RemoteNotification {
        try await notifications.next(timeout: timeout)
    }

    /// Blocking form of ``nextNotification(timeout:)`` for plain threads.
    public func nextNotificationBlocking(timeout: Duration) throws(MemWallError) -> RemoteNotification {
        try notifications.nextBlocking(timeout: timeout)
    }

    // MARK: Data path

    struct PlanItem: Sendable {
        let connection: TCPClientConnection
        let registration: LocalRegistration
        let key: UInt32
        let remoteOffset: UInt64
    }

    /// Validates descriptors, resolves keys and registrations.
    /// - Throws: as ``Transport/prepare(_:_:)``; `remoteAccess` when the peer
    ///   did not grant the operation on that region.
    public func prepare(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) throws(MemWallError) -> PreparedTransfer {
        try validateDescriptors(descriptors)
        var items: [PlanItem] = []
        items.reserveCapacity(descriptors.count)
        for (i, d) in descriptors.enumerated() {
            guard case .remote(let seg) = d.target else { continue }
            guard let conn = seg.connection as? TCPClientConnection else {
                throw MemWallError(.invalidArgument,
                    "descriptor \(i): segment '\(seg.name)' was resolved by another transport; resolve it with a peer of '\(name)'")
            }
            try RemoteAccessCheck.check(operation, seg, index: i)
            items.append(PlanItem(connection: conn, registration: try registrations.registration(of: d.local),
                                  key: seg.remoteKey, remoteOffset: seg.remoteAddress &+ UInt64(d.targetOffset)))
        }
        return PreparedTransfer(operation: operation, descriptors: descriptors, preparedBy: self, plan: items)
    }

    /// Hands the descriptors to their connections' sender threads, then the
    /// optional notification, which the peer sees only after the data landed.
    /// Returns at once.
    public func post(_ prepared: PreparedTransfer, notifyValue: UInt32?) throws(MemWallError) -> TransferRequest {
        let items = try plan(of: prepared, as: [PlanItem].self)
        for item in items where !item.connection.isConnected {
            throw MemWallError(.disconnected, "the connection to \(item.connection.peerName) is closed; connect again and prepare anew")
        }
        for item in items { try registrations.requireCurrent(item.registration) }
        let connections = Self.distinctConnections(items)
        let request = TransferRequest(prepared: prepared, estimator: costEstimator) { request in
            for c in connections { c.purge(request) }
        }
        var ops: [TCPClientConnection.Operation] = []
        ops.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            let d = prepared.descriptors[i]
            item.registration.retain()
            ops.append(.init(request: request, index: i, isRead: prepared.operation == .read, key: item.key,
                             remoteOffset: item.remoteOffset, local: d.local.baseAddress + d.localOffset,
                             length: d.length, registration: item.registration))
        }
        // One connection per request is the common case; group otherwise, keeping order per connection.
        var byConnection: [ObjectIdentifier: (TCPClientConnection, [TCPClientConnection.Operation])] = [:]
        var order: [ObjectIdentifier] = []
        for (i, op) in ops.enumerated() {
            let c = items[i].connection
            let k = ObjectIdentifier(c)
            if byConnection[k] == nil { byConnection[k] = (c, []); order.append(k) }
            byConnection[k]?.1.append(op)
        }
        for k in order {
            guard let (c, list) = byConnection[k] else { continue }
            c.enqueue(list, notify: notifyValue)
        }
        return request
    }
}

extension TCPEmulationTransport {
    static func distinctConnections(_ items: [PlanItem]) -> [TCPClientConnection] {
        var seen = Set<ObjectIdentifier>()
        return items.compactMap { seen.insert(ObjectIdentifier($0.connection)).inserted ? $0.connection : nil }
    }
}

/// Client-side checks that the peer granted an operation on a segment.
enum RemoteAccessCheck {
    static func check(_ op: TransferOperation, _ seg: RemoteSegment, index: Int) throws(MemWallError) {
        let need: RemoteAccess = op == .read ? .read : .write
        guard seg.access.contains(need) else {
            throw MemWallError(.remoteAccess,
                "descriptor \(index): peer \(seg.peer) exported '\(seg.name)' without \(op) access; ask it to export with \(op) access")
        }
    }
}
