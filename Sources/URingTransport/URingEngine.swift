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
    var op: URingOp
    /// Registered-buffer slot, or -1 for a plain read/write.
    var bufferIndex: Int32
    var isRead: Bool
    /// Bytes already moved (short transfers are resumed from here).
    var done: Int = 0
    /// Transient errors (EAGAIN, EINTR) already retried.
    var retries: Int = 0
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
    static let maximumRetries = 64
    /// One SQE moves at most this much; longer descriptors continue like short transfers.
    static let maximumChunk = 1 << 30

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
    func startReaper() throws(MemWallError) -> pthread_t {
        var tid = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            guard let arg else { return nil }
            Unmanaged<URingEngine>.fromOpaque(arg).takeRetainedValue().reap()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<URingEngine>.fromOpaque(context).release()
            throw .system("pthread_create", Errno(rawValue: rc), "cannot start the io_uring completion thread")
        }
        return tid
    }

    /// Queues work and hands as much as the depth allows to the kernel.
    func enqueue(_ work: [URingWork]) {
        state.withLock { s in s.queued.append(contentsOf: work) }
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
            var wake = io_uring_get_sqe(queue.ring)
            if wake == nil {
                _ = submitLocked()
                wake = io_uring_get_sqe(queue.ring)
            }
            if let sqe = wake {
                io_uring_prep_nop(sqe)
                io_uring_sqe_set_data64(sqe, URingEngine.wakeTag)
            }
            _ = io_uring_submit(queue.ring)
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
                if work.done == 0 && work.retries == 0 && work.tracked.request.isCancellationRequested {
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
            let ring = queue.ring
            var unplaced: [Int] = []
            var pending = 0
            for (slot, work) in taken {
                var sqe = io_uring_get_sqe(ring)
                if sqe == nil {
                    // SQEs left from a refused submit fill the ring: push them first.
                    _ = submitLocked()
                    pending = 0
                    sqe = io_uring_get_sqe(ring)
                }
                guard let sqe else { unplaced.append(slot); continue }
                fill(sqe, work, slot: slot)
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

    private func fill(_ sqe: UnsafeMutablePointer<io_uring_sqe>, _ work: URingWork, slot: Int) {
        let address = UnsafeMutableRawPointer(bitPattern: work.op.bufferAddress + UInt(work.done))
        let count = UInt32(min(work.op.length - work.done, URingEngine.maximumChunk))
        let offset = UInt64(work.op.offset + Int64(work.done))
        let fd = work.op.fixedFile >= 0 ? work.op.fixedFile : work.op.fileDescriptor
        switch (work.isRead, work.bufferIndex >= 0) {
        case (true, true): io_uring_prep_read_fixed(sqe, fd, address, count, offset, work.bufferIndex)
        case (true, false): io_uring_prep_read(sqe, fd, address, count, offset)
        case (false, true): io_uring_prep_write_fixed(sqe, fd, address, count, offset, work.bufferIndex)
        case (false, false): io_uring_prep_write(sqe, fd, address, count, offset)
        }
        if work.op.fixedFile >= 0 {
            sqe.pointee.flags |= UInt8(1 << IOSQE_FIXED_FILE_BIT)
        }
        io_uring_sqe_set_data64(sqe, UInt64(slot))
    }

    /// `io_uring_submit`, with the submission lock held.
    private func submitLocked() -> Int32 {
        var r: Int32
        repeat { r = io_uring_submit(queue.ring) } while r == -EINTR
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
        let ring = queue.ring
        while true {
            var first: UnsafeMutablePointer<io_uring_cqe>?
            let w = io_uring_wait_cqe(ring, &first)
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
        var ts = __kernel_timespec(tv_sec: Int64(microseconds / 1_000_000), tv_nsec: Int64(microseconds % 1_000_000) * 1000)
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        _ = io_uring_wait_cqe_timeout(queue.ring, &cqe, &ts)
    }

    /// Takes every CQE that is there now (without waiting) and acts on it:
    /// completes descriptors, queues resumptions and retries, refills the ring.
    /// Safe from any thread: the reaper calls it after each wake-up, and a
    /// caller that polls may call it to complete requests without a thread hop.
    /// - Returns: CQEs taken, and whether the engine is stopped and drained.
    @discardableResult
    func reapReady() -> (count: Int, exit: Bool) {
        let ring = queue.ring
        let batch = 64
        var results: [(UInt64, Int32)] = []
        completion.withLock { _ in
            withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<io_uring_cqe>?.self, capacity: batch) { cqes in
                guard let base = cqes.baseAddress else { return }
                let n = Int(io_uring_peek_batch_cqe(ring, base, UInt32(batch)))
                guard n > 0 else { return }
                results.reserveCapacity(n)
                for i in 0..<n {
                    if let c = cqes[i] { results.append((c.pointee.user_data, c.pointee.res)) }
                }
                io_uring_cq_advance(ring, UInt32(n))
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
                if let outcome = settle(&work, res: res) {
                    out.append((work, outcome))
                } else if s.stopping {
                    out.append((work, .failure(MemWallError(.cancelled,
                        "the io_uring transport shut down after \(work.done) of \(work.op.length) bytes"))))
                } else {
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

    /// Decides what one CQE means: final (success or error) or "go again".
    private func settle(_ work: inout URingWork, res raw: Int32) -> Result<Int, MemWallError>? {
        let function = work.isRead ? "io_uring.read" : "io_uring.write"
        let remaining = work.op.length - work.done
        let res = funnel.completion(function, requested: min(remaining, URingEngine.maximumChunk), result: raw)
        if res < 0 {
            let e = Errno(rawValue: -res)
            if (e == .wouldBlock || e == .interrupted) && work.retries < URingEngine.maximumRetries {
                work.retries += 1
                return nil
            }
            return .failure(.system(function, e,
                "\(work.isRead ? "read" : "write") of \(work.op.length) bytes at offset \(work.op.offset) of '\(work.op.target.path)' failed after \(work.done) bytes"))
        }
        if res == 0 {
            return .failure(MemWallError(.shortTransfer,
                "\(function) of '\(work.op.target.path)' moved 0 bytes after \(work.done) of \(work.op.length) at offset \(work.op.offset): the file ends before the descriptor does",
                function: function))
        }
        work.done += Int(res)
        if work.done < work.op.length {
            // A short transfer: resume from where the kernel stopped, unless the
            // owner cancelled (the kernel holds nothing of this work any more).
            if work.tracked.request.isCancellationRequested {
                return .failure(MemWallError(.cancelled, "cancelled after \(work.done) of \(work.op.length) bytes"))
            }
            return nil
        }
        return .success(work.op.length)
    }
}
