// Used only by scripts/tsan, which copies it into every Swift target of a copy
// of the package; never part of a normal build.
//
// On Linux a contended Synchronization.Mutex is taken with FUTEX_LOCK_PI inside
// libswiftSynchronization, which ThreadSanitizer does not instrument: it sees no
// acquire, and reports the next access under the lock as a race. This stand-in
// shadows the standard type (a module's own declarations win over imported
// ones) with the same initialiser, `withLock` and exclusion, on a pthread mutex
// that TSan intercepts, so what TSan still reports is a real race.
#if canImport(Glibc)
import Glibc
#endif

/// A pthread-mutex stand-in for `Synchronization.Mutex`, visible to ThreadSanitizer.
final class Mutex<Value: ~Copyable>: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    // Out of line: TSan's access checks on a zero-sized stored property (Mutex<Void>)
    // report unrelated addresses.
    private let value = UnsafeMutablePointer<Value>.allocate(capacity: 1)

    init(_ initialValue: consuming sending Value) {
        value.initialize(to: initialValue)
        pthread_mutex_init(lock, nil)
    }

    deinit {
        value.deinitialize(count: 1)
        value.deallocate()
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` with the value, the lock held.
    func withLock<Result, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(&value.pointee)
    }
}
