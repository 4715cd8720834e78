import MemWallCore
import Synchronization

/// The identity of one transport *instance*: a prepared transfer carries its
/// preparer's, and only that instance posts it. A name would not do (two
/// io_uring transports have the same name but different rings, fixed-file
/// slots and registrations), nor would an address (a freed transport's
/// address is reused); this number is never reused in the process.
public struct TransportIdentity: Hashable, Sendable, CustomStringConvertible {
    private static let next = Atomic<UInt64>(1)
    /// Process-unique number.
    public let rawValue: UInt64
    /// A fresh identity, never handed out before in this process.
    public init() { rawValue = TransportIdentity.next.wrappingAdd(1, ordering: .relaxed).oldValue }
    /// `"#7"`.
    public var description: String { "#\(rawValue)" }
}

/// Whether a transport moves bytes with the real mechanism or stands in for it.
public enum TransportImplementation: Sendable, Hashable, CustomStringConvertible {
    /// The real kernel or NIC path (io_uring, move_pages, RDMA verbs).
    case hardware
    /// A software stand-in with the same semantics; `reason` says why (shown to users).
    case emulation(reason: String)
    /// Cannot run on this host at all; `reason` says why.
    case unavailable(reason: String)

    /// True for `.hardware`.
    public var isHardware: Bool { if case .hardware = self { true } else { false } }
    /// True for `.emulation`.
    public var isEmulation: Bool { if case .emulation = self { true } else { false } }

    /// `"hardware"`, `"emulation (…)"`, `"unavailable (…)"`.
    public var description: String {
        switch self {
        case .hardware: "hardware"
        case .emulation(let r): "emulation (\(r))"
        case .unavailable(let r): "unavailable (\(r))"
        }
    }
}

/// What a transport declares about itself.
public struct TransportCapabilities: Sendable, Hashable {
    /// Short stable name: "numa", "io_uring", "pread-pool", "rdma", "tcp-emulation".
    public var name: String
    /// Kinds of target it moves to and from local memory.
    public var targets: Set<LocationKind>
    /// Real mechanism, emulation, or unavailable here.
    public var implementation: TransportImplementation
    /// Other paths the transport takes for some peers, chosen per peer when it
    /// connects, each with its own implementation: the TCP emulation reaches
    /// exporting processes on this host through the kernel ("intra-host").
    /// Empty for transports with one path.
    public var peerPaths: [PeerPathCapability]

    /// Creates a declaration.
    public init(name: String, targets: Set<LocationKind>, implementation: TransportImplementation,
                peerPaths: [PeerPathCapability] = []) {
        self.name = name
        self.targets = targets
        self.implementation = implementation
        self.peerPaths = peerPaths
    }
}

/// A path a transport takes for some of its peers instead of its main one.
public struct PeerPathCapability: Sendable, Hashable, CustomStringConvertible {
    /// Short stable name ("intra-host").
    public var name: String
    /// How bytes move on it and for which peers.
    public var mechanism: String
    /// Hardware (the real mechanism is usable here), or unavailable with the reason.
    public var implementation: TransportImplementation

    /// Creates a declaration.
    public init(name: String, mechanism: String, implementation: TransportImplementation) {
        self.name = name
        self.mechanism = mechanism
        self.implementation = implementation
    }

    /// `"intra-host: hardware (process_vm_readv/writev …)"`.
    public var description: String {
        implementation.isHardware ? "\(name): hardware (\(mechanism))" : "\(name): \(implementation)"
    }
}

/// One interface over every way MemWall moves bytes.
///
/// The control path is apart from the data path: register memory once (coarse
/// regions), ``prepare(_:_:)`` a descriptor list once (bounds, alignment and
/// keys checked then), and ``post(_:)`` it as often as needed. Completion is
/// per request and per descriptor, as `async` (``TransferRequest/wait()``) or
/// as a non-allocating ``TransferRequest/poll()``.
///
/// Conforming types are thread-safe: any task may post at any time.
public protocol Transport: AnyObject, Sendable {
    /// What this transport moves and how.
    var capabilities: TransportCapabilities { get }

    /// Per-path bandwidth/latency estimate fed by every finished request.
    var costEstimator: PathCostEstimator { get }

    /// This instance's identity, stamped on every transfer it prepares; make
    /// one per instance (`public let identity = TransportIdentity()`).
    var identity: TransportIdentity { get }

    /// Makes `region` usable as the local side of descriptors (pins, registers
    /// with the kernel or NIC). Registering the same region twice is an error.
    /// - Throws: `alreadyExists`, `systemCall` (e.g. memlock limit), `unsupported`.
    func register(_ region: MemoryRegion) throws(MemWallError)

