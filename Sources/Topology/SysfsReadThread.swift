#if canImport(Glibc)
import Glibc
#endif
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
    private let thread = Mutex<pthread_t?>(nil)

    /// Starts reading `tree`; falls back to reading in ``join()`` if no thread can be created.
    init(tree: SysfsTree, live: Bool) {
        self.tree = tree
        self.live = live
        var handle = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let status = pthread_create(&handle, nil, { raw in
            guard let raw else { return nil }
            let reader = Unmanaged<SysfsReadThread>.fromOpaque(raw).takeRetainedValue()
            let facts = SysfsFacts.read(reader.tree, live: reader.live)
            reader.result.withLock { $0 = facts }
            return nil
        }, context)
        if status == 0 {
            thread.withLock { $0 = handle }
        } else {
            // The thread never started, so it will not release the reference it was given.
            Unmanaged<SysfsReadThread>.fromOpaque(context).release()
        }
    }

    /// Waits for the reading thread and returns what it read.
    func join() -> SysfsFacts {
        if let handle = thread.withLock({ t -> pthread_t? in defer { t = nil }; return t }) {
            pthread_join(handle, nil)
        }
        if let facts = result.withLock({ $0 }) { return facts }
        let facts = SysfsFacts.read(tree, live: live)
        result.withLock { $0 = facts }
        return facts
    }

    deinit {
        guard let handle = thread.withLock({ $0 }) else { return }
        // Reached without join() only when discovery failed early. The worker holds a
        // reference until it finishes, so this runs either after it ended (join reaps it)
        // or on the worker itself as it drops the last reference (it cannot join itself,
        // so it detaches and the system reaps it when it returns).
        if pthread_equal(handle, pthread_self()) != 0 {
            pthread_detach(handle)
        } else {
            pthread_join(handle, nil)
        }
    }
}
