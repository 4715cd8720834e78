#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization

/// State of a request or of one of its descriptors.
public enum TransferStatus: Sendable, Equatable, CustomStringConvertible {
    /// Posted, not finished.
    case pending
    /// Every byte moved.
    case completed
    /// Failed with this error (the first one, for a request).
    case failed(MemWallError)
    /// Cancelled before it was handed to the kernel or NIC.
    case cancelled

    /// True once nothing more will change.
    public var isFinal: Bool { if case .pending = self { false } else { true } }

    /// Short name.
    public var description: String {
        switch self {
        case .pending: "pending"
        case .completed: "completed"
        case .failed(let e): "failed: \(e)"
        case .cancelled: "cancelled"
        }
    }
}

/// What a finished request did; feeds the per-path cost estimate.
public struct TransferReport: Sendable, Hashable {
    /// Bytes moved successfully.
    public var bytes: Int
    /// Number of descriptors in the request.
    public var descriptorCount: Int
    /// Monotonic time of `post`, in nanoseconds.
    public var postedAt: UInt64
    /// Monotonic time the last descriptor finished, in nanoseconds.
    public var completedAt: UInt64
    /// `completedAt - postedAt`.
    public var nanoseconds: UInt64 { completedAt &- postedAt }
    /// Achieved bandwidth in bytes per second.
    public var bytesPerSecond: Double { nanoseconds == 0 ? 0 : Double(bytes) * 1e9 / Double(nanoseconds) }

    /// Created by transports for each finished request or slot.
    package init(bytes: Int, descriptorCount: Int, postedAt: UInt64, completedAt: UInt64) {
        self.bytes = bytes
        self.descriptorCount = descriptorCount
        self.postedAt = postedAt
        self.completedAt = completedAt
    }
}

/// A validated descriptor list, ready to be posted many times.
///
/// Bounds, alignment and registration are checked once in `prepare`; what a
/// transport resolved then (fixed-buffer indices, keys) rides in `plan`.
public final class PreparedTransfer: Sendable {
    /// Direction.
    public let operation: TransferOperation
    /// The moves, in order.
    public let descriptors: [TransferDescriptor]
    /// Total bytes over all descriptors.
    public let totalBytes: Int
    /// The transport instance that prepared it; posting it on any other
    /// instance is refused with `misuse`.
    public let preparedBy: TransportIdentity
    /// Name of that transport, for messages.
    public let transportName: String
    /// Transport-private, resolved form of the descriptors.
    package let plan: any Sendable

    /// Created by transports in `prepare`.
    package init(operation: TransferOperation, descriptors: [TransferDescriptor], preparedBy transport: some Transport,
                 plan: any Sendable = ()) {
        self.operation = operation
        self.descriptors = descriptors
        self.totalBytes = descriptors.reduce(0) { $0 + $1.length }
        self.preparedBy = transport.identity
        self.transportName = transport.capabilities.name
        self.plan = plan
    }
}

/// One posted transfer: per-request and per-descriptor status, async wait, cheap poll.
///
/// The request keeps its ``PreparedTransfer`` — and so every buffer it names —
/// alive until the last descriptor is final; transports keep the request until
/// the kernel or NIC reported on every descriptor. Cancelling stops descriptors
/// not yet handed over; the ones in flight run to completion first, so no
/// buffer is released while hardware may still write it.
public final class TransferRequest: Sendable, CustomStringConvertible {
    /// One bit per descriptor, the first 64 inline: a request of up to 64
    /// descriptors allocates nothing beyond itself on the success path.
    private struct DescriptorBits {
        private var inline: UInt64 = 0
        private var spill: [UInt64] = []

        init(count: Int) {
            if count > 64 { spill = Array(repeating: 0, count: (count - 64 + 63) / 64) }
        }

        func contains(_ i: Int) -> Bool {
            if i < 64 { return inline & (1 << UInt64(i)) != 0 }
            let j = i - 64
            return spill[j >> 6] & (1 << UInt64(j & 63)) != 0
        }

        /// Sets bit `i`; false when it was already set.
        mutating func insert(_ i: Int) -> Bool {
            if i < 64 {
                let bit: UInt64 = 1 << UInt64(i)
                defer { inline |= bit }
                return inline & bit == 0
            }
            let j = i - 64
            let bit: UInt64 = 1 << UInt64(j & 63)
            defer { spill[j >> 6] |= bit }
            return spill[j >> 6] & bit == 0
        }
    }

