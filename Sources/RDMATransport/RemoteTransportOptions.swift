import MemWallCore
import Synchronization
import Transport

/// Tuning shared by the RDMA transport and its TCP emulation.
public struct RemoteTransportOptions: Sendable, Hashable {
    /// Send-queue depth: how many work requests may be outstanding on one
    /// connection before further descriptors wait in software.
    public var sendQueueDepth: Int
    /// Ask for a completion on every `signalInterval`-th work request (and on
    /// the last of each post); the ones between complete implicitly. Capped
    /// at the send-queue depth.
    public var signalInterval: Int
    /// A descriptor that gets no answer within this time fails with
    /// `timedOut`, and its connection is closed (as RDMA moves a queue pair
    /// to the error state after its retries run out).
    public var operationTimeout: Duration
    /// How the completion side waits: spin on the completion queue (lowest
    /// latency, one busy core, like perftest) or sleep on the completion channel.
    public var busyPoll: Bool
    /// RDMA: with `true` (the default) a completion thread per connection
    /// resumes waiters; with `false` nothing polls until the caller calls
    /// ``RDMATransport/progress()`` — the lowest-latency mode, as perftest
    /// polls on the posting thread. The emulation always uses its threads.
    public var completionThread: Bool

    /// Creates options.
    public init(sendQueueDepth: Int = 256, signalInterval: Int = 16, operationTimeout: Duration = .seconds(10),
                busyPoll: Bool = false, completionThread: Bool = true) {
        self.sendQueueDepth = sendQueueDepth
        self.signalInterval = signalInterval
        self.operationTimeout = operationTimeout
        self.busyPoll = busyPoll
        self.completionThread = completionThread
    }

    /// Checks the values.
    /// - Throws: `invalidArgument` naming the bad value.
    func validate() throws(MemWallError) {
        guard (1 ... 16384).contains(sendQueueDepth) else {
            throw .invalid("send-queue depth", sendQueueDepth, expected: "1 to 16384 work requests")
        }
        guard signalInterval >= 1 else {
            throw .invalid("signal interval", signalInterval, expected: "at least 1 (it is capped at the send-queue depth)")
        }
        guard operationTimeout > .zero else {
            throw .invalid("operation timeout", operationTimeout, expected: "a positive duration")
        }
    }
}

/// A region registered with a remote transport, with a count of descriptors
/// in flight so it cannot be deregistered under the hardware.
final class LocalRegistration: Sendable {
    let region: MemoryRegion
    /// The verbs memory region (RDMA only); kept alive as long as this object.
    let memoryRegistration: VerbsMemoryRegistration?
    private let inFlight = Atomic<Int>(0)

    init(region: MemoryRegion, memoryRegistration: VerbsMemoryRegistration?) {
        self.region = region
        self.memoryRegistration = memoryRegistration
    }

    @inline(__always) func retain(_ n: Int = 1) { inFlight.add(n, ordering: .relaxed) }
    @inline(__always) func release(_ n: Int = 1) { inFlight.subtract(n, ordering: .relaxed) }
    var inFlightCount: Int { inFlight.load(ordering: .relaxed) }
}

/// The regions a transport registered, by identity.
final class RegistrationTable: Sendable {
    private let table = Mutex<[ObjectIdentifier: LocalRegistration]>([:])

    func add(_ r: LocalRegistration) throws(MemWallError) {
        let dup = table.withLock { t -> Bool in
            let k = ObjectIdentifier(r.region)
            if t[k] != nil { return true }
            t[k] = r
            return false
        }
        if dup {
            throw MemWallError(.alreadyExists, "\(r.region.id) is already registered; register each region once and reuse it")
        }
    }

    func contains(_ region: MemoryRegion) -> Bool { table.withLock { $0[ObjectIdentifier(region)] != nil } }

    func lookup(_ region: MemoryRegion, transport: String) throws(MemWallError) -> LocalRegistration {
        guard let r = table.withLock({ $0[ObjectIdentifier(region)] }) else {
            throw MemWallError(.notFound, "\(region.id) is not registered with '\(transport)'; call register(_:) first")
        }
        return r
    }

    func remove(_ region: MemoryRegion, transport: String, exported: Bool) throws(MemWallError) {
        let r = try lookup(region, transport: transport)
        guard !exported else {
            throw MemWallError(.invalidArgument, "\(region.id) is still exported by '\(transport)'; unexport its names first")
        }
        guard r.inFlightCount == 0 else {
            throw MemWallError(.invalidArgument,
                "\(region.id) has \(r.inFlightCount) descriptors in flight on '\(transport)'; wait for their requests first")
        }
        _ = table.withLock { $0.removeValue(forKey: ObjectIdentifier(region)) }
    }

    /// Throws unless `r` is still the registration on record for its region,
    /// so a transfer prepared before a `deregister` cannot be posted after it.
    func requireCurrent(_ r: LocalRegistration, transport: String) throws(MemWallError) {
        guard table.withLock({ $0[ObjectIdentifier(r.region)] === r }) else {
            throw MemWallError(.notFound,
                "\(r.region.id) was deregistered from '\(transport)' after this transfer was prepared; register it again and prepare anew")
        }
    }

    var count: Int { table.withLock { $0.count } }
}