    /// Undoes ``register(_:)``. Refused while a request using the region is in flight.
    /// - Throws: `notFound` for a region that is not registered, `busy`-style
    ///   `invalidArgument` while requests are in flight.
    func deregister(_ region: MemoryRegion) throws(MemWallError)

    /// Validates a descriptor list once, for posting many times.
    /// - Throws: `invalidArgument`, `outOfBounds`, `misaligned`, `unsupported`
    ///   (a target kind this transport does not move), `notFound` (unregistered region).
    func prepare(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) throws(MemWallError) -> PreparedTransfer

    /// Starts moving a prepared list; returns at once.
    /// - Throws: when nothing could be enqueued. A request that was partly
    ///   enqueued is never retried silently: its descriptors report their own status.
    func post(_ prepared: PreparedTransfer) throws(MemWallError) -> TransferRequest

    /// Finishes with the transport: work not yet handed to the kernel or NIC
    /// ends as cancelled, work in flight completes, then its threads, rings
    /// and listeners are released. Later posts are refused with `misuse`.
    /// Idempotent; `deinit` calls it when the owner did not (the safety net,
    /// not the plan: a deinit runs wherever the last reference drops).
    func close()
}

/// Whether a transport was closed: one flag, checked on every post, so a
/// post after ``Transport/close()`` is refused rather than queued forever.
package final class ClosedFlag: Sendable {
    private let closed = Atomic<Bool>(false)
    /// Open.
    package init() {}
    /// Marks it closed; true for the first call only (the one that tears down).
    package func close() -> Bool { !closed.exchange(true, ordering: .acquiringAndReleasing) }
    /// Whether ``close()`` was called.
    package var isClosed: Bool { closed.load(ordering: .acquiring) }
    /// - Throws: `misuse` once closed.
    package func check(_ transport: String) throws(MemWallError) {
        if isClosed {
            throw MemWallError(.misuse, "the '\(transport)' transport was closed; make a new one to move more data")
        }
    }
}

extension Transport {
    /// Short name.
    public var name: String { capabilities.name }

    /// Posts several prepared lists; each becomes its own request. Transports
    /// that can submit them in one system call override this.
    public func post(batch: [PreparedTransfer]) throws(MemWallError) -> [TransferRequest] {
        var out: [TransferRequest] = []
        out.reserveCapacity(batch.count)
        for p in batch { out.append(try post(p)) }
        return out
    }

    /// Prepares, posts and waits: convenience for one-off moves.
    @discardableResult
    public func transfer(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) async throws(MemWallError) -> TransferReport {
        let prepared = try prepare(operation, descriptors)
        return try await post(prepared).wait()
    }

    /// Checks that a prepared list came from this very instance (not just a
    /// transport of the same name: its plan names this instance's fixed-buffer
    /// and fixed-file slots, keys and connections).
    /// - Throws: `misuse` for a list prepared by another instance.
    public func checkOwnership(_ prepared: PreparedTransfer) throws(MemWallError) {
        guard prepared.preparedBy == identity else {
            throw MemWallError(.misuse,
                "transfer prepared by '\(prepared.transportName)' \(prepared.preparedBy) cannot be posted on '\(capabilities.name)' \(identity); prepare it on the transport that posts it")
        }
    }

    /// The transport-private plan of a list this instance prepared.
    /// - Throws: `misuse` for a list prepared by another instance.
    package func plan<Plan>(of prepared: PreparedTransfer, as _: Plan.Type) throws(MemWallError) -> Plan {
        try checkOwnership(prepared)
        guard let plan = prepared.plan as? Plan else {
            throw MemWallError(.misuse, "transfer \(prepared.preparedBy) carries no plan of '\(capabilities.name)'")
        }
        return plan
    }

    /// Validates every descriptor and its target kind (shared part of `prepare`).
    public func validateDescriptors(_ descriptors: [TransferDescriptor]) throws(MemWallError) {
        guard !descriptors.isEmpty else {
            throw .invalid("descriptor list", "[]", expected: "at least one descriptor")
        }
        for (i, d) in descriptors.enumerated() {
            guard capabilities.targets.contains(d.target.kind) else {
                throw MemWallError(.unsupported,
                    "transport '\(name)' does not move \(d.target.kind) targets (descriptor \(i)); it moves \(capabilities.targets.map(\.rawValue).sorted().joined(separator: ", "))")
            }
            try d.validate(index: i)
        }
    }
}
