#if canImport(Glibc)
import Glibc
#endif
import CIBVerbs
import CRDMACM
import MemWallCore
import Transport

// Ownership of verbs objects is in the types: every child holds a strong
// reference to its parent (MR → PD → device, QP → PD + CQ + CM id → event
// channel), so Swift's release order destroys children first, and each
// object's `deinit` is the one place its C resource is freed.

/// An RDMA device context, as librdmacm opened it.
///
/// librdmacm opens every device once per process and owns those contexts; a
/// protection domain and queue pairs created by rdmacm must live on that same
/// context, so MemWall uses rdmacm's rather than opening a second one.
final class VerbsDevice: Sendable {
    nonisolated(unsafe) let context: UnsafeMutablePointer<ibv_context>
    /// Kernel name, e.g. "rxe0".
    let name: String

    private init(context: UnsafeMutablePointer<ibv_context>, name: String) {
        self.context = context
        self.name = name
    }

    /// Names of the RDMA devices librdmacm can use (empty without RDMA).
    static func availableNames() -> [String] {
        var n: Int32 = 0
        guard let list = rdma_get_devices(&n) else { return [] }
        defer { rdma_free_devices(list) }
        return (0 ..< Int(n)).compactMap { i in
            list[i].flatMap { ibv_get_device_name($0.pointee.device) }.map { String(cString: $0) }
        }
    }

    /// The context of the device called `name`.
    /// - Throws: `notFound` naming the devices that do exist.
    static func open(named name: String) throws(MemWallError) -> VerbsDevice {
        var n: Int32 = 0
        guard let list = rdma_get_devices(&n) else {
            let e = Errno.current
            throw MemWallError(.notFound,
                "RDMA device '\(name)' does not exist: librdmacm finds no RDMA devices on this host (load rdma_rxe and run `rdma link add rxe0 type rxe netdev lo` for soft-RoCE)",
                function: "rdma_get_devices", errno: e)
        }
        defer { rdma_free_devices(list) }
        var names: [String] = []
        for i in 0 ..< Int(n) {
            guard let ctx = list[i], let cName = ibv_get_device_name(ctx.pointee.device) else { continue }
            let s = String(cString: cName)
            if s == name { return VerbsDevice(context: ctx, name: s) }
            names.append(s)
        }
        // Name what does exist, with port states, as `memwall capabilities` shows them.
        let probe = RDMAProbe.probe()
        let described = probe.devices.map { d in
            d.name + " (" + (d.ports.isEmpty ? (d.error ?? "no ports") : d.ports.map { "port \($0.number) \($0.state)" }.joined(separator: ", ")) + ")"
        }
        throw MemWallError(.notFound,
            "RDMA device '\(name)' does not exist; devices here: "
                + (described.isEmpty ? (names.isEmpty ? "none" : names.joined(separator: ", ")) : described.joined(separator: ", ")))
    }

    /// Largest number of outstanding RDMA READs a queue pair may issue (max_qp_init_rd_atom).
    func maxReadDepth() -> Int {
        var attr = ibv_device_attr()
        guard ibv_query_device(context, &attr) == 0 else { return 1 }
        return Int(max(1, min(attr.max_qp_init_rd_atom, attr.max_qp_rd_atom)))
    }

    /// Port state of `port` (1-based): "ACTIVE", "DOWN", …
    func portState(_ port: UInt8 = 1) throws(MemWallError) -> String {
        var attr = ibv_port_attr()
        // ibv_query_port is a macro; the real entry point is ___ibv_query_port.
        try CCall.returnsErrno(___ibv_query_port(context, port, &attr), "ibv_query_port",
                               "cannot query port \(port) of \(name)")
        return String(cString: ibv_port_state_str(attr.state))
    }
}

/// A protection domain: memory registrations and queue pairs must share one to work together.
final class ProtectionDomain: Sendable {
    let device: VerbsDevice
    nonisolated(unsafe) let pd: UnsafeMutablePointer<ibv_pd>

    init(device: VerbsDevice) throws(MemWallError) {
        self.device = device
        self.pd = try CCall.nonNull(ibv_alloc_pd(device.context), "ibv_alloc_pd",
                                    "cannot allocate a protection domain on \(device.name)")
    }

