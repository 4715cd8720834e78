#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import MemWallCore

/// A fixed set of OS threads that run blocking jobs (pread, pwrite, large
/// memcpy) in FIFO order, optionally pinned to a set of CPUs.
///
/// Swift's cooperative pool must never block in a system call, and a storage
/// fallback needs as many blocking threads as its queue depth to keep the
/// device busy, so these are plain pthreads. Shutting down lets queued jobs
/// finish first: a job may own a buffer the kernel is writing.
public final class BlockingWorkerPool: Sendable {
    /// Number of threads.
    public let threadCount: Int
    /// What the threads are for; named in errors.
    public let name: String
    private let core: WorkerQueue
    private let threads: [UInt]

    /// Starts `threadCount` threads.
    /// - Parameters:
    ///   - name: What the threads are for.
    ///   - threadCount: At least 1.
    ///   - cpus: Pin every thread to these CPUs (e.g. the CPUs nearest a NUMA
    ///     node); empty leaves placement to the scheduler.
    /// - Throws: `invalidArgument` for a count below 1; `systemCall` from `pthread_create`.
    public init(name: String, threadCount: Int, cpus: [Int] = []) throws(MemWallError) {
        guard threadCount >= 1 else {
            throw .invalid("worker thread count", threadCount, expected: "at least 1")
        }
        self.name = name
        self.threadCount = threadCount
        let core = WorkerQueue(pinnedCPUs: cpus.map { Int32($0) })
        self.core = core
        var started: [UInt] = []
        for i in 0..<threadCount {
            var tid = pthread_t()
            // Each thread owns one reference to the queue (not to the pool), so the
            // pool's deinit can stop and join them.
            let context = Unmanaged.passRetained(core).toOpaque()
            let rc = pthread_create(&tid, nil, { arg in
                guard let arg else { return nil }
                let queue = Unmanaged<WorkerQueue>.fromOpaque(arg).takeRetainedValue()
                queue.runWorker()
                return nil
            }, context)
            if rc != 0 {
                Unmanaged<WorkerQueue>.fromOpaque(context).release()
                core.stop()
                for t in started { pthread_join(pthread_t(t), nil) }
                throw .system("pthread_create", Errno(rawValue: rc),
                              "cannot start worker thread \(i) of \(threadCount) for \(name)")
            }
            started.append(UInt(tid))
        }
        self.threads = started
    }

    deinit {
        core.stop()
        for t in threads { pthread_join(pthread_t(t), nil) }
    }

    /// Queues one job.
    public func submit(_ job: @escaping @Sendable () -> Void) { core.submit([job]) }

    /// Queues several jobs with one lock round trip.
    public func submit(contentsOf newJobs: [@Sendable () -> Void]) { core.submit(newJobs) }
}

/// The pool's job queue and the loop its threads run.
private final class WorkerQueue: @unchecked Sendable {
    // @unchecked: `jobs`, `head` and `stopping` are only touched with `mutex`
    // held; the pthread objects live at stable heap addresses for the queue's life.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var jobs: [@Sendable () -> Void] = []
    private var head = 0
    private var stopping = false
    private let pinnedCPUs: [Int32]

    init(pinnedCPUs: [Int32]) {
        self.pinnedCPUs = pinnedCPUs
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func submit(_ newJobs: [@Sendable () -> Void]) {
        guard !newJobs.isEmpty else { return }
        pthread_mutex_lock(mutex)
        jobs.append(contentsOf: newJobs)
        if newJobs.count == 1 { pthread_cond_signal(condition) } else { pthread_cond_broadcast(condition) }
        pthread_mutex_unlock(mutex)
    }

    /// Lets queued jobs finish, then ends every thread.
    func stop() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    func runWorker() {
        if !pinnedCPUs.isEmpty {
            // Best effort: a CPU set the cgroup forbids leaves the thread unpinned.
            _ = pinnedCPUs.withUnsafeBufferPointer { memwall_pin_current_thread($0.baseAddress, Int32($0.count)) }
        }
        while true {
            pthread_mutex_lock(mutex)
            while head == jobs.count && !stopping { pthread_cond_wait(condition, mutex) }
            if head == jobs.count {
                pthread_mutex_unlock(mutex)
                return
            }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 4096 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            pthread_mutex_unlock(mutex)
            job()
        }
    }
}
