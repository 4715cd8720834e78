#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization

/// Reads sysfs facts on a second POSIX thread while the calling thread runs hwloc's
/// discovery: the two read disjoint files, and on a machine with a free core the
/// sysfs part then costs no wall-clock time. The worker only opens, reads and lists
/// files (no `getenv`), so the environment variables hwloc's load sets meanwhile
/// (under its own lock) cannot race with it.
///
/// The thread is joined exactly once, by ``join()`` (or by `deinit` if `join` was never
/// called), so it never outlives this object.
final class SysfsReadThread: Sendable {
    private let tree: SysfsTree
    private let live: Bool
    private let result = Mutex<SysfsFacts?>(nil)
    private let thread = Mutex<WorkerThread?>(nil)

    /// Starts reading `tree`; falls back to reading in ``join()`` if no thread can be created.
    init(tree: SysfsTree, live: Bool) {
        self.tree = tree
        self.live = live
        // The worker holds this object until it finishes; a deinit on the
        // worker itself (discovery failed early) cannot join it, and
        // WorkerThread detaches it instead.
        let worker = try? WorkerThread(name: "mw-sysfs") { [self] in
            let facts = SysfsFacts.read(tree, live: live)
            result.withLock { $0 = facts }
        }
        thread.withLock { $0 = worker }
    }

    /// Waits for the reading thread and returns what it read.
    func join() -> SysfsFacts {
        thread.withLock { t -> WorkerThread? in defer { t = nil }; return t }?.join()
        if let facts = result.withLock({ $0 }) { return facts }
        let facts = SysfsFacts.read(tree, live: live)
        result.withLock { $0 = facts }
        return facts
    }

    deinit {
        thread.withLock { $0 }?.join()
    }
}
