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
    /// TCP emulation: whether peers on this host are reached through the kernel
    /// (`process_vm_readv`/`writev`) instead of TCP, on both the listening and
    /// the connecting side. RDMA does not read it.
    public var intraHost: IntraHostPolicy

    /// Creates options.
    public init(sendQueueDepth: Int = 256, signalInterval: Int = 16, operationTimeout: Duration = .seconds(10),
                busyPoll: Bool = false, completionThread: Bool = true, intraHost: IntraHostPolicy = .automatic) {
        self.sendQueueDepth = sendQueueDepth
        self.signalInterval = signalInterval
        self.operationTimeout = operationTimeout
        self.busyPoll = busyPoll
        self.completionThread = completionThread
        self.intraHost = intraHost
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

/// A region registered with a remote transport: the verbs memory region
/// (RDMA; `nil` for the emulation) and its count of descriptors in flight.
typealias LocalRegistration = RegionRegistration<VerbsMemoryRegistration?>

extension RegionRegistration where Attachment == VerbsMemoryRegistration? {
    /// The verbs memory region (RDMA only); kept alive as long as this object.
    var memoryRegistration: VerbsMemoryRegistration? { attachment }
    /// One more descriptor (or a bound direct-queue slot) uses the region.
    @inline(__always) func retain() { use.acquire() }
    /// One of them is done with it.
    @inline(__always) func release() { use.release() }
}

extension RegionTable where Attachment == VerbsMemoryRegistration? {
    /// Deregisters `region` unless one of its ranges is still exported.
    /// - Throws: `notFound`, `invalidArgument` while exported or in flight.
    func deregister(_ region: MemoryRegion, exported: Bool, transport: String) throws(MemWallError) {
        _ = try registration(of: region)
        guard !exported else {
            throw MemWallError(.invalidArgument, "\(region.id) is still exported by '\(transport)'; unexport its names first")
        }
        try deregister(region)
    }
}
