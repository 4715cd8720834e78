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
///
/// A peer on this host is reached without the network stack: when the
/// listener offers it and proves it runs on this host (same boot id and pid
/// namespace, its pid shown by a challenge read from its memory), every
/// descriptor becomes one `process_vm_readv`/`process_vm_writev` on the
/// posting thread — one copy by the kernel, complete when ``post(_:notifyValue:)``
/// returns — or, for exports of shareable regions
/// (``MemoryRegion/allocateShared(byteCount:placement:)``), a `memcpy` into
/// the peer's memfd mapped here; the socket carries only notifications. The kernel allows this
/// only to a peer that may ptrace the exporter; any other peer, and any peer
/// when ``RemoteTransportOptions/intraHost`` is `off`, is served over TCP.
/// ``RemotePeer/path`` says which path a peer got and why, and
/// ``capabilities`` lists the intra-host path in `peerPaths`.
public final class TCPEmulationTransport: RemoteMemoryTransport {
    /// Declares "tcp-emulation": remote targets, in software; and the intra-host
    /// path, with whether this host allows it, among its `peerPaths`.
    public let capabilities: TransportCapabilities
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
    /// What listeners offer peers on this host; nil when the path is off or unavailable here.
    private let intraHostServing: IntraHostServing?

    /// Creates the emulation.
    /// - Parameters:
    ///   - options: Queue depth and timeouts.
    ///   - funnel: System-call door; tests inject socket faults here ("read", "write").
    /// - Throws: `invalidArgument` for bad options.
    public init(options: RemoteTransportOptions = RemoteTransportOptions(), funnel: SyscallFunnel = .system) throws(MemWallError) {
        try options.validate()
        self.options = options
        self.funnel = funnel
        let intraHost = IntraHostSupport.capability(options.intraHost)
        self.capabilities = TransportCapabilities(
            name: "tcp-emulation", targets: [.remote],
            implementation: .emulation(reason: "no RDMA device in use; one-sided READ/WRITE emulated over TCP"),
            peerPaths: [intraHost])
        self.intraHostServing = intraHost.implementation.isHardware ? (try? HostIdentity.current()).map(IntraHostServing.init) : nil
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

    /// Forgets `region`; refused while exported, in flight, or known to a
    /// connected peer on the intra-host path (which reaches its memory itself).
    public func deregister(_ region: MemoryRegion) throws(MemWallError) {
        if !exports.uses(region), intraHostServing?.isRevealed(region) == true {
            throw MemWallError(.invalidArgument,
                "\(region.id) was exported to peers on the intra-host path, which write and read its memory themselves; they keep its address until they disconnect")
        }
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

    /// Listens on `address:port` (loopback by default) and serves peers from a
    /// thread per connection, offering peers on this host the intra-host path
    /// unless ``RemoteTransportOptions/intraHost`` is `off`; with
    /// `grant-same-user`, lets processes of this user attach (see ``IntraHostPolicy``).
    public func listen(address: String = "127.0.0.1", port: UInt16) throws(MemWallError) -> UInt16 {
        if options.intraHost == .grantSameUser, intraHostServing != nil { _ = IntraHostSupport.grantSameUser }
        let l = try TCPListener(address: address, port: port,
                                serving: .init(exports: exports, notifications: notifications, funnel: funnel, intraHost: intraHostServing))
        listeners.withLock { $0.append(l) }
        return l.port
    }

    /// The intra-host path as a transport with `policy` would declare it in
    /// ``capabilities``: hardware where this host allows `process_vm_*` (with
    /// who may attach), else unavailable with the reason.
    public static func intraHostCapability(_ policy: IntraHostPolicy) -> PeerPathCapability {
        IntraHostSupport.capability(policy)
    }

    /// What listeners of this transport offer peers on this host, for labels:
    /// `"offered; …"` or `"not offered: …"`.
    public var intraHostListening: String {
        guard intraHostServing != nil else {
            return "not offered: " + (capabilities.peerPaths.first.map { "\($0.implementation)" } ?? "unavailable")
        }
        return "offered to peers on this host"
            + (options.intraHost == .grantSameUser ? "; \(IntraHostSupport.grantSameUser)" : "; \(IntraHostSupport.ptraceRule)")
    }

    /// Connects to a listening peer and reads its export table; takes the
    /// intra-host path when the peer offers it and proves it is on this host
    /// (``RemotePeer/path`` says which path, and why not the other).
    public func connect(address: String, port: UInt16, timeout: Duration = .seconds(5)) throws(MemWallError) -> RemotePeer {
        let conn = try TCPClientConnection(address: address, port: port, timeout: timeout, options: options, funnel: funnel)
        return RemotePeer(address: conn.peerName, exports: conn.exports, path: conn.path, connection: conn)
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
        /// TCP: the offset in the export, as the wire carries it.
        let remote: UInt64
        /// Intra-host: where the bytes are, checked against the table the peer sent.
        let intraHost: IntraHostChannel.Target?
    }

    /// The resolved descriptors; when they all go to one peer on the
    /// intra-host path, also the moves, built once here for every post.
    struct Plan: Sendable {
        let items: [PlanItem]
        let intraHostMoves: [IntraHostChannel.Move]?
    }

    /// Validates descriptors, resolves keys and registrations; on the
    /// intra-host path, also the peer address of every descriptor.
    /// - Throws: as ``Transport/prepare(_:_:)``; `remoteAccess` when the peer
    ///   did not grant the operation on that region, or (intra-host) when a
    ///   descriptor falls outside what the peer exported under that key.
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
            let remote: UInt64
            var target: IntraHostChannel.Target?
            if let channel = conn.intraHost {
                let t = try channel.resolve(key: seg.remoteKey, base: seg.remoteAddress, offset: UInt64(d.targetOffset), length: d.length,
                                            need: operation == .read ? .read : .write, index: i)
                target = t
                remote = 0
            } else {
                remote = seg.remoteAddress &+ UInt64(d.targetOffset)
            }
            items.append(PlanItem(connection: conn, registration: try registrations.registration(of: d.local), key: seg.remoteKey,
                                  remote: remote, intraHost: target))
        }
        var moves: [IntraHostChannel.Move]?
        if let first = items.first?.connection, first.intraHost != nil, items.allSatisfy({ $0.connection === first }) {
            moves = zip(descriptors, items).compactMap { d, item in
                item.intraHost.map { IntraHostChannel.Move(local: d.local.baseAddress + d.localOffset, target: $0, length: d.length) }
            }
        }
        return PreparedTransfer(operation: operation, descriptors: descriptors, preparedBy: self, plan: Plan(items: items, intraHostMoves: moves))
    }

