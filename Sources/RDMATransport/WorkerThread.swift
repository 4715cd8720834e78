#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization

/// A dedicated OS thread (completion poller, socket receiver): it waits on the
/// kernel, so it must not occupy a Swift concurrency thread.
final class WorkerThread: Sendable {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private let handle: pthread_t
    private let joined = Atomic<Bool>(false)
    /// The thread's name, for errors and debuggers.
    let name: String

    /// Starts `body` on a new thread.
    /// - Throws: `systemCall` from `pthread_create`.
    init(name: String, _ body: @escaping @Sendable () -> Void) throws(MemWallError) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
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
    var isCurrent: Bool { pthread_equal(pthread_self(), handle) != 0 }

    /// Waits for the thread to finish; later calls and calls from the thread itself return at once.
    func join() {
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
