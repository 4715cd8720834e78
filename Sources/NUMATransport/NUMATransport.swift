#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization
import Transport

/// How many threads a copy may use: only as many as pay off.
public struct NUMACopyPolicy: Sendable, Hashable {
    /// A copy gets one more thread per this many bytes (below it, one thread:
    /// handing work to another core costs more than it saves).
    public var bytesPerThread: Int
    /// Upper bound on threads per copy (also bounded by the CPUs near the destination).
    public var maximumThreads: Int
    /// Requests of at most this many bytes are copied on the posting thread
    /// (a thread hand-off would cost more than the copy).
    public var inlineBytes: Int
    /// Before the first threaded copy into a node, time a 32 MiB copy on one
    /// thread and on all of the node's copy threads, and keep using several
    /// only if they were at least 10 % faster. On a loaded or virtualised host
    /// extra threads often cost more than they bring.
    public var calibrate: Bool

    /// Creates a policy.
    public init(bytesPerThread: Int = 16 << 20, maximumThreads: Int = 4, inlineBytes: Int = 128 << 10, calibrate: Bool = true) {
        self.bytesPerThread = max(bytesPerThread, 1)
        self.maximumThreads = max(maximumThreads, 1)
        self.inlineBytes = max(inlineBytes, 0)
        self.calibrate = calibrate
    }

    /// Threads for one copy of `bytes` when `available` threads run near the destination.
    public func threads(for bytes: Int, available: Int) -> Int {
        max(1, min(bytes / bytesPerThread, maximumThreads, available))
    }
}

/// Moves bytes between memory regions on NUMA nodes — DRAM, CXL (CPU-less)
/// nodes, or the emulated far pool — with CPU copies run by threads placed
/// near the destination node.
///
/// A `.read` copies target → local region, a `.write` local → target. The data
/// path makes no system call (a CPU copy), so the funnel applies to placement
/// (``NUMAAllocator``), not to transfers.
public final class NUMATransport: HostMemoryTransport {
    /// "numa"; hardware on a multi-node host, emulation on a one-node host.
    public let capabilities: TransportCapabilities
    /// Fed by every finished request.
    public let costEstimator = PathCostEstimator()
    /// This instance; only it posts what it prepared.
    public let identity = TransportIdentity()
    /// The allocator whose nodes this transport serves.
    public let allocator: NUMAAllocator
    /// Thread policy for copies.
    public let policy: NUMACopyPolicy
    /// Registered local regions (bookkeeping: host memory needs no pinning).
    public let registrations = HostRegistrations(transportName: "numa")
    private var regions: RegionTable<Void> { registrations.table }
    private let pools: Mutex<[Int: CopyPool]>
    private let closed = ClosedFlag()

    /// Creates the transport over `allocator`'s nodes.
    public init(allocator: NUMAAllocator = NUMAAllocator(), policy: NUMACopyPolicy = NUMACopyPolicy()) {
        self.allocator = allocator
        self.policy = policy
        let hardware = allocator.kernelNUMA && allocator.realNodes.count > 1
        capabilities = TransportCapabilities(
            name: "numa", targets: [.memory],
            implementation: hardware ? .hardware
                : .emulation(reason: "this host has one NUMA node; far memory is an emulated pool in DRAM"))
        pools = Mutex([:])
    }

    /// Copies; small requests inline, larger ones on threads near the destination.
    public func post(_ prepared: PreparedTransfer) throws(MemWallError) -> TransferRequest {
        try closed.check(capabilities.name)
        try checkOwnership(prepared)
        let uses = try regions.acquire(prepared.descriptors.map(\.local)).map(\.1)
        let request = TransferRequest(prepared: prepared, estimator: costEstimator)
        let tracked = InFlightRequest(request: request, uses: uses)
        let isRead = prepared.operation == .read
        if prepared.totalBytes <= policy.inlineBytes {
            for (i, d) in prepared.descriptors.enumerated() {
                let (from, to) = NUMATransport.endpoints(d, isRead: isRead)
                memcpy(to, from, d.length)
                tracked.complete(descriptor: i, .success(d.length))
            }
            return request
        }
        for (i, d) in prepared.descriptors.enumerated() {
            let destinationNode = isRead ? d.local.placement.node : d.target.memoryNode
            let copyPool = try pool(near: destinationNode)
            let pool = copyPool.pool
            let threads = policy.threads(for: d.length, available: copyPool.usefulThreads)
            let join = ChunkJoin(parts: threads)
            let chunk = (d.length / threads + 63) & ~63  // cache-line multiples
            var jobs: [@Sendable () -> Void] = []
            for k in 0..<threads {
                let start = k * chunk
                let count = min(chunk, d.length - start)
                guard count > 0 else { join.finish(tracked, descriptor: i, length: d.length, cancelled: false); continue }
                jobs.append { [d] in
                    let cancelled = tracked.request.isCancellationRequested
                    if !cancelled {
                        let (from, to) = NUMATransport.endpoints(d, isRead: isRead)
                        memcpy(to + start, from + start, count)
                    }
                    join.finish(tracked, descriptor: i, length: d.length, cancelled: cancelled)
                }
            }
            if !pool.submit(contentsOf: jobs) {
                // Closed meanwhile: none of these chunks ran.
                for _ in jobs { join.finish(tracked, descriptor: i, length: d.length, cancelled: true) }
            }
        }
        return request
    }

