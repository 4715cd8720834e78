#if canImport(Glibc)
import Glibc
#endif
import CIBVerbs
import MemWallCore
import Synchronization
import Transport

/// One-sided RDMA READ and WRITE into regions peers exported by name, over
/// libibverbs RC queue pairs connected with librdmacm.
///
/// One protection domain per transport; local regions are registered once
/// (local write only) and reused for every transfer; an exported region gets
/// one more registration per access set — remote write only when it was
/// exported for writing — shared by every named slot cut from it. The
/// receiver's CPU copies nothing: the NIC places WRITE data in the exported
/// memory and serves READs from it.
public final class RDMATransport: RemoteMemoryTransport {
    /// Declares "rdma": remote targets, in hardware.
    public let capabilities: TransportCapabilities
    /// Per-path estimate fed by finished requests.
    public let costEstimator = PathCostEstimator()
    /// This instance; only it posts what it prepared.
    public let identity = TransportIdentity()
    /// Options in force.
    public let options: RemoteTransportOptions
    /// The RDMA device in use ("rxe0").
    public var deviceName: String { device.name }
    /// How connections are set up.
    public let connectionManager: RDMAConnectionManager
    /// The IPv4 addresses the device serves (those of the interface it is bound
    /// to): the addresses to listen on and to give peers.
    public var localAddresses: [String] { device.ipv4Addresses() }

    let device: VerbsDevice
    let domain: ProtectionDomain
    let maxReadDepth: Int
    private let registrations = RegionTable<VerbsMemoryRegistration?>(transportName: "rdma")
    private let exportRegistrations = Mutex<[ExportKey: VerbsMemoryRegistration]>([:])
    private let exports = ExportTable()
    private let notifications = NotificationQueue()
    private let listeners = Mutex<[any RDMAListening]>([])
    private let connections = Mutex<[WeakConnection]>([])

    private struct ExportKey: Hashable {
        var region: ObjectIdentifier
        var access: UInt8
    }

    private struct WeakConnection: Sendable {
        weak var connection: RDMAConnection?
    }

    /// Names of RDMA devices on this host (empty when there is no RDMA).
    public static func availableDevices() -> [String] { VerbsDevice.availableNames() }

    /// Opens `device` and allocates its protection domain.
    /// - Parameters:
    ///   - connectionManager: librdmacm (default), or the socket exchange where
    ///     rdmacm cannot route (soft-RoCE on lo). Both ends must use the same.
    /// - Throws: `notFound` for a device that does not exist (naming those that do),
    ///   `invalidArgument` for bad options, `systemCall` from ibv_alloc_pd.
    public init(device name: String, options: RemoteTransportOptions = RemoteTransportOptions(),
                connectionManager: RDMAConnectionManager = .rdmacm) throws(MemWallError) {
        try options.validate()
        self.connectionManager = connectionManager
        let device = try VerbsDevice.open(named: name)
        self.device = device
        self.domain = try ProtectionDomain(device: device)
        self.maxReadDepth = device.maxReadDepth()
        self.options = options
        self.capabilities = TransportCapabilities(name: "rdma", targets: [.remote], implementation: .hardware)
    }

    deinit { close() }

    /// Stops listening and disconnects accepted peers. Connections this side
    /// opened close when their ``RemotePeer`` is disconnected or released.
    public func close() {
        let ls = listeners.withLock { l -> [any RDMAListening] in defer { l = [] }; return l }
        for l in ls { l.stop() }
    }

    // MARK: Registration and exports

    /// Registers `region` with the NIC for local access (no remote rights).
    public func register(_ region: MemoryRegion) throws(MemWallError) {
        try registrations.register(region) { () throws(MemWallError) -> VerbsMemoryRegistration? in
            try VerbsMemoryRegistration(domain: domain, region: region, remoteAccess: [])
        }
    }

    /// Deregisters `region` (and the registrations its exports used).
    public func deregister(_ region: MemoryRegion) throws(MemWallError) {
        try registrations.deregister(region, exported: exports.uses(region), transport: name)
        let id = ObjectIdentifier(region)
        exportRegistrations.withLock { t in
            for k in t.keys where k.region == id { t.removeValue(forKey: k) }
        }
    }

    /// Number of verbs memory registrations alive (local plus export), for tests and reports.
    public var registrationCount: Int {
        registrations.count + exportRegistrations.withLock { $0.count }
    }