    private struct State {
        /// Descriptors that are final.
        var finished: DescriptorBits
        /// The final status of descriptors that did not complete (failed or
        /// cancelled); every other finished descriptor completed.
        var unsuccessful: [Int: TransferStatus] = [:]
        var remaining: Int
        var bytes = 0
        var firstError: MemWallError?
        var cancelledCount = 0
        var completedAt: UInt64 = 0
        var cancelRequested = false
        var waiters: [CheckedContinuation<Void, Never>] = []
        /// Threads parked in `waitBlocking` (made only when one parks).
        var parked: ThreadParking?

        func status(_ i: Int) -> TransferStatus {
            guard finished.contains(i) else { return .pending }
            return unsuccessful[i] ?? .completed
        }
    }

    private static let nextID = Atomic<UInt64>(1)

    /// Process-unique id.
    public let id: UInt64
    /// The descriptors this request moves.
    public let prepared: PreparedTransfer
    /// Monotonic time of posting.
    public let postedAt: UInt64
    private let state: Mutex<State>
    private let estimator: PathCostEstimator?
    private let onCancel: (@Sendable (TransferRequest) -> Void)?
    /// Atomic mirror of "finished" so `poll` costs one load on the hot path.
    private let finished = Atomic<Bool>(false)

    /// Created by transports in `post`.
    /// - Parameters:
    ///   - estimator: Receives this request's report when it finishes.
    ///   - onCancel: Asks the transport to stop what it has not handed over yet
    ///     for this request. It is handed the request, so a transport can make
    ///     the handler once (in `prepare`) instead of once per post.
    package init(prepared: PreparedTransfer, estimator: PathCostEstimator?, onCancel: (@Sendable (TransferRequest) -> Void)? = nil) {
        self.id = TransferRequest.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        self.prepared = prepared
        self.postedAt = MonotonicClock.nanoseconds()
        self.estimator = estimator
        self.onCancel = onCancel
        let n = prepared.descriptors.count
        self.state = Mutex(State(finished: DescriptorBits(count: n), remaining: n))
        if n == 0 { finishEmpty() }
    }

    private func finishEmpty() {
        state.withLock { $0.completedAt = postedAt }
        finished.store(true, ordering: .releasing)
    }

    /// Records the outcome of descriptor `index`: bytes moved, or an error.
    /// Called exactly once per descriptor by the transport; a second call is a
    /// transport bug that would corrupt the byte count and the region's use
    /// count, so it traps (see ``record(descriptor:_:releasing:)``).
    /// - Parameter use: The region use this descriptor held; given back only
    ///   when the outcome is recorded, just before waiters wake (so a woken
    ///   caller may deregister the region at once).
    package func complete(descriptor index: Int, _ result: Result<Int, MemWallError>, releasing use: RegionUse? = nil) {
        do {
            try record(descriptor: index, result, releasing: use)
        } catch {
            preconditionFailure("memwall: \(error.message)")
        }
    }

    /// ``complete(descriptor:_:releasing:)`` that reports a second completion
    /// of one descriptor (or an index outside the request) as an error
    /// instead of trapping; the refused call changes nothing.
    /// - Throws: `misuse`.
    package func record(descriptor index: Int, _ result: Result<Int, MemWallError>, releasing use: RegionUse? = nil) throws(MemWallError) {
        guard prepared.descriptors.indices.contains(index) else {
            throw MemWallError(.misuse, "descriptor \(index) is outside 0..<\(prepared.descriptors.count) of request \(id)")
        }
        // Whether this was the last descriptor, and the report of a clean request,
        // come out of the same critical section: one lock per descriptor.
        let (accepted, isLast, report, waiters, parked) = state.withLock { s -> (Bool, Bool, TransferReport?, [CheckedContinuation<Void, Never>], ThreadParking?) in
            guard s.finished.insert(index) else { return (false, false, nil, [], nil) }
            use?.release()
            switch result {
            case .success(let n):
                s.bytes += n
            case .failure(let e) where e.code == .cancelled:
                s.unsuccessful[index] = .cancelled
                s.cancelledCount += 1
            case .failure(let e):
                s.unsuccessful[index] = .failed(e)
                if s.firstError == nil { s.firstError = e }
            }
            s.remaining -= 1
            guard s.remaining == 0 else { return (true, false, nil, [], nil) }
            s.completedAt = MonotonicClock.nanoseconds()
            let clean = s.firstError == nil && s.cancelledCount == 0
            let report = TransferReport(bytes: s.bytes, descriptorCount: prepared.descriptors.count, postedAt: postedAt,
                                        completedAt: s.completedAt)
            defer { s.waiters = [] }
            return (true, true, clean ? report : nil, s.waiters, s.parked)
        }
        guard accepted else {
            throw MemWallError(.misuse, "descriptor \(index) of request \(id) was completed twice; the second outcome (\(result)) is refused")
        }
        guard isLast else { return }
        finished.store(true, ordering: .releasing)
        parked?.wakeAll()
        if let report, let estimator, let kind = prepared.descriptors.first?.target.kind {
            estimator.record(target: kind, operation: prepared.operation, report: report)
        }
        for w in waiters { w.resume() }
    }

