#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

/// One descriptor resolved for a storage transport: raw addresses kept as
/// integers so the plan is `Sendable`; the descriptor's region and target,
/// held by the ``PreparedTransfer``, keep them valid.
package struct ResolvedStorageOp: Sendable {
    package var fileDescriptor: Int32
    package var bufferAddress: UInt
    package var length: Int
    package var offset: Int64
    package var target: StorageTarget

    /// Checks the descriptor and resolves it.
    package static func resolve(_ d: TransferDescriptor, index: Int) throws(MemWallError) -> ResolvedStorageOp {
        guard case .storage(let target) = d.target else {
            throw MemWallError(.unsupported, "descriptor \(index) does not name a file or block device")
        }
        let address = d.local.baseAddress + d.localOffset
        try target.checkAlignment(bufferAddress: address, offset: d.targetOffset, length: d.length)
        return ResolvedStorageOp(fileDescriptor: target.fileDescriptor, bufferAddress: UInt(bitPattern: address),
                                 length: d.length, offset: d.targetOffset, target: target)
    }

    /// The `prepare` of every storage transport: each descriptor's local
    /// region registered in `regions`, each checked and resolved.
    package static func resolve<A>(_ descriptors: [TransferDescriptor], registeredIn regions: RegionTable<A>) throws(MemWallError) -> [ResolvedStorageOp] {
        try regions.requireRegistered(descriptors)
        var ops: [ResolvedStorageOp] = []
        ops.reserveCapacity(descriptors.count)
        for (i, d) in descriptors.enumerated() { ops.append(try resolve(d, index: i)) }
        return ops
    }
}

/// Moves bytes between registered memory and files with `pread`/`pwrite` on a
/// pool of blocking threads: the stand-in when io_uring is refused (seccomp,
/// ENOSYS, `io_uring_disabled`, memlock), and the baseline io_uring is measured against.
///
/// Queue depth is the number of threads, so QD32 keeps 32 requests at the device.
/// Every call goes through the ``SyscallFunnel`` ("pread", "pwrite"); EINTR is
/// retried by the funnel, and each result is applied under the one storage
/// rule, ``StorageProgress`` (short transfers resumed, EAGAIN/EINTR retried, bounded).
public final class ThreadPoolStorageTransport: HostMemoryTransport {
    /// Declared as emulation of the io_uring path, with the reason given at creation.
    public let capabilities: TransportCapabilities
    /// Fed by every finished request.
    public let costEstimator = PathCostEstimator()
    /// This instance; only it posts what it prepared.
    public let identity = TransportIdentity()
    /// Blocking threads, one per unit of queue depth.
    public let queueDepth: Int
    private let funnel: SyscallFunnel
    private let pool: BlockingWorkerPool
    private let closed = ClosedFlag()
    /// Registered local regions (bookkeeping: pread/pwrite pin nothing).
    public let registrations = HostRegistrations(transportName: "pread-pool")
    private var regions: RegionTable<Void> { registrations.table }

    /// Starts the thread pool.
    /// - Parameters:
    ///   - queueDepth: Concurrent system calls (threads), at least 1.
    ///   - reason: Why this stands in for io_uring; shown wherever the transport is.
    ///   - funnel: System-call door (tests inject faults here).
    /// - Throws: `invalidArgument` for a queue depth below 1.
    public init(queueDepth: Int = 32, reason: String = "pread/pwrite thread pool standing in for io_uring",
                funnel: SyscallFunnel = .system) throws(MemWallError) {
        guard queueDepth >= 1 else {
            throw .invalid("queue depth", queueDepth, expected: "at least 1 (requests kept in flight at once)")
        }
        self.queueDepth = queueDepth
        self.funnel = funnel
        self.capabilities = TransportCapabilities(name: "pread-pool", targets: [.storage],
                                                  implementation: .emulation(reason: reason))
        self.pool = try BlockingWorkerPool(name: "mw-pread", threadCount: queueDepth)
    }



    /// Checks bounds, alignment (O_DIRECT targets) and registration.
    public func prepare(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) throws(MemWallError) -> PreparedTransfer {
        try validateDescriptors(descriptors)
        let ops = try ResolvedStorageOp.resolve(descriptors, registeredIn: regions)
        return PreparedTransfer(operation: operation, descriptors: descriptors, preparedBy: self, plan: ops)
    }

    /// Queues every descriptor on the pool; returns at once.
    public func post(_ prepared: PreparedTransfer) throws(MemWallError) -> TransferRequest {
        try closed.check(capabilities.name)
        let ops = try plan(of: prepared, as: [ResolvedStorageOp].self)
        let uses = try regions.acquire(prepared.descriptors.map(\.local)).map(\.1)
        let request = TransferRequest(prepared: prepared, estimator: costEstimator)
        let tracked = InFlightRequest(request: request, uses: uses)
        let isRead = prepared.operation == .read
        let funnel = self.funnel
        var jobs: [@Sendable () -> Void] = []
        jobs.reserveCapacity(ops.count)
        for (i, op) in ops.enumerated() {
            jobs.append {
                if tracked.request.isCancellationRequested {
                    tracked.complete(descriptor: i, .failure(MemWallError(.cancelled, "cancelled before it was issued")))
                    return
                }
                tracked.complete(descriptor: i, ThreadPoolStorageTransport.perform(
                    op, isRead: isRead, funnel: funnel, cancelRequested: tracked.request.isCancellationRequested))
            }
        }
        if !pool.submit(contentsOf: jobs) {
            // Closed meanwhile: nothing was issued.
            for i in ops.indices {
                tracked.complete(descriptor: i, .failure(MemWallError(.cancelled, "the '\(capabilities.name)' transport was closed before it was issued")))
            }
        }
        return request
    }

    /// Lets issued work finish, then stops the threads. Later posts are refused.
    public func close() {
        guard closed.close() else { return }
        pool.close()
    }

    /// Runs one descriptor to the end under ``StorageProgress``'s rule.
    static func perform(_ op: ResolvedStorageOp, isRead: Bool, funnel: SyscallFunnel,
                        cancelRequested: @escaping @autoclosure () -> Bool = false) -> Result<Int, MemWallError> {
        guard let base = UnsafeMutableRawPointer(bitPattern: op.bufferAddress) else {
            return .failure(MemWallError(.invalidArgument, "null buffer address"))
        }
        var progress = StorageProgress()
        let function = isRead ? "pread" : "pwrite"
        while true {
            let done = progress.done
            let r = isRead
                ? funnel.pread(op.fileDescriptor, base + done, op.length - done, op.offset + Int64(done))
                : funnel.pwrite(op.fileDescriptor, base + done, op.length - done, op.offset + Int64(done))
            let retries = progress.retries
            let raw = switch r { case .success(let n): n; case .failure(let e): -Int(e.rawValue) }
            switch progress.advance(by: raw, function: function, isRead: isRead, length: op.length, offset: op.offset,
                                    path: op.target.path, cancelRequested: cancelRequested()) {
            case .finished(let result):
                return result
            case .again:
                // A transient error: let whatever holds the resource run first.
                if progress.retries > retries { sched_yield() }
            }
        }
    }
}
