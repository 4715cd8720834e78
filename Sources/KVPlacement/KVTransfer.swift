import MemWallCore
import Synchronization

/// What to do with blocks another operation is still moving or storing when a load asks for them.
public enum KVLoadPolicy: Sendable, Hashable {
    /// Load what is ready now; blocks in flight are per-block failures (`busy`), as
    /// SGLang HiCache's best_effort prefetch uses what has arrived.
    case bestEffort
    /// Wait until they land, then load them.
    case wait
    /// Wait at most this long for them; those still in flight then are per-block failures (`timedOut`).
    case timeout(nanoseconds: UInt64)
}

/// Where `store` puts a runtime's blocks.
public enum KVWritePolicy: Sendable, Hashable {
    /// Into the fastest tier with room; slower tiers are written only when the block is evicted there.
    case writeBack
    /// As write-back, and a copy also goes to the last (slowest) tier in the same
    /// plan, when it has room without evicting a block: the store costs one more
    /// write now, and evicting the block down to that tier later costs none (HiCache's
    /// write-through, with MemWall's tiers below the runtime's own memory).
    case writeThrough
}

/// One block of an operation that did not complete.
public struct KVBlockFailure: Sendable, CustomStringConvertible {
    /// Position of the block in the operation's keys.
    public var index: Int
    /// The block.
    public var key: BlockKey
    /// Why: `notFound` (not cached, or reserved but never stored), `corrupted` (checksum
    /// mismatch, or its bytes were lost by a failed move), `busy` / `timedOut` (still
    /// in flight elsewhere, under the best-effort or timeout policy), `outOfBounds`
    /// (a store no tier could take), or the transport's error.
    public var error: MemWallError

    /// "block <key> (#i): message".
    public var description: String { "block \(key) (#\(index)): \(error.message)" }
}

/// How a load, store or prefetch ended.
public struct KVTransferResult: Sendable {
    /// Keys in the operation.
    public var blocks: Int
    /// Blocks that did not complete, in key order (vLLM's `get_block_ids_with_load_errors`).
    public var failed: [KVBlockFailure]
    /// Bytes moved into or out of the caller's buffers (a load or store), or between tiers (a prefetch).
    public var bytes: Int
    /// True when every block completed.
    public var succeeded: Bool { failed.isEmpty }

    /// Throws the first failure, naming its block (for callers that want all or nothing).
    public func check() throws(MemWallError) {
        guard let f = failed.first else { return }
        let more = failed.count > 1 ? " (and \(failed.count - 1) more blocks)" : ""
        throw MemWallError(f.error.code, "block \(f.key) (#\(f.index) of \(blocks)): \(f.error.message)\(more)",
                           function: f.error.function, errno: f.error.errno)
    }
}

/// An operation of the runtime API (load, store, prefetch) in flight.
///
/// It completes on whichever thread gets to it first: a caller's ``wait()``
/// runs a not yet started operation itself (no thread hop on the synchronous
/// path); otherwise the cache's worker runs it, so ``isDone``, ``result()`` and
/// the cache's eventfd (``KVCache/completionFileDescriptor``) see it finish
/// without anyone blocking. Thread-safe; may be waited on from any thread.
public final class KVTransfer: Sendable {
    private struct State {
        var job: (@Sendable () -> KVTransferResult)?
        var result: KVTransferResult?
        var continuations: [CheckedContinuation<KVTransferResult, Never>] = []
    }
    private let state: Mutex<State>
    private let finished = Atomic<Bool>(false)
    private let parking = ThreadParking()
    private let onFinish: @Sendable () -> Void

    init(job: @escaping @Sendable () -> KVTransferResult, onFinish: @escaping @Sendable () -> Void) {
        state = Mutex(State(job: job))
        self.onFinish = onFinish
    }

    /// An operation that is over before it starts (no keys, or refused per block).
    init(finished result: KVTransferResult) {
        state = Mutex(State(result: result))
        onFinish = {}
        finished.store(true, ordering: .releasing)
    }

    /// True once the operation has finished; one atomic load, no allocation.
    public var isDone: Bool { finished.load(ordering: .acquiring) }

    /// Runs the operation on this thread unless another thread has started it.
    func runIfUnclaimed() {
        guard let job = state.withLock({ s -> (@Sendable () -> KVTransferResult)? in
            defer { s.job = nil }
            return s.job
        }) else { return }
        let r = job()
        let waiters = state.withLock { s -> [CheckedContinuation<KVTransferResult, Never>] in
            s.result = r
            defer { s.continuations = [] }
            return s.continuations
        }
        finished.store(true, ordering: .releasing)
        parking.wakeAll()
        for c in waiters { c.resume(returning: r) }
        onFinish()
    }

    private var finishedResult: KVTransferResult {
        state.withLock { $0.result } ?? KVTransferResult(blocks: 0, failed: [], bytes: 0)
    }

    /// Waits for the operation (running it here if nobody has started it) and returns how it ended.
    public func wait() -> KVTransferResult {
        runIfUnclaimed()
        parking.wait { isDone }
        return finishedResult
    }

    /// Waits at most `timeoutNanoseconds` for an operation another thread runs.
    /// - Returns: The result, or `nil` when it has not finished by then.
    public func wait(timeoutNanoseconds: UInt64) -> KVTransferResult? {
        let deadline = MonotonicClock.nanoseconds() &+ timeoutNanoseconds
        guard parking.wait(deadline: deadline, until: { isDone }) else { return nil }
        return finishedResult
    }

    /// Suspends until the operation finishes (the cache's worker runs it; no
    /// Swift concurrency thread blocks on I/O).
    public func result() async -> KVTransferResult {
        if isDone { return finishedResult }
        return await withCheckedContinuation { c in
            let now = state.withLock { s -> KVTransferResult? in
                if let r = s.result { return r }
                s.continuations.append(c)
                return nil
            }
            if let now { c.resume(returning: now) }
        }
    }
}

/// A plan another operation waits for (a load that met a block being moved).
final class PlanTicket: Sendable {
    private let done = Atomic<Bool>(false)
    private let parking = ThreadParking()

    func finish() {
        done.store(true, ordering: .releasing)
        parking.wakeAll()
    }

    /// - Returns: Whether the plan finished before `deadline` (monotonic ns; nil: no limit).
    func wait(deadline: UInt64?) -> Bool { parking.wait(deadline: deadline) { done.load(ordering: .acquiring) } }
}