    /// Lets running copies finish, then stops every copy pool's threads. Later posts are refused.
    public func close() {
        guard closed.close() else { return }
        let all = pools.withLock { p -> [CopyPool] in defer { p = [:] }; return Array(p.values) }
        for p in all { p.pool.close() }
    }

    /// Threads a copy of `bytes` into `destinationNode` uses (1 when it runs inline).
    /// - Throws: `systemCall` when the copy threads cannot be started.
    public func copyThreads(bytes: Int, destinationNode: Int?) throws(MemWallError) -> Int {
        guard bytes > policy.inlineBytes else { return 1 }
        return policy.threads(for: bytes, available: try pool(near: destinationNode).usefulThreads)
    }

    /// Source and destination addresses of one descriptor.
    static func endpoints(_ d: TransferDescriptor, isRead: Bool) -> (UnsafeRawPointer, UnsafeMutableRawPointer) {
        let local = d.local.baseAddress + d.localOffset
        guard case .memory(let r) = d.target else { return (UnsafeRawPointer(local), local) }
        let far = r.baseAddress + Int(d.targetOffset)
        return isRead ? (UnsafeRawPointer(far), local) : (UnsafeRawPointer(local), far)
    }

    /// The copy pool pinned near `node` (created, and calibrated, on first use).
    func pool(near node: Int?) throws(MemWallError) -> CopyPool {
        let key = node ?? -1
        if let p = pools.withLock({ $0[key] }) { return p }
        let cpus = node.map { allocator.nearestCPUs(to: $0) } ?? []
        let count = max(1, min(policy.maximumThreads, cpus.isEmpty ? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) : cpus.count))
        let pool = try BlockingWorkerPool(name: "numa-copy-\(key)", threadCount: count, cpus: cpus)
        var useful = count
        if policy.calibrate && count > 1 {
            useful = try CopyPool.calibrate(pool, destination: node, allocator: allocator)
        }
        let fresh = CopyPool(pool: pool, usefulThreads: useful)
        return pools.withLock { p in
            if let existing = p[key] { return existing }
            p[key] = fresh
            return fresh
        }
    }
}

/// Copy threads near one node, and how many of them pay off there.
struct CopyPool: Sendable {
    let pool: BlockingWorkerPool
    /// 1 when calibration found several threads no faster than one.
    let usefulThreads: Int

    /// Times a 32 MiB copy into `destination` on one thread and across the
    /// pool (best of three each); returns the pool's size if that was at least
    /// 10 % faster, else 1.
    static func calibrate(_ pool: BlockingWorkerPool, destination: Int?, allocator: NUMAAllocator) throws(MemWallError) -> Int {
        let bytes = 32 << 20
        let src = try MemoryRegion.allocate(byteCount: bytes)
        // On the destination node when it has room; otherwise anywhere (a full
        // emulated pool must not make the caller's copy fail).
        var placed: MemoryRegion?
        if let destination { placed = try? allocator.allocate(byteCount: bytes, on: destination) }
        let dst: MemoryRegion
        if let placed { dst = placed } else { dst = try MemoryRegion.allocate(byteCount: bytes) }
        src.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 1) }
        let from = UInt(bitPattern: src.baseAddress), to = UInt(bitPattern: dst.baseAddress)
        var single = UInt64.max, parallel = UInt64.max
        for _ in 0..<3 {
            let t0 = MonotonicClock.nanoseconds()
            memcpy(dst.baseAddress, src.baseAddress, bytes)
            single = min(single, MonotonicClock.nanoseconds() - t0)
            let n = pool.threadCount
            let chunk = bytes / n
            let left = Countdown(n)
            let t1 = MonotonicClock.nanoseconds()
            pool.submit(contentsOf: (0..<n).map { k -> @Sendable () -> Void in
                {
                    if let d = UnsafeMutableRawPointer(bitPattern: to + UInt(k * chunk)),
                       let s = UnsafeRawPointer(bitPattern: from + UInt(k * chunk)) {
                        memcpy(d, s, chunk)
                    }
                    left.tick()
                }
            })
            left.waitForZero()
            parallel = min(parallel, MonotonicClock.nanoseconds() - t1)
        }
        withExtendedLifetime((src, dst)) {}
        return Double(parallel) * 1.1 < Double(single) ? pool.threadCount : 1
    }
}

/// A count of outstanding jobs that a thread can wait to reach zero.
final class Countdown: Sendable {
    private let left: Atomic<Int>
    private let parking = ThreadParking()
    init(_ n: Int) { left = Atomic(n) }
    func tick() {
        if left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { parking.wakeAll() }
    }
    func waitForZero() { parking.wait { left.load(ordering: .acquiring) <= 0 } }
}

extension TransferTarget {
    /// The node a memory target's pages are meant to be on.
    var memoryNode: Int? {
        if case .memory(let r) = self { return r.placement.node }
        return nil
    }
}

/// Completes a descriptor once every chunk of its copy has finished.
final class ChunkJoin: Sendable {
    private let remaining: Atomic<Int>
    private let anyCancelled = Atomic<Bool>(false)

    init(parts: Int) { remaining = Atomic(parts) }

    func finish(_ tracked: InFlightRequest, descriptor i: Int, length: Int, cancelled: Bool) {
        if cancelled { anyCancelled.store(true, ordering: .relaxed) }
        guard remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 else { return }
        if anyCancelled.load(ordering: .relaxed) {
            tracked.complete(descriptor: i, .failure(MemWallError(.cancelled, "cancelled before its copy ran")))
        } else {
            tracked.complete(descriptor: i, .success(length))
        }
    }
}