    /// Exports a range of a registered region. The registration for
    /// (region, access) is made once and shared by every name cut from it.
    ///
    /// The NIC enforces the bounds of that registration, not of the slot: a
    /// peer that forges a longer range reaches the other slots cut from the
    /// same region. Give each distrusted peer its own region (the TCP
    /// emulation checks every slot's bounds in software).
    /// A remote access error moves the peer's queue pair to the error state:
    /// that connection is closed, and the peer must reconnect.
    public func export(_ region: MemoryRegion, offset: Int, length: Int, as name: String, access: RemoteAccess) throws(MemWallError) {
        try ExportTable.validate(region, offset: offset, length: length, name: name, access: access)
        _ = try registrations.registration(of: region)
        let key = ExportKey(region: ObjectIdentifier(region), access: access.rawValue)
        let mr: VerbsMemoryRegistration
        if let cached = exportRegistrations.withLock({ $0[key] }) {
            mr = cached
        } else {
            let made = try VerbsMemoryRegistration(domain: domain, region: region, remoteAccess: access)
            mr = exportRegistrations.withLock { t in
                if let other = t[key] { return other }
                t[key] = made
                return made
            }
        }
        let address = UInt64(UInt(bitPattern: region.baseAddress)) + UInt64(offset)
        try exports.add(LocalExport(name: name, region: region, offset: offset, length: length, access: access,
                                    key: mr.rkey, address: address, registration: mr))
    }

    /// Withdraws `name` from peers that connect later. Peers that already
    /// hold its rkey keep access until the region is deregistered.
    public func unexport(_ name: String) throws(MemWallError) { try exports.remove(name) }

    /// Names currently exported.
    public var exportedRegions: [ExportedRegionInfo] { exports.snapshot }

    // MARK: Connections

    /// Listens with librdmacm on `address:port` of this transport's device.
    public func listen(address: String = "127.0.0.1", port: UInt16) throws(MemWallError) -> UInt16 {
        let served = ListenerContext(domain: domain, exports: exports, notifications: notifications, maxReadDepth: maxReadDepth)
        let l: any RDMAListening = switch connectionManager {
        case .rdmacm: try RDMAListener(address: address, port: port, serving: served)
        case .socketExchange: try RDMASocketListener(address: address, port: port, serving: served)
        }
        listeners.withLock { $0.append(l) }
        return l.port
    }

    /// Connects with librdmacm, establishes an RC queue pair and receives the export table.
    public func connect(address: String, port: UInt16, timeout: Duration = .seconds(5)) throws(MemWallError) -> RemotePeer {
        let conn = try RDMAConnection(address: address, port: port, timeout: timeout, device: device, domain: domain,
                                      maxReadDepth: maxReadDepth, options: options, manager: connectionManager)
        connections.withLock { c in
            c.removeAll { $0.connection == nil }
            c.append(WeakConnection(connection: conn))
        }
        return RemotePeer(address: conn.peerName, exports: conn.exports, path: .rdma(device: device.name), connection: conn)
    }

    /// Polls every connection this side opened once, on the calling thread.
    ///
    /// Needed only with ``RemoteTransportOptions/completionThread`` off: then
    /// nothing completes until someone calls this, as in perftest's loops.
    /// - Returns: Completions handled.
    @discardableResult
    public func progress() -> Int {
        var n = 0
        // Iterate under the lock without copying: polling never calls back into this transport.
        connections.withLock { cs in
            for c in cs { if let conn = c.connection { n += conn.progress() } }
        }
        return n
    }

    /// A poller bound to one peer's connection, for hot loops: no lock, no
    /// allocation and no dynamic cast per call.
    /// - Throws: `invalidArgument` for a peer connected by another transport.
    public func completionPoller(for peer: RemotePeer) throws(MemWallError) -> CompletionPoller {
        guard let c = peer.connection as? RDMAConnection else {
            throw MemWallError(.invalidArgument, "\(peer) was not connected by '\(name)'")
        }
        return CompletionPoller(connection: c)
    }

    /// Polls the connection to one peer once (no lock, no allocation): the hot-loop form of ``progress()``.
    /// - Returns: Completions handled; 0 for a peer of another transport.
    @discardableResult
    public func progress(_ peer: RemotePeer) -> Int {
        (peer.connection as? RDMAConnection)?.progress() ?? 0
    }

    /// Waits for the next notification (a WRITE_WITH_IMM's immediate value).
    public func nextNotification(timeout: Duration) async throws(MemWallError) -> RemoteNotification {
        try await notifications.next(timeout: timeout)
    }

    /// Blocking form of ``nextNotification(timeout:)`` for plain threads.
    public func nextNotificationBlocking(timeout: Duration) throws(MemWallError) -> RemoteNotification {
        try notifications.nextBlocking(timeout: timeout)
    }

    // MARK: Data path