    /// Hands the descriptors to their connections' sender threads, then the
    /// optional notification, which the peer sees only after the data landed.
    /// Returns at once.
    ///
    /// Descriptors to peers on the intra-host path are moved before this
    /// returns (their request is then complete); the others go to their
    /// connections' sender threads.
    public func post(_ prepared: PreparedTransfer, notifyValue: UInt32?) throws(MemWallError) -> TransferRequest {
        let plan = try plan(of: prepared, as: Plan.self)
        let items = plan.items
        for item in items where !item.connection.isConnected {
            throw MemWallError(.disconnected, "the connection to \(item.connection.peerName) is closed; connect again and prepare anew")
        }
        for item in items { try registrations.requireCurrent(item.registration) }
        if let moves = plan.intraHostMoves, let connection = items.first?.connection, let channel = connection.intraHost {
            let request = TransferRequest(prepared: prepared, estimator: costEstimator)
            move(prepared.operation, moves, items: items, indices: nil, on: channel, connection, request, notifyValue)
            return request
        }
        let tcpConnections = Self.distinctConnections(items.filter { $0.connection.intraHost == nil })
        let request = TransferRequest(prepared: prepared, estimator: costEstimator) { request in
            for c in tcpConnections { c.purge(request) }
        }
        // One connection per request is the common case; group otherwise, keeping order per connection.
        var byConnection: [ObjectIdentifier: (TCPClientConnection, [Int])] = [:]
        var order: [ObjectIdentifier] = []
        for (i, item) in items.enumerated() {
            let k = ObjectIdentifier(item.connection)
            if byConnection[k] == nil { byConnection[k] = (item.connection, []); order.append(k) }
            byConnection[k]?.1.append(i)
        }
        for k in order {
            guard let (c, indices) = byConnection[k] else { continue }
            if let channel = c.intraHost {
                let moves = indices.compactMap { i in
                    let d = prepared.descriptors[i]
                    return items[i].intraHost.map { IntraHostChannel.Move(local: d.local.baseAddress + d.localOffset, target: $0, length: d.length) }
                }
                move(prepared.operation, moves, items: items, indices: indices, on: channel, c, request, notifyValue)
                continue
            }
            let ops = indices.map { i -> TCPClientConnection.Operation in
                let d = prepared.descriptors[i]
                items[i].registration.retain()
                return .init(request: request, index: i, isRead: prepared.operation == .read, key: items[i].key,
                             remoteOffset: items[i].remote, local: d.local.baseAddress + d.localOffset,
                             length: d.length, registration: items[i].registration)
            }
            c.enqueue(ops, notify: notifyValue)
        }
        return request
    }

    /// Moves one connection's descriptors on its intra-host path now (move `k`
    /// is descriptor `indices[k]`, or `k` without `indices`), then queues the
    /// notification, which the peer thus sees after every byte landed.
    private func move(_ operation: TransferOperation, _ moves: [IntraHostChannel.Move], items: [PlanItem], indices: [Int]?,
                      on channel: IntraHostChannel, _ connection: TCPClientConnection, _ request: TransferRequest, _ notifyValue: UInt32?) {
        for k in moves.indices { items[indices?[k] ?? k].registration.retain() }
        let alive = channel.move(operation, moves) { k, result in
            let i = indices?[k] ?? k
            request.complete(descriptor: i, result, releasing: items[i].registration.use)
        }
        if !alive {
            connection.close(because: MemWallError(.disconnected, "\(connection.peerName) (pid \(channel.pid)) has exited"))
        } else if let notifyValue {
            connection.enqueue([], notify: notifyValue)
        }
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