    deinit {
        let rc = ibv_dealloc_pd(pd)
        if rc != 0 { StandardError.reportUnfreed("an RDMA protection domain", function: "ibv_dealloc_pd", errno: Errno(rawValue: rc)) }
    }
}

/// One memory registration (`ibv_reg_mr`): pins the pages and gives the keys.
final class VerbsMemoryRegistration: Sendable {
    /// Keeps the PD alive while the registration exists.
    let domain: ProtectionDomain
    /// Keeps the pages alive while the NIC may access them.
    let region: MemoryRegion
    nonisolated(unsafe) let mr: UnsafeMutablePointer<ibv_mr>
    /// Local key for scatter/gather entries.
    let lkey: UInt32
    /// Remote key peers present (meaningful only with remote access flags).
    let rkey: UInt32
    /// Access granted to peers.
    let remoteAccess: RemoteAccess

    /// Registers the whole region with local write plus exactly the remote access asked for.
    init(domain: ProtectionDomain, region: MemoryRegion, remoteAccess: RemoteAccess) throws(MemWallError) {
        self.domain = domain
        self.region = region
        self.remoteAccess = remoteAccess
        var flags = IBV_ACCESS_LOCAL_WRITE.rawValue
        if remoteAccess.contains(.write) { flags |= IBV_ACCESS_REMOTE_WRITE.rawValue }
        if remoteAccess.contains(.read) { flags |= IBV_ACCESS_REMOTE_READ.rawValue }
        let mr = ibv_reg_mr(domain.pd, region.baseAddress, region.byteCount, Int32(flags))
        guard let mr else {
            let e = Errno.current
            let hint = e == .noMemory || e == .notPermitted
                ? "; the locked-memory limit (ulimit -l) is probably too low for \(ByteCount(region.byteCount))" : ""
            throw .system("ibv_reg_mr", e.rawValue == 0 ? .noMemory : e,
                          "cannot register \(region.id) (\(ByteCount(region.byteCount))) with \(domain.device.name)" + hint)
        }
        self.mr = mr
        self.lkey = mr.pointee.lkey
        self.rkey = mr.pointee.rkey
    }

    deinit {
        let rc = ibv_dereg_mr(mr)
        if rc != 0 { StandardError.reportUnfreed("an RDMA memory registration", function: "ibv_dereg_mr", errno: Errno(rawValue: rc)) }
    }
}

/// A completion queue and the completion channel that wakes a sleeping poller.
final class CompletionQueue: Sendable {
    let device: VerbsDevice
    nonisolated(unsafe) let channel: UnsafeMutablePointer<ibv_comp_channel>
    nonisolated(unsafe) let cq: UnsafeMutablePointer<ibv_cq>
    let capacity: Int

    init(device: VerbsDevice, entries: Int) throws(MemWallError) {
        self.device = device
        let ch = try CCall.nonNull(ibv_create_comp_channel(device.context), "ibv_create_comp_channel",
                                   "cannot create a completion channel on \(device.name)")
        guard let cq = ibv_create_cq(device.context, Int32(entries), nil, ch, 0) else {
            let e = Errno.current
            ibv_destroy_comp_channel(ch)
            throw .system("ibv_create_cq", e, "cannot create a completion queue of \(entries) entries on \(device.name)")
        }
        // Non-blocking, so a poller woken by poll(2) never blocks in ibv_get_cq_event.
        let flags = fcntl(ch.pointee.fd, F_GETFL)
        _ = fcntl(ch.pointee.fd, F_SETFL, flags | O_NONBLOCK)
        self.channel = ch
        self.cq = cq
        self.capacity = entries
    }

    /// Asks for an event on the next completion.
    func arm() { _ = ibv_req_notify_cq(cq, 0) }

    /// Sleeps until the channel fires or `milliseconds` pass; acknowledges the event.
    /// - Returns: Whether the channel fired (false: the time ran out).
    @discardableResult
    func sleep(milliseconds: Int32) -> Bool {
        var p = pollfd(fd: channel.pointee.fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, milliseconds) > 0 else { return false }
        consumeEvent()
        return true
    }

    /// The completion channel's descriptor, readable after an armed completion.
    var eventDescriptor: Int32 { channel.pointee.fd }

    /// Takes and acknowledges the channel's pending event, if any (the channel
    /// is non-blocking, so this never waits).
    func consumeEvent() {
        var evCQ: UnsafeMutablePointer<ibv_cq>?
        var ctx: UnsafeMutableRawPointer?
        if ibv_get_cq_event(channel, &evCQ, &ctx) == 0, let evCQ { ibv_ack_cq_events(evCQ, 1) }
    }

