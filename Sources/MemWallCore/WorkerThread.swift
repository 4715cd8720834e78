#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import Synchronization

/// The one way MemWall starts an OS thread (completion poller, io_uring
/// reaper, socket receiver, blocking worker, sysfs reader): such a thread
/// waits on the kernel, so it must not occupy a Swift concurrency thread.
///
/// The thread is joined at most once — by ``join()``, or detached by
/// `deinit` when nobody joined it — so it never leaks as a zombie, and a
/// thread that drops the last reference to its own ``WorkerThread`` does not
/// deadlock joining itself.
package final class WorkerThread: Sendable {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private let handle: pthread_t
    private let joined = Atomic<Bool>(false)
    /// The thread's name, for errors and debuggers.
    package let name: String

    /// Starts `body` on a new thread named `name` (the first 15 bytes show in
    /// `top -H` and debuggers).
    /// - Parameter cpus: Pin the thread to these CPUs first (best effort: a
    ///   set the cgroup forbids leaves it unpinned); empty leaves placement to the scheduler.
    /// - Throws: `systemCall` from `pthread_create`.
    package init(name: String, cpus: [Int32] = [], _ body: @escaping @Sendable () -> Void) throws(MemWallError) {
        let threadName = String(name.utf8.prefix(15)) ?? "memwall"
        let box = Unmanaged.passRetained(Box {
            _ = memwall_set_thread_name(threadName)
            if !cpus.isEmpty {
                _ = cpus.withUnsafeBufferPointer { memwall_pin_current_thread($0.baseAddress, Int32($0.count)) }
            }
            body()
        }).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            guard let arg else { return nil }
            let box = Unmanaged<Box>.fromOpaque(arg).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw .system("pthread_create", Errno(rawValue: rc), "cannot start the '\(name)' thread")
        }
        self.handle = t
        self.name = name
    }

    /// True when called on this thread (a thread must not join itself).
    package var isCurrent: Bool { pthread_equal(pthread_self(), handle) != 0 }

    /// Waits for the thread to finish; later calls and calls from the thread itself return at once.
    package func join() {
        if isCurrent {
            if !joined.exchange(true, ordering: .acquiringAndReleasing) { pthread_detach(handle) }
            return
        }
        guard !joined.exchange(true, ordering: .acquiringAndReleasing) else { return }
        pthread_join(handle, nil)
    }

    deinit {
        if !joined.exchange(true, ordering: .acquiringAndReleasing) { pthread_detach(handle) }
    }
}
