#if canImport(Glibc)
import Glibc
#endif
import CURing
import CMemWallShim
import MemWallCore

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
/// The struct is not copyable, so two owners of one ring cannot exist. The
/// `io_uring` C struct lives on the heap so its address is stable while a
/// submitter (under its owner's lock) and the reaper thread use it.
struct URingQueue: ~Copyable, @unchecked Sendable {
    // @unchecked: the submission side is used only under URingEngine's lock and
    // the completion side only by its single reaper thread, which is the
    // liburing threading model (one producer, one consumer).
    let ring: UnsafeMutablePointer<io_uring>
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
}
