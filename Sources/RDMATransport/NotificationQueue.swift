#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization

/// Notifications that arrived from peers, handed to waiters in arrival order.
final class NotificationQueue: Sendable {
    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<RemoteNotification?, Never>
        var timer: Task<Void, Never>?
    }

    private struct State {
        var items: [RemoteNotification] = []
        var head = 0
        var waiters: [Waiter] = []
        var nextID: UInt64 = 1
        var delivered = 0
        /// Threads in ``nextBlocking(timeout:)``; a push wakes them only when there are some.
        var blocked = 0

        mutating func pop() -> RemoteNotification? {
            guard head < items.count else { return nil }
            let n = items[head]
            head += 1
            if head > 1024 && head * 2 > items.count {
                items.removeFirst(head)
                head = 0
            }
            delivered += 1
            return n
        }
    }

    private let state = Mutex(State())
    private let parking = ThreadParking()

    /// Most notifications kept undelivered: peers send them, so without a bound a
    /// peer could make this process buffer without end while nobody waits.
    static let capacity = 1 << 20

    /// Called by a receiver thread once the data before the notification has landed.
    /// - Returns: false (and keeps nothing) when ``capacity`` notifications are already
    ///   waiting; the caller drops the peer that sent it rather than lose it silently.
    func push(_ n: RemoteNotification) -> Bool {
        let (waiter, kept, wakeBlocked) = state.withLock { s -> (Waiter?, Bool, Bool) in
            if !s.waiters.isEmpty {
                s.delivered += 1
                return (s.waiters.removeFirst(), true, false)
            }
            guard s.items.count - s.head < Self.capacity else { return (nil, false, false) }
            s.items.append(n)
            return (nil, true, s.blocked > 0)
        }
        guard kept else { return false }
        if let waiter {
            waiter.timer?.cancel()
            waiter.continuation.resume(returning: n)
        }
        if wakeBlocked { parking.wakeAll() }
        return true
    }

    /// Waits for the next notification, up to `timeout`.
    func next(timeout: Duration) async throws(MemWallError) -> RemoteNotification {
        let got: RemoteNotification? = await withCheckedContinuation { (c: CheckedContinuation<RemoteNotification?, Never>) in
            let ready = state.withLock { s -> RemoteNotification?? in
                if let n = s.pop() { return .some(n) }
                let id = s.nextID
                s.nextID += 1
                let timer = Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    self?.expire(id)
                }
                s.waiters.append(Waiter(id: id, continuation: c, timer: timer))
                return .none
            }
            if case .some(let n) = ready { c.resume(returning: n) }
        }
        guard let got else {
            throw MemWallError(.timedOut, "no notification arrived within \(timeout)")
        }
        return got
    }

    /// Blocking form for threads outside Swift concurrency (benchmarks, the CLI).
    func nextBlocking(timeout: Duration) throws(MemWallError) -> RemoteNotification {
        let deadline = MonotonicClock.nanoseconds() &+ timeout.nanosecondsClamped
        var got: RemoteNotification?
        // Registered before the first look, so a push after that look wakes us.
        state.withLock { $0.blocked += 1 }
        parking.wait(spins: 1000, deadline: deadline) {
            got = state.withLock { $0.pop() }
            return got != nil
        }
        state.withLock { $0.blocked -= 1 }
        guard let got else {
            throw MemWallError(.timedOut, "no notification arrived within \(timeout)")
        }
        return got
    }

    /// Notifications handed out so far.
    var deliveredCount: Int { state.withLock { $0.delivered } }

    private func expire(_ id: UInt64) {
        let c = state.withLock { s -> CheckedContinuation<RemoteNotification?, Never>? in
            guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return s.waiters.remove(at: i).continuation
        }
        c?.resume(returning: nil)
    }
}
