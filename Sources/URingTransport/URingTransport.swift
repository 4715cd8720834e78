#if canImport(Glibc)
import Glibc
#endif
import CURing
import MemWallCore
import Synchronization
import Transport

/// How an io_uring transport is set up; every field is the caller's choice.
public struct URingConfiguration: Sendable, Hashable {
    /// I/Os kept in flight at once (ring entries). At least 1.
    public var queueDepth: Int
    /// SQEs handed to the kernel per `io_uring_enter`. 1...queueDepth.
    public var batchSize: Int
    /// Register regions as fixed buffers (pinned once, no per-I/O page walk).
    public var fixedBuffers: Bool
    /// Register files as fixed files (no per-I/O fd lookup).
    public var fixedFiles: Bool
    /// Run a completion thread that reaps CQEs as they come (the default).
    /// Without it the caller drives completions with
    /// ``URingTransport/reapCompletions(waitMicroseconds:)`` — one thread
    /// submitting and reaping, as fio does; nothing completes unless it is called.
    public var completionThread: Bool

    /// Creates a configuration.
    public init(queueDepth: Int = 32, batchSize: Int = 8, fixedBuffers: Bool = true, fixedFiles: Bool = true,
                completionThread: Bool = true) {
        self.queueDepth = queueDepth
        self.batchSize = batchSize
        self.fixedBuffers = fixedBuffers
        self.fixedFiles = fixedFiles
        self.completionThread = completionThread
    }

    /// Checks the values.
    /// - Throws: `invalidArgument` naming the bad value and the valid range.
    public func validate() throws(MemWallError) {
        guard queueDepth >= 1, queueDepth <= 4096 else {
            throw .invalid("queue depth", queueDepth, expected: "1...4096 (I/Os kept in flight at once)")
        }
        guard batchSize >= 1, batchSize <= queueDepth else {
            throw .invalid("batch size", batchSize, expected: "1...\(queueDepth) (at most the queue depth)")
        }
    }
}

/// O_DIRECT storage through io_uring: reads and writes between registered
/// memory and files or block devices, the GPUDirect-Storage-shaped path.
///
/// Regions become fixed buffers and files fixed files when the kernel allows
/// (falling back per region, said in ``registrationNotes``); a completion
/// thread reaps CQEs, resumes short transfers and retries EAGAIN/EINTR; every
/// CQE result passes through the ``SyscallFunnel`` as "io_uring.read" /
/// "io_uring.write" so tests can play the kernel.
public final class URingTransport: Transport {
    /// "io_uring", hardware, moves storage targets.
    public let capabilities = TransportCapabilities(name: "io_uring", targets: [.storage], implementation: .hardware)
    /// Fed by every finished request.
    public let costEstimator = PathCostEstimator()
    /// This instance; only it posts what it prepared.
    public let identity = TransportIdentity()
    /// The configuration in use (queue depth after any kernel clamping).
    public let configuration: URingConfiguration
    /// Setup flags the kernel accepted ("SUBMIT_ALL|CLAMP", "none").
    public let setupFlags: String
    /// Whether the kernel accepted the sparse fixed-buffer table.
    public let fixedBufferTable: Bool
    /// Whether the kernel accepted the sparse fixed-file table.
    public let fixedFileTable: Bool

    static let bufferSlots = 64
    static let fileSlots = 64
    private let engine: URingEngine
    private let reaper: WorkerThread?
    private let regions: RegionTable<Int32>
    private struct Registry {
        var freeBufferSlots: [Int32]
        var files = URingFileTable(slots: URingTransport.fileSlots)
        var notes: [String] = []
    }
    private let registry: Mutex<Registry>
    private let closed = ClosedFlag()

    /// Creates the ring, the registration tables and the completion thread.
    /// - Throws: `invalidArgument` for a bad configuration; `systemCall` when
    ///   the kernel refuses io_uring (use ``makeWithFallback(configuration:funnel:)``
    ///   to get the thread-pool path instead).
    public init(configuration: URingConfiguration = URingConfiguration(), funnel: SyscallFunnel = .system) throws(MemWallError) {
        try configuration.validate()
        let queue = try URingQueue(entries: configuration.queueDepth, funnel: funnel)
        var config = configuration
        config.queueDepth = min(configuration.queueDepth, queue.entries)
        setupFlags = queue.flagsLabel
        fixedBufferTable = configuration.fixedBuffers && queue.registerBufferTable(slots: URingTransport.bufferSlots)
        fixedFileTable = configuration.fixedFiles && queue.registerFileTable(slots: URingTransport.fileSlots)
        self.configuration = config
        self.regions = RegionTable(transportName: "io_uring")
        self.registry = Mutex(Registry(freeBufferSlots: fixedBufferTable ? Array((0..<Int32(URingTransport.bufferSlots)).reversed()) : []))
        engine = URingEngine(queue: queue, queueDepth: config.queueDepth, batchSize: min(config.batchSize, config.queueDepth), funnel: funnel)
        reaper = config.completionThread ? try engine.startReaper() : nil
    }

