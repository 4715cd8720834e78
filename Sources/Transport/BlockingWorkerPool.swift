import MemWallCore
import Synchronization

/// A fixed set of OS threads that run blocking jobs (pread, pwrite, large
/// memcpy) in FIFO order, optionally pinned to a set of CPUs.
///
/// Swift's cooperative pool must never block in a system call, and a storage
/// fallback needs as many blocking threads as its queue depth to keep the
/// device busy, so these are plain threads (``WorkerThread``), idle ones
/// parked (``ThreadParking``). Shutting down lets queued jobs finish first: a
/// job may own a buffer the kernel is writing.
package final class BlockingWorkerPool: Sendable {
    /// Number of threads.
    package let threadCount: Int
    /// What the threads are for; named in errors.
    package let name: String
    private let core: WorkerQueue
    private let threads: [WorkerThread]

    /// Starts `threadCount` threads.
    /// - Parameters:
    ///   - name: What the threads are for.
    ///   - threadCount: At least 1.
    ///   - cpus: Pin every thread to these CPUs (e.g. the CPUs nearest a NUMA
    ///     node); empty leaves placement to the scheduler.
    /// - Throws: `invalidArgument` for a count below 1; `systemCall` from `pthread_create`.
    package init(name: String, threadCount: Int, cpus: [Int] = []) throws(MemWallError) {
        guard threadCount >= 1 else {
            throw .invalid("worker thread count", threadCount, expected: "at least 1")
        }
        self.name = name
        self.threadCount = threadCount
        let core = WorkerQueue()
        self.core = core
        var started: [WorkerThread] = []
        for i in 0..<threadCount {
            // Each thread holds the queue (not the pool), so the pool's deinit can stop and join them.
            do throws(MemWallError) {
                started.append(try WorkerThread(name: name, cpus: cpus.map { Int32($0) }) { core.runWorker() })
            } catch {
                core.stop()
                for t in started { t.join() }
                throw MemWallError(error.code, "cannot start worker thread \(i) of \(threadCount) for \(name): \(error.message)",
                                   function: error.function, errno: error.errno)
            }
        }
        self.threads = started
    }

    deinit { close() }

    /// Lets queued jobs finish, then ends and joins every thread. Idempotent.
    package func close() {
        core.stop()
        for t in threads { t.join() }
    }

    /// Queues one job.
    /// - Returns: False (the job will not run) once the pool is closed.
    @discardableResult
    package func submit(_ job: @escaping @Sendable () -> Void) -> Bool { core.submit([job]) }

    /// Queues several jobs with one lock round trip.
    /// - Returns: False (none will run) once the pool is closed.
    @discardableResult
    package func submit(contentsOf newJobs: [@Sendable () -> Void]) -> Bool { core.submit(newJobs) }
}

/// The pool's job queue and the loop its threads run.
private final class WorkerQueue: Sendable {
    private struct Jobs {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var stopping = false

        /// The next job, or nil (with `stopping` saying whether to end).
        mutating func next() -> (@Sendable () -> Void)? {
            guard head < jobs.count else { return nil }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 4096 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            return job
        }
    }
    private let state = Mutex(Jobs())
    private let parking = ThreadParking()

    func submit(_ newJobs: [@Sendable () -> Void]) -> Bool {
        guard !newJobs.isEmpty else { return true }
        let accepted = state.withLock { s -> Bool in
            guard !s.stopping else { return false }
            s.jobs.append(contentsOf: newJobs)
            return true
        }
        guard accepted else { return false }
        if newJobs.count == 1 { parking.wakeOne() } else { parking.wakeAll() }
        return true
    }

    /// Lets queued jobs finish, then ends every thread.
    func stop() {
        state.withLock { $0.stopping = true }
        parking.wakeAll()
    }

    func runWorker() {
        while true {
            var job: (@Sendable () -> Void)?
            var stop = false
            // Idle workers do not spin: a pool may have more threads than cores.
            parking.wait(spins: 0) {
                state.withLock { s in
                    job = s.next()
                    stop = job == nil && s.stopping
                }
                return job != nil || stop
            }
            guard let job else { return }
            job()
        }
    }
}