    /// True once the owner asked to cancel; transports check it before handing
    /// each descriptor to the kernel or NIC.
    public var isCancellationRequested: Bool { state.withLock { $0.cancelRequested } }

    /// Asks to cancel: descriptors not yet handed over finish as `cancelled`;
    /// those in flight finish normally. Idempotent.
    public func cancel() {
        let first = state.withLock { s -> Bool in
            defer { s.cancelRequested = true }
            return !s.cancelRequested
        }
        if first { onCancel?(self) }
    }

    /// The request's status without waiting or allocating: one atomic load while pending.
    @inline(__always)
    public func poll() -> TransferStatus {
        guard finished.load(ordering: .acquiring) else { return .pending }
        return state.withLock { s in
            if let e = s.firstError { return .failed(e) }
            if s.cancelledCount > 0 { return .cancelled }
            return .completed
        }
    }

    /// Status of descriptor `index`.
    public func status(ofDescriptor index: Int) -> TransferStatus {
        precondition(prepared.descriptors.indices.contains(index),
                     "descriptor index \(index) is outside 0..<\(prepared.descriptors.count) of request \(id)")
        return state.withLock { $0.status(index) }
    }

    /// Every descriptor's status, in order.
    public var descriptorStatuses: [TransferStatus] {
        state.withLock { s in (0 ..< prepared.descriptors.count).map { s.status($0) } }
    }

    /// Waits until every descriptor is final.
    ///
    /// Cancelling the calling task cancels the request, and still waits for
    /// descriptors in flight (their buffers stay valid until then).
    /// - Returns: The report of a fully successful request.
    /// - Throws: The first descriptor error, or `cancelled`.
    @discardableResult
    public func wait() async throws(MemWallError) -> TransferReport {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.remaining == 0 { return true }
                    s.waiters.append(c)
                    return false
                }
                if done { c.resume() }
            }
        } onCancel: {
            self.cancel()
        }
        return try finalReport()
    }

    /// Blocks the calling thread until the request is final (for benchmarks and
    /// threads outside Swift concurrency). Spins briefly (a fast device finishes
    /// within microseconds), then parks (``ThreadParking``, made only when a
    /// thread actually parks) until the last completion wakes it, so a long
    /// wait costs no CPU that the completion thread may need.
    @discardableResult
    public func waitBlocking() throws(MemWallError) -> TransferReport {
        // A local function, not a closure value: nothing is allocated per wait.
        func done() -> Bool { finished.load(ordering: .acquiring) }
        if !ThreadParking.spin(200, until: done) {
            let parking = state.withLock { s -> ThreadParking? in
                if s.remaining == 0 { return nil }
                if s.parked == nil { s.parked = ThreadParking() }
                return s.parked
            }
            parking?.wait(spins: 0, until: done)
        }
        return try finalReport()
    }

    private func finalReport() throws(MemWallError) -> TransferReport {
        let (err, cancelled, report) = state.withLock { s in
            (s.firstError, s.cancelledCount > 0,
             TransferReport(bytes: s.bytes, descriptorCount: prepared.descriptors.count, postedAt: postedAt, completedAt: s.completedAt))
        }
        if let err { throw err }
        if cancelled {
            throw MemWallError(.cancelled, "request \(id) was cancelled after \(report.bytes) of \(prepared.totalBytes) bytes moved")
        }
        return report
    }

    /// `"request 12 (write, 4 descriptors, completed)"`.
    public var description: String {
        "request \(id) (\(prepared.operation), \(prepared.descriptors.count) descriptors, \(poll()))"
    }
}
