import MemWallCore
import Transport

/// How to build the transport under test and the far side it moves to.
///
/// Every transport's tests describe themselves with one fixture and run the
/// same checks (``ConformanceCheck``); that is what makes an RDMA path, an
/// io_uring path and their emulations interchangeable.
public struct ConformanceFixture: Sendable {
    /// Shown in failures ("io_uring on /tmp file").
    public var name: String
    /// Creates a fresh transport whose system calls go through `funnel`.
    public var makeTransport: @Sendable (_ funnel: SyscallFunnel) throws(MemWallError) -> any Transport
    /// Creates a far side of at least `byteCount` bytes (a file, a region on a
    /// node, a peer's exported segment) for the transport a check just made.
    /// The transport is passed because a remote segment is only usable by the
    /// transport whose connection resolved it. Clean-up is the fixture's job:
    /// unlink a file right after opening it, so nothing is left behind.
    public var makeTarget: @Sendable (_ byteCount: Int, _ transport: any Transport) throws(MemWallError) -> TransferTarget
    /// Creates local memory (default: page-aligned anonymous memory).
    public var makeLocal: @Sendable (_ byteCount: Int) throws(MemWallError) -> MemoryRegion
    /// Offsets and lengths must be multiples of this (512/4096 under
    /// O_DIRECT, 1 for memory and buffered files).
    public var alignment: Int
    /// Funnel function names the data path calls, per direction ("pread",
    /// "io_uring.read"); empty when the data path makes no system call (a CPU
    /// copy), in which case the fault checks are skipped with that reason.
    public var faultPoints: [TransferOperation: String]
    /// Why the fault checks do not apply when `faultPoints` is empty.
    public var noFaultPointsReason: String

    /// Creates a fixture whose targets do not depend on the transport (files, local memory).
    public init(name: String,
                alignment: Int,
                faultPoints: [TransferOperation: String],
                makeTransport: @escaping @Sendable (_ funnel: SyscallFunnel) throws(MemWallError) -> any Transport,
                makeTarget: @escaping @Sendable (_ byteCount: Int) throws(MemWallError) -> TransferTarget,
                makeLocal: @escaping @Sendable (_ byteCount: Int) throws(MemWallError) -> MemoryRegion = { n throws(MemWallError) in
                    try MemoryRegion.allocate(byteCount: n)
                }) {
        self.init(name: name, alignment: alignment, faultPoints: faultPoints, makeTransport: makeTransport,
                  makeTargetFor: { n, _ throws(MemWallError) in try makeTarget(n) }, makeLocal: makeLocal)
    }

    /// Creates a fixture whose targets are reached through the transport under
    /// test, such as a segment a peer exported, resolved over a connection
    /// that transport opened.
    /// - Parameter noFaultPointsReason: Why the fault checks do not apply when
    ///   `faultPoints` is empty (say what the data path does instead of a system call).
    public init(name: String,
                alignment: Int,
                faultPoints: [TransferOperation: String],
                noFaultPointsReason: String = "makes no system call on its data path (a CPU copy)",
                makeTransport: @escaping @Sendable (_ funnel: SyscallFunnel) throws(MemWallError) -> any Transport,
                makeTargetFor: @escaping @Sendable (_ byteCount: Int, _ transport: any Transport) throws(MemWallError) -> TransferTarget,
                makeLocal: @escaping @Sendable (_ byteCount: Int) throws(MemWallError) -> MemoryRegion = { n throws(MemWallError) in
                    try MemoryRegion.allocate(byteCount: n)
                }) {
        self.name = name
        self.alignment = max(alignment, 1)
        self.faultPoints = faultPoints
        self.noFaultPointsReason = noFaultPointsReason
        self.makeTransport = makeTransport
        self.makeTarget = makeTargetFor
        self.makeLocal = makeLocal
    }
}

/// A broken promise of the Transport contract, with what was expected and seen.
public struct ConformanceFailure: Error, Sendable, CustomStringConvertible {
    /// Which check found it.
    public var check: ConformanceCheck
    /// What went wrong.
    public var message: String
    /// `"[roundTrip] …"`.
    public var description: String { "[\(check.rawValue)] \(message)" }
}

/// How one check ended when it did not fail.
public enum ConformanceOutcome: Sendable, Equatable {
    /// The check ran; the note says what it covered.
    case passed(String)
    /// The check does not apply to this transport or host; the reason says why.
    case skipped(String)
}

/// The checks of the suite, each runnable on its own (one test case per check).
public enum ConformanceCheck: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Data written equals data read, over many sizes and offsets.
    case roundTrip
    /// Several descriptors in one request, each with its own status.
    case scatterGather
    /// One prepared list posted many times sees the latest bytes each time.
    case repost
    /// Out-of-range, empty and zero-length descriptors are refused in `prepare`.
    case boundsErrors
    /// Misaligned offsets, lengths and buffers are refused (O_DIRECT targets).
    case alignmentErrors
    /// Register once, twice is an error, unregistered regions are refused.
    case registration
    /// Many tasks post at once on disjoint ranges; nothing is mixed up.
    case concurrentPosts
    /// `cancel()` right after `post`: every descriptor ends completed or cancelled.
    case cancellation
    /// Cancelling the awaiting task cancels the request and still waits for it.
    case taskCancellation
    /// EINTR from the data path is retried; the data is right.
    case faultInterrupted
    /// EAGAIN from the data path is retried; the data is right.
    case faultWouldBlock
    /// A short read or write is resumed; the data is right.
    case faultShortTransfer
    /// ENOMEM fails the descriptor with that errno; the transport stays usable.
    case faultNoMemory
    /// EIO fails the descriptor with that errno; the transport stays usable.
    case faultIOError
    /// Regions, requests and the transport itself are freed once released.
    case noLeak

    /// The raw value.
    public var description: String { rawValue }
}
