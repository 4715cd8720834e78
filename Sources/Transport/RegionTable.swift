import MemWallCore
import Synchronization

/// One region's registration with one transport: what the transport attached
/// to it (a fixed-buffer slot, a verbs memory registration) and how many
/// posted descriptors use it now. A new object per `register`, so a plan
/// that kept one can tell that its region was deregistered (and maybe
/// registered again) since (``RegionTable/requireCurrent(_:)``).
package final class RegionRegistration<Attachment: Sendable>: Sendable {
    /// The registered region.
    package let region: MemoryRegion
    /// What the transport attached to it.
    package let attachment: Attachment
    /// Descriptors in flight that use it.
    package let use = RegionUse()

    init(region: MemoryRegion, attachment: Attachment) {
        self.region = region
        self.attachment = attachment
    }
}

/// The one registration table every transport keeps: which regions are
/// registered, what the transport attached to each, and how many posted
/// descriptors still use each one — so that deregistering a region the
/// kernel or NIC may still write is refused.
package final class RegionTable<Attachment: Sendable>: Sendable {
    private let entries = Mutex<[RegionID: RegionRegistration<Attachment>]>([:])
    private let transportName: String

    /// - Parameter transportName: Named in error messages.
    package init(transportName: String) { self.transportName = transportName }

    /// Adds `region`; `attach` runs under the table lock, only when the region is new.
    /// - Throws: `alreadyExists` for a region registered twice, or what `attach` throws.
    package func register(_ region: MemoryRegion, attach: () throws(MemWallError) -> Attachment) throws(MemWallError) {
        try entries.withLock { (t: inout [RegionID: RegionRegistration<Attachment>]) throws(MemWallError) in
            guard t[region.id] == nil else {
                throw MemWallError(.alreadyExists,
                    "\(region) is already registered with '\(transportName)'; register each region once and reuse it")
            }
            t[region.id] = RegionRegistration(region: region, attachment: try attach())
        }
    }

    /// Removes `region` and returns its attachment for the caller to release.
    /// - Throws: `notFound` for an unknown region; `invalidArgument` while requests use it.
    @discardableResult
    package func deregister(_ region: MemoryRegion) throws(MemWallError) -> Attachment {
        try entries.withLock { (t: inout [RegionID: RegionRegistration<Attachment>]) throws(MemWallError) -> Attachment in
            guard let e = t[region.id] else {
                throw MemWallError(.notFound, "\(region) is not registered with '\(transportName)'")
            }
            let busy = e.use.count
            guard busy == 0 else {
                throw MemWallError(.invalidArgument,
                    "\(region) is used by \(busy) descriptor(s) in flight on '\(transportName)'; wait for them before deregistering")
            }
            t[region.id] = nil
            return e.attachment
        }
    }

    /// The registration of `region`.
    /// - Throws: `notFound` naming the region and the call to make first.
    package func registration(of region: MemoryRegion) throws(MemWallError) -> RegionRegistration<Attachment> {
        guard let r = entries.withLock({ $0[region.id] }) else { throw notRegistered(region) }
        return r
    }

    /// The attachment of a registered region.
    /// - Throws: `notFound` naming the region and the call to make first.
    package func attachment(of region: MemoryRegion) throws(MemWallError) -> Attachment {
        try registration(of: region).attachment
    }

    /// Whether `region` is registered.
    package func contains(_ region: MemoryRegion) -> Bool { entries.withLock { $0[region.id] != nil } }

    /// Throws unless `r` is still the registration on record for its region,
    /// so a transfer prepared before a `deregister` cannot be posted after it.
    package func requireCurrent(_ r: RegionRegistration<Attachment>) throws(MemWallError) {
        guard entries.withLock({ $0[r.region.id] === r }) else {
            throw MemWallError(.notFound,
                "\(r.region.id) was deregistered from '\(transportName)' after this transfer was prepared; register it again and prepare anew")
        }
    }

    /// For each local region (one per descriptor), its attachment and its use
    /// counter, already incremented — under one lock, so a region cannot be
    /// deregistered between the check and the mark.
    /// - Throws: `notFound` for an unregistered region (nothing is marked then).
    package func acquire(_ locals: [MemoryRegion]) throws(MemWallError) -> [(Attachment, RegionUse)] {
        try entries.withLock { (t: inout [RegionID: RegionRegistration<Attachment>]) throws(MemWallError) -> [(Attachment, RegionUse)] in
            var out: [(Attachment, RegionUse)] = []
            out.reserveCapacity(locals.count)
            for r in locals {
                guard let e = t[r.id] else { throw notRegistered(r) }
                out.append((e.attachment, e.use))
            }
            for (_, use) in out { use.acquire() }
            return out
        }
    }

    private func notRegistered(_ region: MemoryRegion) -> MemWallError {
        MemWallError(.notFound,
            "\(region) is not registered with '\(transportName)'; call register(_:) on the transport first")
    }

    /// Every registered region with its attachment (for teardown).
    package var all: [(MemoryRegion, Attachment)] {
        entries.withLock { $0.values.map { ($0.region, $0.attachment) } }
    }

    /// Number of registered regions.
    package var count: Int { entries.withLock { $0.count } }
}

