#if canImport(Glibc)
import Glibc
#endif

/// The one way a MemWall thread waits for another thread: check, spin a
/// little (the other side usually answers within microseconds), then park
/// on a condition variable until ``wakeAll()``/``wakeOne()`` or a deadline.
///
/// A wake is never lost: the waiter's condition is evaluated with the
/// parking mutex held, and a waker takes that mutex after making the
/// condition true, so a waker either finds the waiter asleep (and wakes it) or
/// the waiter sees the new state before it sleeps.
///
/// Not for waiting on hardware (a CQ, a ring): there the kernel's own wait
/// (io_uring_wait_cqe, a completion channel, poll(2)) is the primitive.
package final class ThreadParking: @unchecked Sendable {
    // @unchecked: the pthread objects live at stable heap addresses for the
    // object's life and are only used through pthread calls.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    /// A parking place nobody waits on yet.
    package init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Deadlines are monotonic: a wall-clock step must not stretch or cut a wait.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Spins until `isDone` holds, at most `spins` checks (the later ones
    /// yielding the CPU, which the thread being waited for may need).
    /// - Returns: Whether `isDone` held.
    package static func spin(_ spins: Int, until isDone: () -> Bool) -> Bool {
        for i in 0..<spins {
            if isDone() { return true }
            if i >= spins / 4 { sched_yield() }
        }
        return isDone()
    }

    /// Waits until `isDone` holds: spins up to `spins` checks, then sleeps
    /// until a wake (re-checking `isDone` under the mutex each time) or until
    /// the monotonic `deadline` in nanoseconds.
    /// - Returns: Whether `isDone` held (false only at the deadline).
    @discardableResult
    package func wait(spins: Int = 200, deadline: UInt64? = nil, until isDone: () -> Bool) -> Bool {
        if spins > 0 && ThreadParking.spin(spins, until: isDone) { return true }
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !isDone() {
            guard let deadline else {
                pthread_cond_wait(condition, mutex)
                continue
            }
            var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
            if pthread_cond_timedwait(condition, mutex, &ts) == ETIMEDOUT { return isDone() }
        }
        return true
    }

    /// Wakes every waiter; call after making their condition true.
    package func wakeAll() {
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Wakes one waiter (one new job for a pool of workers); call after making
    /// its condition true.
    package func wakeOne() {
        pthread_mutex_lock(mutex)
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }
}
