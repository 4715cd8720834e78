#if canImport(Glibc)
import Glibc
#endif
import CURing
import CMemWallShim
import MemWallCore
import Transport

/// Setup flags tried in order when creating a ring: the first the kernel
/// accepts wins, so an older kernel gets a plainer ring instead of an error.
enum URingSetupFlags {
    /// (flags, label) from most to least featureful.
    static let candidates: [(UInt32, String)] = [
        // SUBMIT_ALL: one bad SQE does not stop the rest of a batch (5.18).
        // CLAMP: a too-large depth is clamped instead of refused (5.6).
        (IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CLAMP, "SUBMIT_ALL|CLAMP"),
        (IORING_SETUP_CLAMP, "CLAMP"),
        (0, "none"),
    ]

    /// For a ring one thread drives (``URingDirectQueue``): completions are
    /// processed when that thread waits (DEFER_TASKRUN, 6.1) instead of by
    /// interrupting it (COOP_TASKRUN, 5.19) — the flags fio sets. The ring
    /// starts disabled so the thread that enables it becomes its issuer.
    static let singleIssuer: [(UInt32, String)] = [
        (IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CLAMP | IORING_SETUP_COOP_TASKRUN
            | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
         "SUBMIT_ALL|CLAMP|COOP_TASKRUN|SINGLE_ISSUER|DEFER_TASKRUN"),
    ] + sharedIssuer

    /// For a ring any thread may drive: no task-work interrupts (COOP_TASKRUN) when the kernel has it.
    static let sharedIssuer: [(UInt32, String)] = [
        (IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CLAMP | IORING_SETUP_COOP_TASKRUN, "SUBMIT_ALL|CLAMP|COOP_TASKRUN"),
    ] + candidates
}

/// One io_uring instance: its memory-mapped rings and file descriptor,
/// created once and torn down exactly once by `deinit`.
///
/// The struct is not copyable, so two owners of one ring cannot exist, and
/// the ring pointer never leaves it: submitting, reaping and registering
/// buffers and files are its methods. The `io_uring` C struct lives on the
/// heap so its address is stable while a submitter (under its owner's lock)
/// and a reaper thread use it.
struct URingQueue: ~Copyable, @unchecked Sendable {
    // @unchecked: the submission side is used only under the owner's
    // submission lock (or by the one thread that drives a direct queue) and the
    // completion side by one consumer at a time, which is liburing's threading
    // model (one producer, one consumer).
    private let ring: UnsafeMutablePointer<io_uring>
    /// Entries in the submission queue (after any clamping).
    let entries: Int
    /// The setup flags that were accepted.
    let flagsLabel: String
    /// The setup flags that were accepted.
    let flags: UInt32

