import MemWallCore
import Synchronization

/// The registration bookkeeping every transport needs: which regions are
/// registered, what the transport attached to each (a fixed-buffer slot, an
/// RDMA key), and how many posted requests still use each one — so that
/// deregistering a region the kernel may still write is refused.
public final class RegionTable<Attachment: Sendable>: Sendable {
    private struct Entry {
        var region: MemoryRegion
        var attachment: Attachment
        var inFlight: Int
    }
    private let entries = Mutex<[RegionID: Entry]>([:])
    private let transportName: String

    /// - Parameter transportName: Named in error messages.
    public init(transportName: String) { self.transportName = transportName }

    /// Adds `region`; `attach` runs under the table lock, only when the region is new.
    /// - Throws: `alreadyExists` for a region registered twice, or what `attach` throws.
    public func register(_ region: MemoryRegion, attach: () throws(MemWallError) -> Attachment) throws(MemWallError) {
        try entries.withLock { (t: inout [RegionID: Entry]) throws(MemWallError) in
            guard t[region.id] == nil else {
                throw MemWallError(.alreadyExists,
                    "\(region) is already registered with '\(transportName)'; register each region once and reuse it")
            }
            t[region.id] = Entry(region: region, attachment: try attach(), inFlight: 0)
        }
    }

    /// Removes `region` and returns its attachment for the caller to release.
    /// - Throws: `notFound` for an unknown region; `invalidArgument` while requests use it.
    public func deregister(_ region: MemoryRegion) throws(MemWallError) -> Attachment {
        try entries.withLock { (t: inout [RegionID: Entry]) throws(MemWallError) -> Attachment in
            guard let e = t[region.id] else {
                throw MemWallError(.notFound, "\(region) is not registered with '\(transportName)'")
            }
            guard e.inFlight == 0 else {
                throw MemWallError(.invalidArgument,
                    "\(region) is used by \(e.inFlight) request(s) in flight on '\(transportName)'; wait for them before deregistering")
            }
            t[region.id] = nil
            return e.attachment
        }
    }

    /// The attachment of a registered region.
    /// - Throws: `notFound` naming the region and the call to make first.
    public func attachment(of region: MemoryRegion) throws(MemWallError) -> Attachment {
        guard let a = entries.withLock({ $0[region.id]?.attachment }) else {
            throw MemWallError(.notFound,
                "\(region) is not registered with '\(transportName)'; call register(_:) on the transport first")
        }
        return a
    }

    /// Marks each region as used by one more request in flight.
    public func retain(_ regions: [MemoryRegion]) {
        entries.withLock { t in for r in regions { t[r.id]?.inFlight += 1 } }
    }

    /// Undoes ``retain(_:)`` once the request is final.
    public func release(_ regions: [MemoryRegion]) {
        entries.withLock { t in for r in regions { t[r.id]?.inFlight -= 1 } }
    }

    /// Every registered region with its attachment (for teardown).
    public var all: [(MemoryRegion, Attachment)] {
        entries.withLock { $0.values.map { ($0.region, $0.attachment) } }
    }

    /// Number of registered regions.
    public var count: Int { entries.withLock { $0.count } }
}

/// One posted request as its transport tracks it: completes descriptors and,
/// just before the last one finishes, releases the regions' in-flight marks
/// (so a caller woken by the completion may deregister at once).
package final class InFlightRequest<Attachment: Sendable>: Sendable {
    package let request: TransferRequest
    private let remaining: Atomic<Int>
    private let table: RegionTable<Attachment>
    private let regions: [MemoryRegion]

    package init(request: TransferRequest, table: RegionTable<Attachment>) {
        self.request = request
        self.table = table
        var seen = Set<RegionID>()
        self.regions = request.prepared.descriptors.compactMap { seen.insert($0.local.id).inserted ? $0.local : nil }
        self.remaining = Atomic(request.prepared.descriptors.count)
        table.retain(regions)
    }

    /// Reports descriptor `index`; call exactly once per descriptor.
    package func complete(descriptor index: Int, _ result: Result<Int, MemWallError>) {
        if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            table.release(regions)
        }
        request.complete(descriptor: index, result)
    }
}