    deinit { close() }

    /// Cancels work not yet submitted, waits until the kernel finished every
    /// I/O in flight, and stops the completion thread; later posts are
    /// refused. The ring itself (and its fixed buffers and files) is freed
    /// with the transport.
    public func close() {
        guard closed.close() else { return }
        engine.stop()
        if let reaper {
            reaper.join()
        } else {
            // No completion thread: reap here until the kernel holds no buffer of ours.
            engine.drain()
        }
    }

    /// The io_uring transport, or — when the kernel refuses io_uring (seccomp,
    /// ENOSYS, `io_uring_disabled`, memlock) — the pread/pwrite thread pool,
    /// labelled emulation with the kernel's reason.
    /// - Throws: `invalidArgument` for a bad configuration (never falls back on that).
    public static func makeWithFallback(configuration: URingConfiguration = URingConfiguration(),
                                        funnel: SyscallFunnel = .system) throws(MemWallError) -> any Transport {
        try configuration.validate()
        do {
            return try URingTransport(configuration: configuration, funnel: funnel)
        } catch where error.code == .systemCall {
            return try ThreadPoolStorageTransport(queueDepth: configuration.queueDepth,
                                                  reason: "io_uring refused: \(error)", funnel: funnel)
        }
    }

    /// Why some regions or files are not registered with the kernel (memlock,
    /// table full, > 1 GiB buffer); empty when everything is fixed.
    public var registrationNotes: [String] { registry.withLock { $0.notes } }

    /// Registers `region`, as a fixed buffer when the kernel allows.
    /// - Throws: `alreadyExists` for a region registered twice.
    public func register(_ region: MemoryRegion) throws(MemWallError) {
        try regions.register(region) { () throws(MemWallError) -> Int32 in
            registry.withLock { r -> Int32 in
                guard fixedBufferTable else { return -1 }
                guard region.byteCount <= 1 << 30 else {
                    r.notes.append("\(region) is larger than 1 GiB, the fixed-buffer limit; it uses plain reads/writes")
                    return -1
                }
                guard let slot = r.freeBufferSlots.popLast() else {
                    r.notes.append("\(region): all \(URingTransport.bufferSlots) fixed-buffer slots are in use; it uses plain reads/writes")
                    return -1
                }
                if let e = engine.queue.setBuffer(slot, to: region) {
                    r.freeBufferSlots.append(slot)
                    r.notes.append("\(region) could not be pinned as a fixed buffer (io_uring_register_buffers_update_tag: \(e))"
                                   + (e == .noMemory ? "; raise the memlock limit (ulimit -l)" : "") + "; it uses plain reads/writes")
                    return -1
                }
                return slot
            }
        }
    }

    /// Deregisters `region` (and unpins its fixed buffer).
    /// - Throws: `notFound`, or `invalidArgument` while a request uses it.
    public func deregister(_ region: MemoryRegion) throws(MemWallError) {
        let slot = try regions.deregister(region)
        guard slot >= 0 else { return }
        if let e = engine.queue.setBuffer(slot, to: nil) {
            // The kernel keeps the pages pinned until the ring goes; the slot is not reused.
            StandardError.reportUnfreed("a fixed buffer of \(region)", function: "io_uring_register_buffers_update_tag", errno: e)
            return
        }
        registry.withLock { $0.freeBufferSlots.append(slot) }
    }

    /// Completes, on the calling thread, every request whose I/O the kernel has
    /// finished — the non-blocking "progress" call of a polling loop. The
    /// completion thread does the same after it wakes; calling this saves the
    /// hop to it (and its wake-up latency on a busy machine).
    /// - Returns: Completion events taken.
    /// - Parameter waitMicroseconds: When nothing is ready, sleep in the kernel
    ///   up to this long for the next completion (0: do not wait). Sleeping in
    ///   the kernel, rather than spinning, keeps a polling thread responsive on
    ///   a loaded machine: the scheduler favours a thread that wakes on an event.
    @discardableResult
    public func reapCompletions(waitMicroseconds: Int = 0) -> Int {
        let n = engine.reapReady().count
        guard n == 0, waitMicroseconds > 0 else { return n }
        engine.waitForCompletion(microseconds: waitMicroseconds)
        return engine.reapReady().count
    }

    /// The funnel every CQE result passes through (shared with direct queues).
    var funnel: SyscallFunnel { engine.funnel }

    /// Marks `locals` in use until the returned counters are released, so
    /// they cannot be deregistered meanwhile (a direct queue holds them for its life).
    /// - Throws: `notFound` for a region not registered here.
    func markInUse(_ locals: [MemoryRegion]) throws(MemWallError) -> [RegionUse] {
        try regions.acquire(locals).map(\.1)
    }

