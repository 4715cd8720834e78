#if canImport(Glibc)
import Glibc
#endif
import CURing
import CMemWallShim
import MemWallCore
import Synchronization
import Transport

/// One descriptor as the ring sees it; raw addresses as integers so the plan is `Sendable`.
struct URingOp: Sendable {
    var fileDescriptor: Int32
    /// Slot in the registered-file table, or -1 to use `fileDescriptor`.
    var fixedFile: Int32
    var bufferAddress: UInt
    var length: Int
    var offset: Int64
    var target: StorageTarget
}

/// A descriptor on its way through the ring (queued, in flight, or resubmitted).
struct URingWork {
    var tracked: InFlightRequest
    var index: Int
    var io: URingIO
    /// Named in messages; the request holds it too.
    var target: StorageTarget
}

/// Owns the ring, the queue of work not yet handed to the kernel, the table of
/// work in flight, and the reaper thread that turns CQEs into completions.
///
/// Work in flight is only ever finished by its CQE, so a buffer the kernel may
/// still write stays referenced (through its request) until the kernel is done.
final class URingEngine: Sendable {
    private struct State {
        var queued: [URingWork] = []
        var queuedHead = 0
        /// Resumed short transfers and EAGAIN retries go before new work.
        var resubmit: [URingWork] = []
        var slots: [URingWork?]
        var freeSlots: [Int]
        var inFlight = 0
        var stopping = false
    }

    static let wakeTag: UInt64 = .max

    let queue: URingQueue
    let queueDepth: Int
    let batchSize: Int
    let funnel: SyscallFunnel
    /// Queues, slots and counters. Never held across a system call, so the
    /// reaper and posting threads only ever wait for each other briefly.
    private let state: Mutex<State>
    /// Serialises use of the submission queue (filling SQEs and io_uring_enter).
    private let submission = Mutex<Void>(())
    /// Serialises taking CQEs off the completion queue (reaper or a polling caller).
    private let completion = Mutex<Void>(())

    init(queue: consuming URingQueue, queueDepth: Int, batchSize: Int, funnel: SyscallFunnel) {
        self.queue = queue
        self.queueDepth = queueDepth
        self.batchSize = batchSize
        self.funnel = funnel
        self.state = Mutex(State(slots: Array(repeating: nil, count: queueDepth),
                                 freeSlots: Array((0..<queueDepth).reversed())))
    }

    /// Starts the reaper; it holds the engine until it has drained and exits.
    func startReaper() throws(MemWallError) -> WorkerThread {
        try WorkerThread(name: "mw-uring-reap") { self.reap() }
    }

    /// Queues work and hands as much as the depth allows to the kernel.
    func enqueue(_ work: [URingWork]) {
        let refused = state.withLock { s -> Bool in
            guard !s.stopping else { return true }
            s.queued.append(contentsOf: work)
            return false
        }
        guard !refused else {
            // Stopped meanwhile (closed while this post ran): nothing reaches the kernel.
            deliver(work.map { ($0, .failure(MemWallError(.cancelled, "the io_uring transport was closed before it was submitted"))) })
            return
        }
        pump()
    }

    /// Finishes as cancelled the queued work of every request that asked to
    /// cancel; work already in the kernel completes normally.
    func cancelRequested() {
        let finished = state.withLock { s -> [(URingWork, Result<Int, MemWallError>)] in
            var out: [(URingWork, Result<Int, MemWallError>)] = []
            var kept: [URingWork] = []
            for w in s.queued[s.queuedHead...] {
                if w.tracked.request.isCancellationRequested {
                    out.append((w, .failure(MemWallError(.cancelled, "cancelled before it was submitted"))))
                } else {
                    kept.append(w)
                }
            }
            s.queued = kept
            s.queuedHead = 0
            return out
        }
        deliver(finished)
    }

    /// Stops: queued work is cancelled, work in flight completes, then the reaper exits.
    func stop() {
        let finished = state.withLock { s -> [(URingWork, Result<Int, MemWallError>)] in
            s.stopping = true
            let rest = Array(s.queued[s.queuedHead...]) + s.resubmit
            s.queued = []; s.queuedHead = 0; s.resubmit = []
            return rest.map { ($0, .failure(MemWallError(.cancelled, "the io_uring transport shut down before it was submitted"))) }
        }
        submission.withLock { _ in
            // A NOP wakes the reaper even when nothing is in flight. If SQEs left
            // by a refused submit fill the ring, push them first: without the NOP
            // an idle reaper would sleep forever and deinit's join with it.
            if !queue.pushNop(tag: URingEngine.wakeTag) {
                _ = submitLocked()
                _ = queue.pushNop(tag: URingEngine.wakeTag)
            }
            _ = submitLocked()
        }
        deliver(finished)
    }

    private func deliver(_ finished: [(URingWork, Result<Int, MemWallError>)]) {
        for (w, r) in finished { w.tracked.complete(descriptor: w.index, r) }
    }