    /// Creates a ring with `entries` SQEs, probing setup flags.
    /// - Throws: `systemCall` from `io_uring_queue_init_params` (ENOSYS, EPERM
    ///   under seccomp or `io_uring_disabled`, ENOMEM under a memlock limit).
    init(entries: Int, funnel: SyscallFunnel,
         candidates: [(UInt32, String)] = URingSetupFlags.candidates) throws(MemWallError) {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        var lastError = Errno.invalidArgument
        for (flags, label) in candidates {
            var params = io_uring_params()
            params.flags = flags
            let r = funnel.call("io_uring_queue_init") {
                let rc = io_uring_queue_init_params(UInt32(entries), ring, &params)
                if rc < 0 { memwall_set_errno(-rc); return -1 }
                return 0
            }
            switch r {
            case .success:
                self.ring = ring
                self.entries = Int(params.sq_entries)
                self.flagsLabel = label
                self.flags = flags
                return
            case .failure(let e) where e == .invalidArgument:
                lastError = e  // this kernel does not know a flag: try the next set
            case .failure(let e):
                ring.deallocate()
                throw .system("io_uring_queue_init_params", e,
                    "the kernel refused to create an io_uring of \(entries) entries"
                        + (e == .noMemory ? "; raise the memlock limit (ulimit -l)" : "")
                        + (e == .notPermitted || e == .notImplemented ? "; io_uring is disabled or filtered (seccomp, kernel.io_uring_disabled)" : ""))
            }
        }
        ring.deallocate()
        throw .system("io_uring_queue_init_params", lastError,
                      "no set of setup flags was accepted for a ring of \(entries) entries")
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    // MARK: Submission

    /// Fills the next free SQE with `io` (from where it stands), tagged `tag`.
    /// - Returns: False when the submission queue is full (submit first).
    func push(_ io: URingIO, tag: UInt64) -> Bool {
        guard let sqe = io_uring_get_sqe(ring) else { return false }
        io.fill(sqe)
        io_uring_sqe_set_data64(sqe, tag)
        return true
    }

    /// Queues a no-op tagged `tag` (wakes a thread waiting for a completion).
    /// - Returns: False when the submission queue is full.
    func pushNop(tag: UInt64) -> Bool {
        guard let sqe = io_uring_get_sqe(ring) else { return false }
        io_uring_prep_nop(sqe)
        io_uring_sqe_set_data64(sqe, tag)
        return true
    }

    /// `io_uring_submit_and_wait`: hands the filled SQEs to the kernel and
    /// waits for `wait` completions (0: none), retried on EINTR.
    /// - Returns: SQEs submitted, or `-errno` (EAGAIN/EBUSY: short of
    ///   resources or the CQ is full; the SQEs stay queued for the next call).
    func submit(waitingFor wait: Int = 0) -> Int32 {
        var r: Int32
        repeat {
            r = wait == 0 ? io_uring_submit(ring) : io_uring_submit_and_wait(ring, UInt32(wait))
        } while r == -EINTR
        return r
    }

    /// Submits and runs deferred completion work (DEFER_TASKRUN) without waiting.
    func submitAndGetEvents() -> Int32 { io_uring_submit_and_get_events(ring) }

    /// Enables a ring created disabled (R_DISABLED); the calling thread
    /// becomes a single-issuer ring's issuer.
    func enable() throws(MemWallError) {
        // liburing 2.3 declares io_uring_enable_rings but does not export it: register directly.
        let rc = io_uring_register(UInt32(bitPattern: ring.pointee.ring_fd), UInt32(IORING_REGISTER_ENABLE_RINGS), nil, 0)
        guard rc >= 0 else {
            throw .system("io_uring_register(IORING_REGISTER_ENABLE_RINGS)", Errno(rawValue: -rc),
                          "the kernel refused to enable the ring")
        }
    }

    // MARK: Completion

    /// CQEs waiting in the completion queue.
    var readyCompletions: Int { Int(io_uring_cq_ready(ring)) }

    /// Sleeps in the kernel until a CQE is there (it is not consumed).
    /// - Returns: 0, or `-errno`.
    func waitForCompletion() -> Int32 {
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        return io_uring_wait_cqe(ring, &cqe)
    }

    /// Sleeps until a CQE is there or the time is up (it is not consumed).
    func waitForCompletion(microseconds: Int) {
        var ts = __kernel_timespec(tv_sec: Int64(microseconds / 1_000_000), tv_nsec: Int64(microseconds % 1_000_000) * 1000)
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        _ = io_uring_wait_cqe_timeout(ring, &cqe, &ts)
    }

    /// Copies up to `into.count` CQEs' `(tag, res)` out of the ring and
    /// consumes them, without waiting.
    /// - Returns: CQEs taken.
    func takeCompletions(into out: UnsafeMutableBufferPointer<(UInt64, Int32)>) -> Int {
        let capacity = out.count
        return withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<io_uring_cqe>?.self, capacity: capacity) { cqes -> Int in
            guard let base = cqes.baseAddress else { return 0 }
            let n = Int(io_uring_peek_batch_cqe(ring, base, UInt32(capacity)))
            var taken = 0
            for i in 0..<n {
                if let c = cqes[i] { out[taken] = (c.pointee.user_data, c.pointee.res); taken += 1 }
            }
            if n > 0 { io_uring_cq_advance(ring, UInt32(n)) }
            return taken
        }
    }

    /// Waits for `count` completions and throws them away: what a ring's
    /// owner does before freeing buffers the kernel may still write.
    /// - Returns: Completions still owed when the ring itself failed
    ///   (`io_uring_queue_exit` then still waits for the kernel's I/O).
    func discardCompletions(_ count: Int) -> Int {
        var owed = count
        while owed > 0 {
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            let r = io_uring_wait_cqe(ring, &cqe)
            if r == 0, cqe != nil {
                io_uring_cqe_seen(ring, cqe)
                owed -= 1
            } else if r != -EINTR && r != -EAGAIN {
                break
            }
        }
        return owed
    }

    // MARK: Registration

    /// Creates an empty (sparse) table of `count` fixed-buffer slots.
    func registerBufferTable(slots count: Int) -> Bool {
        io_uring_register_buffers_sparse(ring, UInt32(count)) == 0
    }

    /// Pins `region` as fixed buffer `slot` of the sparse table, or empties
    /// the slot (`nil`).
    /// - Returns: The kernel's refusal (ENOMEM under a memlock limit), or `nil`.
    func setBuffer(_ slot: Int32, to region: MemoryRegion?) -> Errno? {
        var iov = iovec(iov_base: region?.baseAddress, iov_len: region?.byteCount ?? 0)
        let rc = io_uring_register_buffers_update_tag(ring, UInt32(slot), &iov, nil, 1)
        return rc < 0 ? Errno(rawValue: -rc) : nil
    }

    /// Pins `regions` as fixed buffers 0..<count in one call.
    func registerBuffers(_ regions: [MemoryRegion]) -> Bool {
        let iovecs = regions.map { iovec(iov_base: $0.baseAddress, iov_len: $0.byteCount) }
        return iovecs.withUnsafeBufferPointer { b in
            io_uring_register_buffers(ring, b.baseAddress, UInt32(b.count)) == 0
        }
    }

    /// Creates an empty (sparse) table of `count` fixed-file slots.
    func registerFileTable(slots count: Int) -> Bool {
        io_uring_register_files_sparse(ring, UInt32(count)) == 0
    }

    /// Points fixed file `slot` at `fileDescriptor`, or empties it (-1).
    /// - Returns: The kernel's refusal, or `nil`.
    func setFile(_ slot: Int32, to fileDescriptor: Int32) -> Errno? {
        var fd = fileDescriptor
        let rc = io_uring_register_files_update(ring, UInt32(slot), &fd, 1)
        return rc < 0 ? Errno(rawValue: -rc) : nil
    }
}