    /// What `prepare` resolves once, so that a post only binds the request:
    /// per connection, the work requests to post; the registrations to check;
    /// the cancel handler.
    final class Plan: Sendable {
        struct Group: Sendable {
            let connection: RDMAConnection
            let templates: [RDMAConnection.Operation]
            /// Where a notification is aimed (any valid remote address and rkey of that peer).
            let notifyAddress: UInt64
            let notifyKey: UInt32
        }
        let groups: [Group]
        /// Each local registration the descriptors use, once.
        let registrations: [LocalRegistration]
        /// Withdraws a request's not-yet-posted work from every connection.
        let cancel: @Sendable (TransferRequest) -> Void

        init(groups: [Group], registrations: [LocalRegistration]) {
            self.groups = groups
            self.registrations = registrations
            let connections = groups.map(\.connection)
            self.cancel = { request in for c in connections { c.purge(request) } }
        }
    }

    /// Validates descriptors and resolves lkeys, remote addresses and rkeys once.
    public func prepare(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) throws(MemWallError) -> PreparedTransfer {
        try validateDescriptors(descriptors)
        var groups: [(RDMAConnection, [RDMAConnection.Operation])] = []
        let kind: RDMAConnection.Operation.Kind = operation == .read ? .read : .write
        for (i, d) in descriptors.enumerated() {
            guard case .remote(let seg) = d.target else { continue }
            guard let conn = seg.connection as? RDMAConnection else {
                throw MemWallError(.invalidArgument,
                    "descriptor \(i): segment '\(seg.name)' was resolved by another transport; resolve it with a peer of '\(name)'")
            }
            guard d.length <= Int(UInt32.max) else {
                throw .invalid("length of descriptor \(i)", d.length, expected: "at most 4 GiB - 1 per RDMA work request")
            }
            try RemoteAccessCheck.check(operation, seg, index: i)
            let reg = try registrations.registration(of: d.local)
            let op = RDMAConnection.Operation(request: nil, index: i, opcode: kind,
                                              localAddress: UInt64(UInt(bitPattern: d.local.baseAddress + d.localOffset)),
                                              lkey: reg.memoryRegistration?.lkey ?? 0, length: d.length,
                                              remoteAddress: seg.remoteAddress &+ UInt64(d.targetOffset), rkey: seg.remoteKey,
                                              immediate: 0, registration: reg)
            if let g = groups.firstIndex(where: { $0.0 === conn }) { groups[g].1.append(op) } else { groups.append((conn, [op])) }
        }
        var used: [LocalRegistration] = []
        for (_, ops) in groups {
            for op in ops { if let r = op.registration, !used.contains(where: { $0 === r }) { used.append(r) } }
        }
        let plan = Plan(groups: groups.map { c, ops in
            Plan.Group(connection: c, templates: ops, notifyAddress: ops.last?.remoteAddress ?? 0, notifyKey: ops.last?.rkey ?? 0)
        }, registrations: used)
        return PreparedTransfer(operation: operation, descriptors: descriptors, preparedBy: self, plan: plan)
    }

    /// Posts the work requests (up to the send-queue depth at once) and, for a
    /// notification, a zero-length WRITE_WITH_IMM after them: RC ordering makes
    /// the peer see it only after the data landed. Returns at once.
    public func post(_ prepared: PreparedTransfer, notifyValue: UInt32?) throws(MemWallError) -> TransferRequest {
        let plan = try plan(of: prepared, as: Plan.self)
        for g in plan.groups where !g.connection.isConnected {
            throw MemWallError(.disconnected, "the connection to \(g.connection.peerName) is closed; connect again and prepare anew")
        }
        for reg in plan.registrations { try registrations.requireCurrent(reg) }
        let request = TransferRequest(prepared: prepared, estimator: costEstimator, onCancel: plan.cancel)
        for g in plan.groups {
            g.connection.submit(g.templates, for: request,
                                notification: notifyValue.map { .init(address: g.notifyAddress, key: g.notifyKey, value: $0) })
        }
        return request
    }
}

/// Polls one connection's completion queue on the caller's thread (see
/// ``RemoteTransportOptions/completionThread``).
public final class CompletionPoller: Sendable {
    private let connection: RDMAConnection

    init(connection: RDMAConnection) { self.connection = connection }

    /// One pass over the completion queue.
    /// - Returns: Completions handled.
    @inline(__always) @discardableResult
    public func poll() -> Int { connection.progress() }
}

/// What the transport needs of either kind of listener.
protocol RDMAListening: Sendable {
    var port: UInt16 { get }
    func stop()
}

extension RDMAListener: RDMAListening {}
extension RDMASocketListener: RDMAListening {}