extension RegionTable where Attachment == Void {
    /// Records `region` for a transport whose memory needs no pinning (a
    /// CPU copy, pread/pwrite): bookkeeping only, with the same duplicate,
    /// busy and not-found rules as every other transport.
    /// - Throws: `alreadyExists` for a region registered twice.
    package func register(_ region: MemoryRegion) throws(MemWallError) {
        try register(region) { () throws(MemWallError) in () }
    }
}

extension RegionTable {
    /// Checks, in `prepare`, that every descriptor's local region is registered.
    /// - Throws: `notFound` for the first one that is not.
    package func requireRegistered(_ descriptors: [TransferDescriptor]) throws(MemWallError) {
        for d in descriptors { _ = try registration(of: d.local) }
    }
}

/// How many posted descriptors use one registered region; released without a lock.
package final class RegionUse: Sendable {
    private let inFlight = Atomic<Int>(0)
    /// Creates a counter at zero.
    package init() {}
    /// Descriptors in flight now.
    package var count: Int { inFlight.load(ordering: .acquiring) }
    /// One more descriptor uses the region.
    @inline(__always) package func acquire() { inFlight.add(1, ordering: .relaxed) }
    /// One descriptor finished with the region.
    @inline(__always) package func release() { inFlight.subtract(1, ordering: .releasing) }
}

/// One posted request as its transport tracks it: each descriptor gives back
/// its region's use just before it completes (so a caller woken by the
/// completion may deregister at once).
package final class InFlightRequest: Sendable {
    package let request: TransferRequest
    private let uses: [RegionUse]

    /// - Parameter uses: One per descriptor, from ``RegionTable/acquire(_:)``.
    package init(request: TransferRequest, uses: [RegionUse]) {
        self.request = request
        self.uses = uses
    }

    /// Reports descriptor `index`; call exactly once per descriptor (a second
    /// call traps: see ``TransferRequest/complete(descriptor:_:releasing:)``).
    package func complete(descriptor index: Int, _ result: Result<Int, MemWallError>) {
        request.complete(descriptor: index, result, releasing: uses[index])
    }

    /// ``complete(descriptor:_:)`` that throws `misuse` for a second
    /// completion instead of trapping; the region's use is given back once.
    package func record(descriptor index: Int, _ result: Result<Int, MemWallError>) throws(MemWallError) {
        guard uses.indices.contains(index) else {
            throw MemWallError(.misuse, "descriptor \(index) is outside 0..<\(uses.count) of request \(request.id)")
        }
        try request.record(descriptor: index, result, releasing: uses[index])
    }
}

/// The registrations of a transport whose local memory needs no pinning (a
/// CPU copy, pread/pwrite): bookkeeping only, but with the same rules as
/// every other transport — a region registers once, and one that posted
/// descriptors still use cannot be deregistered.
public final class HostRegistrations: Sendable {
    package let table: RegionTable<Void>
    /// - Parameter transportName: Named in error messages.
    package init(transportName: String) { table = RegionTable(transportName: transportName) }
}

/// A transport whose local regions need no pinning; it gets ``register(_:)``
/// and ``deregister(_:)`` from its ``registrations``.
public protocol HostMemoryTransport: Transport {
    /// Which regions are registered and in use.
    var registrations: HostRegistrations { get }
}

extension HostMemoryTransport {
    /// Records `region` as a local side (host memory needs no pinning).
    /// - Throws: `alreadyExists` for a region registered twice.
    public func register(_ region: MemoryRegion) throws(MemWallError) {
        try registrations.table.register(region)
    }

    /// Forgets `region`.
    /// - Throws: `notFound` when it is not registered; `invalidArgument` while requests use it.
    public func deregister(_ region: MemoryRegion) throws(MemWallError) {
        try registrations.table.deregister(region)
    }

    /// The `prepare` of a CPU copy between host memory regions: bounds, target
    /// kinds and registration, and nothing more — a copy has no alignment rule
    /// and needs no plan. A transport with more to check (a storage transport's
    /// alignment and file resolution) implements its own `prepare`.
    /// - Throws: `invalidArgument`/`unsupported` for a bad descriptor; `notFound`
    ///   for a local region that is not registered.
    public func prepare(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) throws(MemWallError) -> PreparedTransfer {
        try validateDescriptors(descriptors)
        try registrations.table.requireRegistered(descriptors)
        return PreparedTransfer(operation: operation, descriptors: descriptors, preparedBy: self)
    }
}