    deinit {
        let rc = ibv_destroy_cq(cq)
        if rc != 0 { StandardError.reportUnfreed("an RDMA completion queue", function: "ibv_destroy_cq", errno: Errno(rawValue: rc)) }
        if ibv_destroy_comp_channel(channel) != 0 {
            StandardError.reportUnfreed("an RDMA completion channel", function: "ibv_destroy_comp_channel", errno: .current)
        }
    }
}

/// A librdmacm event channel (connection events arrive here).
final class CMEventChannel: Sendable {
    nonisolated(unsafe) let channel: UnsafeMutablePointer<rdma_event_channel>

    init() throws(MemWallError) {
        guard let ch = rdma_create_event_channel() else {
            let e = Errno.current
            if e == .noDevice || e == .noEntry {
                throw MemWallError(.unsupported, "librdmacm has no RDMA device to use on this host; use the TCP emulation",
                                   function: "rdma_create_event_channel", errno: e)
            }
            throw .system("rdma_create_event_channel", e, "cannot create an RDMA connection-manager channel")
        }
        let flags = fcntl(ch.pointee.fd, F_GETFL)
        _ = fcntl(ch.pointee.fd, F_SETFL, flags | O_NONBLOCK)
        self.channel = ch
    }

    /// The channel's descriptor, readable when an event is pending.
    var eventDescriptor: Int32 { channel.pointee.fd }

    /// One event, copied out and acknowledged, or nil when none came within `milliseconds`.
    func next(milliseconds: Int32) -> CMEvent? {
        var p = pollfd(fd: channel.pointee.fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, milliseconds) > 0 else { return nil }
        var ev: UnsafeMutablePointer<rdma_cm_event>?
        guard rdma_get_cm_event(channel, &ev) == 0, let ev else { return nil }
        let out = CMEvent(kind: ev.pointee.event, status: ev.pointee.status, id: UInt(bitPattern: ev.pointee.id),
                          listenID: UInt(bitPattern: ev.pointee.listen_id))
        rdma_ack_cm_event(ev)
        return out
    }

    /// Waits for the event that ends a step of the handshake on `id`.
    /// - Throws: `timedOut`, or the error the event reports.
    func expect(_ wanted: rdma_cm_event_type, on id: UInt, deadline: UInt64, step: String, peer: String) throws(MemWallError) {
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else {
                throw MemWallError(.timedOut, "\(step) for \(peer) did not finish in time")
            }
            let ms = Int32(clamping: (deadline - now) / 1_000_000 + 1)
            guard let ev = next(milliseconds: ms) else { continue }
            if ev.id != id { continue }
            if ev.kind == wanted { return }
            throw ev.error(step: step, peer: peer)
        }
    }

    deinit { rdma_destroy_event_channel(channel) }
}

/// A connection-manager event, copied out of librdmacm's buffer before it is acknowledged.
struct CMEvent: Sendable {
    let kind: rdma_cm_event_type
    let status: Int32
    let id: UInt
    let listenID: UInt

    var name: String { String(cString: rdma_event_str(kind)) }

    func error(step: String, peer: String) -> MemWallError {
        switch kind {
        case RDMA_CM_EVENT_REJECTED, RDMA_CM_EVENT_UNREACHABLE, RDMA_CM_EVENT_CONNECT_ERROR:
            return MemWallError(.disconnected,
                "nothing accepted the RDMA connection at \(peer) (\(name), status \(status)); start the peer (memwall rdma-serve) or check the address and port",
                function: "rdma_connect", errno: status < 0 ? Errno(rawValue: -status) : nil)
        case RDMA_CM_EVENT_ADDR_ERROR:
            return MemWallError(.notFound,
                "no RDMA device reaches \(peer) (\(name)): connect to an address of the interface an RDMA device is bound to, or one routed through it (see `rdma link`)", function: "rdma_resolve_addr",
                errno: status < 0 ? Errno(rawValue: -status) : nil)
        case RDMA_CM_EVENT_ROUTE_ERROR:
            return MemWallError(.notFound, "no RDMA route to \(peer) (\(name)); a device bound to lo has none — bind it to an interface with a routable address, or use the socket exchange (--cm socket)", function: "rdma_resolve_route",
                                errno: status < 0 ? Errno(rawValue: -status) : nil)
        default:
            return MemWallError(.disconnected, "\(step) for \(peer) got \(name) (status \(status))")
        }
    }
}