    /// Moves queued work into the ring while the depth allows: slots are taken
    /// under the state lock, SQEs filled and submitted (every `batchSize`) under
    /// the submission lock. A slot is filled before its SQE exists, so its CQE
    /// always finds it.
    private func pump() {
        let (taken, cancelled) = state.withLock { s -> ([(Int, URingWork)], [(URingWork, Result<Int, MemWallError>)]) in
            var taken: [(Int, URingWork)] = []
            var cancelled: [(URingWork, Result<Int, MemWallError>)] = []
            while s.inFlight < queueDepth && !s.stopping {
                let work: URingWork
                if let w = s.resubmit.popLast() {
                    work = w
                } else if s.queuedHead < s.queued.count {
                    work = s.queued[s.queuedHead]
                    s.queuedHead += 1
                    if s.queuedHead == s.queued.count { s.queued.removeAll(keepingCapacity: true); s.queuedHead = 0 }
                } else {
                    break
                }
                if work.io.progress.done == 0 && work.io.progress.retries == 0 && work.tracked.request.isCancellationRequested {
                    cancelled.append((work, .failure(MemWallError(.cancelled, "cancelled before it was submitted"))))
                    continue
                }
                let slot = s.freeSlots.removeLast()
                s.slots[slot] = work
                s.inFlight += 1
                taken.append((slot, work))
            }
            return (taken, cancelled)
        }
        deliver(cancelled)
        guard !taken.isEmpty else { return }
        let unplaced = submission.withLock { _ -> [Int] in
            var unplaced: [Int] = []
            var pending = 0
            for (slot, work) in taken {
                if !queue.push(work.io, tag: UInt64(slot)) {
                    // SQEs left from a refused submit fill the ring: push them first.
                    _ = submitLocked()
                    pending = 0
                    guard queue.push(work.io, tag: UInt64(slot)) else { unplaced.append(slot); continue }
                }
                pending += 1
                if pending >= batchSize { _ = submitLocked(); pending = 0 }
            }
            if pending > 0 { _ = submitLocked() }
            return unplaced
        }
        if !unplaced.isEmpty {
            // No SQE could be had: give the slots back and retry after the next completion.
            let dropped = state.withLock { s -> [(URingWork, Result<Int, MemWallError>)] in
                var dropped: [(URingWork, Result<Int, MemWallError>)] = []
                for slot in unplaced {
                    if let w = s.slots[slot] {
                        if s.stopping {
                            dropped.append((w, .failure(MemWallError(.cancelled, "the io_uring transport shut down before it was submitted"))))
                        } else {
                            s.resubmit.append(w)
                        }
                    }
                    s.slots[slot] = nil
                    s.freeSlots.append(slot)
                    s.inFlight -= 1
                }
                return dropped
            }
            deliver(dropped)
        }
    }

    /// `io_uring_submit`, with the submission lock held.
    private func submitLocked() -> Int32 {
        let r = queue.submit()
        // EAGAIN/EBUSY: the kernel is short of resources or the CQ is full; the
        // SQEs stay in the ring and go with the next submit (after reaping).
        if r < 0 && r != -EAGAIN && r != -EBUSY {
            StandardError.write("memwall: io_uring_submit: \(Errno(rawValue: -r)); the SQEs stay queued and are retried\n")
        }
        return r
    }

    /// The reaper: sleeps in the kernel until a CQE is there, then reaps;
    /// exits once stopped and drained.
    private func reap() {
        while true {
            let w = queue.waitForCompletion()
            if w < 0 && w != -EINTR && w != -EAGAIN {
                // Work in flight can only be finished by its CQE (the kernel may
                // still write its buffer), so keep waiting rather than give up.
                StandardError.write("memwall: io_uring_wait_cqe: \(Errno(rawValue: -w)); retrying\n")
                usleep(1000)
                continue
            }
            if reapReady().exit { return }
        }
    }

    /// Reaps until nothing is in flight (shutdown without a completion thread).
    func drain() {
        while !reapReady().exit { waitForCompletion(microseconds: 10_000) }
    }

    /// Sleeps until a CQE is in the completion queue or the time is up.
    func waitForCompletion(microseconds: Int) {
        queue.waitForCompletion(microseconds: microseconds)
    }

    /// Takes every CQE that is there now (without waiting) and acts on it:
    /// completes descriptors, queues resumptions and retries, refills the ring.
    /// Safe from any thread: the reaper calls it after each wake-up, and a
    /// caller that polls may call it to complete requests without a thread hop.
    /// - Returns: CQEs taken, and whether the engine is stopped and drained.
    @discardableResult
    func reapReady() -> (count: Int, exit: Bool) {
        let batch = 64
        var results: [(UInt64, Int32)] = []
        completion.withLock { _ in
            withUnsafeTemporaryAllocation(of: (UInt64, Int32).self, capacity: batch) { out in
                let n = queue.takeCompletions(into: out)
                guard n > 0 else { return }
                results.reserveCapacity(n)
                for i in 0..<n { results.append(out[i]) }
            }
        }
        let (finished, needsPump, exit) = state.withLock { s -> ([(URingWork, Result<Int, MemWallError>)], Bool, Bool) in
            var out: [(URingWork, Result<Int, MemWallError>)] = []
            for (tag, res) in results where tag != URingEngine.wakeTag {
                let slot = Int(tag)
                guard slot < s.slots.count, var work = s.slots[slot] else { continue }
                s.slots[slot] = nil
                s.freeSlots.append(slot)
                s.inFlight -= 1
                switch work.io.settle(res, funnel: funnel, path: work.target.path,
                                      cancelRequested: work.tracked.request.isCancellationRequested) {
                case .finished(let outcome):
                    out.append((work, outcome))
                case .again where s.stopping:
                    out.append((work, .failure(MemWallError(.cancelled,
                        "the io_uring transport shut down after \(work.io.progress.done) of \(work.io.length) bytes"))))
                case .again:
                    s.resubmit.append(work)
                }
            }
            let more = !s.resubmit.isEmpty || s.queuedHead < s.queued.count
            return (out, more && !s.stopping, s.stopping && s.inFlight == 0)
        }
        deliver(finished)
        if needsPump { pump() }
        return (results.count, exit)
    }

}
