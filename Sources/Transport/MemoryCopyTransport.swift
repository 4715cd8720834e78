import MemWallCore

/// Moves bytes between host memory regions with a plain CPU copy (`memcpy`).
///
/// This is the real mechanism for DRAM-to-DRAM moves (and for a far-memory
/// pool that is ordinary host memory): there is no device to offload to, so
/// ``capabilities`` say `hardware` — the hardware being the CPU. The copy runs
/// on the posting thread inside ``post(_:)``; the request is complete when
/// `post` returns. Local regions must be registered; targets need not be.
/// `prepare` is the host-memory one of ``HostMemoryTransport``.
public final class MemoryCopyTransport: HostMemoryTransport {
    /// `"memcpy"`, memory targets, hardware (plain CPU copy between host memory regions).
    public let capabilities = TransportCapabilities(name: "memcpy", targets: [.memory], implementation: .hardware)
    /// Fed by every finished request.
    public let costEstimator: PathCostEstimator
    /// This instance; only it posts what it prepared.
    public let identity = TransportIdentity()
    /// Registered local regions (bookkeeping: a CPU copy pins nothing).
    public let registrations = HostRegistrations(transportName: "memcpy")
    private let closed = ClosedFlag()

    /// Creates the transport.
    public init(costEstimator: PathCostEstimator = PathCostEstimator()) {
        self.costEstimator = costEstimator
    }

    /// Copies every descriptor now, in order, and returns the finished request.
    public func post(_ prepared: PreparedTransfer) throws(MemWallError) -> TransferRequest {
        try closed.check(capabilities.name)
        try checkOwnership(prepared)
        let request = TransferRequest(prepared: prepared, estimator: costEstimator)
        for (i, d) in prepared.descriptors.enumerated() {
            guard case .memory(let far) = d.target else {
                request.complete(descriptor: i, .failure(MemWallError(.unsupported, "descriptor \(i): memcpy moves memory targets only")))
                continue
            }
            let local = d.local.baseAddress + d.localOffset
            let remote = far.baseAddress + Int(d.targetOffset)
            switch prepared.operation {
            case .read: local.copyMemory(from: remote, byteCount: d.length)
            case .write: remote.copyMemory(from: local, byteCount: d.length)
            }
            request.complete(descriptor: i, .success(d.length))
        }
        return request
    }

    /// Refuses later posts (a copy holds nothing between posts).
    public func close() { _ = closed.close() }
}