/// A connection-manager identifier (the RDMA analogue of a socket).
final class CMIdentifier: Sendable {
    /// The channel its events arrive on.
    let channel: CMEventChannel
    nonisolated(unsafe) let id: UnsafeMutablePointer<rdma_cm_id>

    init(channel: CMEventChannel) throws(MemWallError) {
        self.channel = channel
        var id: UnsafeMutablePointer<rdma_cm_id>?
        try CCall.minusOne(rdma_create_id(channel.channel, &id, nil, RDMA_PS_TCP), "rdma_create_id",
                           "cannot create an RDMA connection identifier")
        guard let id else { throw .system("rdma_create_id", .noMemory, "rdma_create_id returned no identifier") }
        self.id = id
    }

    /// Adopts an identifier librdmacm created for an incoming connection on `channel`.
    init(adopting id: UnsafeMutablePointer<rdma_cm_id>, channel: CMEventChannel) {
        self.channel = channel
        self.id = id
    }

    var key: UInt { UInt(bitPattern: id) }

    /// Name of the device the identifier is bound to, once its address is resolved.
    var deviceName: String? {
        guard let v = id.pointee.verbs, let n = ibv_get_device_name(v.pointee.device) else { return nil }
        return String(cString: n)
    }

    deinit {
        if rdma_destroy_id(id) != 0 {
            StandardError.reportUnfreed("an rdmacm identifier", function: "rdma_destroy_id", errno: .current)
        }
    }
}

/// How a queue pair learns its peer: what one side sends the other in the
/// socket exchange (the connection manager does this itself on `rdmacm`).
struct QueuePairEndpoint: Sendable, Hashable {
    var queuePairNumber: UInt32
    var packetSequenceNumber: UInt32
    var gid: [UInt8]

    static let wireSize = 24

    func encode() -> [UInt8] {
        var out: [UInt8] = []
        withUnsafeBytes(of: queuePairNumber.littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: packetSequenceNumber.littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: gid.prefix(16))
        while out.count < Self.wireSize { out.append(0) }
        return out
    }

    init(queuePairNumber: UInt32, packetSequenceNumber: UInt32, gid: [UInt8]) {
        self.queuePairNumber = queuePairNumber
        self.packetSequenceNumber = packetSequenceNumber
        self.gid = gid
    }

    /// Decodes `wireSize` bytes a peer sent.
    /// - Throws: `malformedInput` when the queue-pair number or PSN does not fit the 24 bits verbs uses.
    static func decode(_ bytes: UnsafeRawPointer, peer: String) throws(MemWallError) -> QueuePairEndpoint {
        let e = QueuePairEndpoint(bytes: bytes)
        guard e.queuePairNumber < 1 << 24, e.packetSequenceNumber < 1 << 24 else {
            throw MemWallError(.malformedInput,
                "\(peer) sent queue pair \(e.queuePairNumber) with PSN \(e.packetSequenceNumber); both are 24-bit numbers (below \(1 << 24))")
        }
        return e
    }

    private init(bytes: UnsafeRawPointer) {
        queuePairNumber = UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self))
        packetSequenceNumber = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        gid = Array(UnsafeRawBufferPointer(start: bytes + 8, count: 16))
    }
}

extension VerbsDevice {
    /// The GID table index holding `address` as an IPv4-mapped GID (RoCE), or nil.
    func gidIndex(for address: in_addr, port: UInt8 = 1) -> (Int, [UInt8])? {
        var want = [UInt8](repeating: 0, count: 16)
        want[10] = 0xFF
        want[11] = 0xFF
        withUnsafeBytes(of: address.s_addr) { for i in 0 ..< 4 { want[12 + i] = $0[i] } }
        var found: (Int, [UInt8])?
        for i in 0 ..< 64 {
            var gid = ibv_gid()
            guard ibv_query_gid(context, port, Int32(i), &gid) == 0 else { break }
            let bytes = withUnsafeBytes(of: gid.raw) { Array($0) }
            // rxe lists each address once per RoCE version; the later entry is RoCE v2.
            if bytes == want { found = (i, bytes) }
        }
        return found
    }