    /// Whether `region` is pinned as a fixed buffer.
    public func isFixedBuffer(_ region: MemoryRegion) -> Bool {
        ((try? regions.attachment(of: region)) ?? -1) >= 0
    }

    /// Checks bounds, O_DIRECT alignment and registration; registers new files.
    public func prepare(_ operation: TransferOperation, _ descriptors: [TransferDescriptor]) throws(MemWallError) -> PreparedTransfer {
        try validateDescriptors(descriptors)
        let ops = try ResolvedStorageOp.resolve(descriptors, registeredIn: regions).map { base in
            URingOp(fileDescriptor: base.fileDescriptor, fixedFile: fixedFileSlot(for: base.target),
                    bufferAddress: base.bufferAddress, length: base.length, offset: base.offset, target: base.target)
        }
        return PreparedTransfer(operation: operation, descriptors: descriptors, preparedBy: self, plan: ops)
    }

    private func fixedFileSlot(for target: StorageTarget) -> Int32 {
        guard fixedFileTable else { return -1 }
        let (slot, registered) = registry.withLock { r -> (Int32, Bool) in
            let (slot, refusal, registered) = r.files.slot(for: target, in: engine.queue)
            if let refusal {
                r.notes.append("'\(target.path)' could not be a fixed file (io_uring_register_files_update: \(refusal))")
            }
            return (slot ?? -1, registered)
        }
        if registered {
            // Outside the registry lock: a target's deinit runs its hooks on
            // whatever thread lets it go, and the hook takes that lock.
            let id = ObjectIdentifier(target)
            target.onClose { [weak self] in self?.releaseFixedFile(slot, of: id) }
        }
        return slot
    }

    /// Empties the fixed-file slot of a target that is going, so the ring no
    /// longer holds its file open (another run may then lock it, a deleted
    /// file's space comes back).
    private func releaseFixedFile(_ slot: Int32, of id: ObjectIdentifier) {
        registry.withLock { r in r.files.release(slot: slot, of: id, in: engine.queue) }
    }

    /// Hands the descriptors to the ring (up to the queue depth; the rest
    /// follow as completions free room) and returns at once.
    public func post(_ prepared: PreparedTransfer) throws(MemWallError) -> TransferRequest {
        let (request, work) = try makeWork(prepared, try resolve(prepared))
        engine.enqueue(work)
        return request
    }

    /// Posts several lists with one `io_uring_enter` per batch of SQEs rather
    /// than one per list. Every list is checked before anything is enqueued:
    /// when one is refused, none of the batch is submitted.
    public func post(batch: [PreparedTransfer]) throws(MemWallError) -> [TransferRequest] {
        var resolved: [[URingOp]] = []
        resolved.reserveCapacity(batch.count)
        for p in batch { resolved.append(try resolve(p)) }
        var requests: [TransferRequest] = []
        var work: [URingWork] = []
        requests.reserveCapacity(batch.count)
        do throws(MemWallError) {
            for (p, ops) in zip(batch, resolved) {
                let (request, w) = try makeWork(p, ops)
                requests.append(request)
                work += w
            }
        } catch {
            // Nothing of the batch reaches the kernel: the lists already built
            // finish as cancelled, which also gives back their regions.
            for w in work {
                w.tracked.complete(descriptor: w.index, .failure(MemWallError(.cancelled,
                    "not submitted: another list of the same batch was refused (\(error.message))")))
            }
            throw error
        }
        engine.enqueue(work)
        return requests
    }

    private func resolve(_ prepared: PreparedTransfer) throws(MemWallError) -> [URingOp] {
        try closed.check(capabilities.name)
        return try plan(of: prepared, as: [URingOp].self)
    }

    /// Marks the regions in use (this is where an unregistered region is refused)
    /// and builds the request and its work items.
    private func makeWork(_ prepared: PreparedTransfer, _ ops: [URingOp]) throws(MemWallError) -> (TransferRequest, [URingWork]) {
        let acquired = try regions.acquire(prepared.descriptors.map(\.local))
        let engine = self.engine
        let request = TransferRequest(prepared: prepared, estimator: costEstimator, onCancel: { [weak engine] _ in
            engine?.cancelRequested()
        })
        let tracked = InFlightRequest(request: request, uses: acquired.map(\.1))
        let isRead = prepared.operation == .read
        var work: [URingWork] = []
        work.reserveCapacity(ops.count)
        for (i, op) in ops.enumerated() {
            let io = URingIO(file: op.fixedFile >= 0 ? op.fixedFile : op.fileDescriptor, fixedFile: op.fixedFile >= 0,
                             bufferAddress: op.bufferAddress, bufferIndex: acquired[i].0, length: op.length,
                             offset: op.offset, isRead: isRead)
            work.append(URingWork(tracked: tracked, index: i, io: io, target: op.target))
        }
        return (request, work)
    }
}