    /// The IPv4 addresses the port serves, read from its IPv4-mapped (RoCE) GIDs:
    /// the addresses of the interface the device is bound to, in GID-table order.
    func ipv4Addresses(port: UInt8 = 1) -> [String] {
        var out: [String] = []
        for i in 0 ..< 64 {
            var gid = ibv_gid()
            guard ibv_query_gid(context, port, Int32(i), &gid) == 0 else { break }
            let b = withUnsafeBytes(of: gid.raw) { Array($0) }
            guard b[0 ..< 10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF else { continue }
            let text = "\(b[12]).\(b[13]).\(b[14]).\(b[15])"
            if !out.contains(text) { out.append(text) }
        }
        return out
    }

    /// The port's active MTU.
    func activeMTU(port: UInt8 = 1) throws(MemWallError) -> ibv_mtu {
        var attr = ibv_port_attr()
        try CCall.returnsErrno(___ibv_query_port(context, port, &attr), "ibv_query_port", "cannot query port \(port) of \(name)")
        return attr.active_mtu
    }
}

/// A reliable-connected queue pair.
///
/// It has no public operations: only ``RDMAConnection`` (built after the
/// connection is established) and the listener post on it. With rdmacm it
/// lives on a connection identifier; with the socket exchange it is created
/// on the protection domain and walked through INIT → RTR → RTS here.
final class QueuePair: Sendable {
    let identifier: CMIdentifier?
    let domain: ProtectionDomain
    let completionQueue: CompletionQueue
    nonisolated(unsafe) let qp: UnsafeMutablePointer<ibv_qp>
    let sendDepth: Int
    let receiveDepth: Int

    private static func initAttributes(_ cq: CompletionQueue, sendDepth: Int, receiveDepth: Int) -> ibv_qp_init_attr {
        var attr = ibv_qp_init_attr()
        attr.send_cq = cq.cq
        attr.recv_cq = cq.cq
        attr.qp_type = IBV_QPT_RC
        attr.sq_sig_all = 0
        attr.cap.max_send_wr = UInt32(sendDepth)
        attr.cap.max_recv_wr = UInt32(receiveDepth)
        attr.cap.max_send_sge = 1
        attr.cap.max_recv_sge = 1
        return attr
    }

    /// Creates the queue pair on an rdmacm identifier (rdmacm drives its states).
    init(identifier: CMIdentifier, domain: ProtectionDomain, completionQueue: CompletionQueue,
         sendDepth: Int, receiveDepth: Int) throws(MemWallError) {
        self.identifier = identifier
        self.domain = domain
        self.completionQueue = completionQueue
        var attr = Self.initAttributes(completionQueue, sendDepth: sendDepth, receiveDepth: receiveDepth)
        try CCall.minusOne(rdma_create_qp(identifier.id, domain.pd, &attr), "rdma_create_qp",
                           "cannot create a queue pair with \(sendDepth) send and \(receiveDepth) receive entries on \(domain.device.name)")
        guard let qp = identifier.id.pointee.qp else {
            throw .system("rdma_create_qp", .noMemory, "rdma_create_qp succeeded but left no queue pair")
        }
        self.qp = qp
        self.sendDepth = sendDepth
        self.receiveDepth = receiveDepth
    }

    /// Creates the queue pair on the protection domain and moves it to INIT.
    init(domain: ProtectionDomain, completionQueue: CompletionQueue, sendDepth: Int, receiveDepth: Int) throws(MemWallError) {
        self.identifier = nil
        self.domain = domain
        self.completionQueue = completionQueue
        var attr = Self.initAttributes(completionQueue, sendDepth: sendDepth, receiveDepth: receiveDepth)
        self.qp = try CCall.nonNull(ibv_create_qp(domain.pd, &attr), "ibv_create_qp",
                                    "cannot create a queue pair with \(sendDepth) send and \(receiveDepth) receive entries on \(domain.device.name)")
        self.sendDepth = sendDepth
        self.receiveDepth = receiveDepth
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_INIT
        a.pkey_index = 0
        a.port_num = 1
        a.qp_access_flags = IBV_ACCESS_REMOTE_READ.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue | IBV_ACCESS_LOCAL_WRITE.rawValue
        let mask = IBV_QP_STATE.rawValue | IBV_QP_PKEY_INDEX.rawValue | IBV_QP_PORT.rawValue | IBV_QP_ACCESS_FLAGS.rawValue
        try CCall.returnsErrno(ibv_modify_qp(qp, &a, Int32(mask)), "ibv_modify_qp", "cannot move the queue pair to INIT")
    }

    /// This side's endpoint for the socket exchange.
    func endpoint(psn: UInt32, gid: [UInt8]) -> QueuePairEndpoint {
        QueuePairEndpoint(queuePairNumber: qp.pointee.qp_num, packetSequenceNumber: psn, gid: gid)
    }

    /// INIT → RTR → RTS towards `remote`.
    func connect(to remote: QueuePairEndpoint, localPSN: UInt32, gidIndex: Int, mtu: ibv_mtu, readDepth: Int) throws(MemWallError) {
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_RTR
        a.path_mtu = mtu
        a.dest_qp_num = remote.queuePairNumber
        a.rq_psn = remote.packetSequenceNumber
        a.max_dest_rd_atomic = UInt8(clamping: readDepth)
        a.min_rnr_timer = 12
        a.ah_attr.is_global = 1
        withUnsafeMutableBytes(of: &a.ah_attr.grh.dgid.raw) { dst in
            for i in 0 ..< min(16, remote.gid.count) { dst[i] = remote.gid[i] }
        }
        a.ah_attr.grh.sgid_index = UInt8(clamping: gidIndex)
        a.ah_attr.grh.hop_limit = 64
        a.ah_attr.port_num = 1
        var mask = IBV_QP_STATE.rawValue | IBV_QP_AV.rawValue | IBV_QP_PATH_MTU.rawValue | IBV_QP_DEST_QPN.rawValue
            | IBV_QP_RQ_PSN.rawValue | IBV_QP_MAX_DEST_RD_ATOMIC.rawValue | IBV_QP_MIN_RNR_TIMER.rawValue
        try CCall.returnsErrno(ibv_modify_qp(qp, &a, Int32(mask)), "ibv_modify_qp", "cannot move the queue pair to RTR")
        a = ibv_qp_attr()
        a.qp_state = IBV_QPS_RTS
        a.timeout = 14
        a.retry_cnt = 7
        a.rnr_retry = 7
        a.sq_psn = localPSN
        a.max_rd_atomic = UInt8(clamping: readDepth)
        mask = IBV_QP_STATE.rawValue | IBV_QP_TIMEOUT.rawValue | IBV_QP_RETRY_CNT.rawValue | IBV_QP_RNR_RETRY.rawValue
            | IBV_QP_SQ_PSN.rawValue | IBV_QP_MAX_QP_RD_ATOMIC.rawValue
        try CCall.returnsErrno(ibv_modify_qp(qp, &a, Int32(mask)), "ibv_modify_qp", "cannot move the queue pair to RTS")
    }

    /// Moves the queue pair to the error state: the NIC stops it and flushes posted work.
    func moveToError() {
        if let identifier {
            _ = rdma_disconnect(identifier.id)
            return
        }
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_ERR
        _ = ibv_modify_qp(qp, &a, Int32(IBV_QP_STATE.rawValue))
    }

    /// Posts a receive for `length` bytes at `address` (0 length: a notification slot).
    func postReceive(id: UInt64, address: UnsafeMutableRawPointer?, length: Int, lkey: UInt32) throws(MemWallError) {
        var sge = ibv_sge(addr: UInt64(UInt(bitPattern: address)), length: UInt32(length), lkey: lkey)
        var wr = ibv_recv_wr()
        wr.wr_id = id
        var bad: UnsafeMutablePointer<ibv_recv_wr>?
        let rc = withUnsafeMutablePointer(to: &sge) { s -> Int32 in
            wr.sg_list = length > 0 ? s : nil
            wr.num_sge = length > 0 ? 1 : 0
            return ibv_post_recv(qp, &wr, &bad)
        }
        try CCall.returnsErrno(rc, "ibv_post_recv", "cannot post a receive on the queue pair")
    }

    deinit {
        if let identifier {
            rdma_destroy_qp(identifier.id)  // void: rdmacm reports nothing
        } else {
            let rc = ibv_destroy_qp(qp)
            if rc != 0 { StandardError.reportUnfreed("an RDMA queue pair", function: "ibv_destroy_qp", errno: Errno(rawValue: rc)) }
        }
    }
}
