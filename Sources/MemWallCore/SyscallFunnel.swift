#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import Synchronization

/// A fault the funnel can inject in place of what the kernel would have said.
package enum InjectedFault: Sendable, Hashable, CustomStringConvertible {
    /// The call fails with this errno (EINTR, EAGAIN, ENOMEM, EIO, …).
    case error(Errno)
    /// The call moves only this fraction (0 < f < 1) of the bytes asked for,
    /// at least one byte: a short read or write.
    case short(fraction: Double)

    /// Human-readable form used in test output.
    package var description: String {
        switch self {
        case .error(let e): "error \(e.name)"
        case .short(let f): "short transfer (\(f))"
        }
    }
}

/// Plays the kernel in tests: a list of rules saying which call to fail, how, and how often.
///
/// Rules are matched by function name ("pread", "pwrite", "io_uring.read", "send",
/// …); each rule skips its first `after` matching calls, then fires `times` times.
/// Every firing is counted so a test can prove its fault was really hit.
package final class FaultInjector: Sendable {
    /// One fault rule.
    package struct Rule: Sendable, Hashable {
        /// Function name the rule applies to, as the funnel names it.
        package var function: String
        /// What to do instead of the real result.
        package var fault: InjectedFault
        /// How many matching calls to let through first.
        package var after: Int
        /// How many times to fire (then the rule is spent).
        package var times: Int

        /// Creates a rule.
        package init(_ function: String, _ fault: InjectedFault, after: Int = 0, times: Int = 1) {
            self.function = function
            self.fault = fault
            self.after = after
            self.times = times
        }
    }

    private struct State {
        var rules: [Rule]
        var seen: [Int]
        var fired: [String: Int] = [:]
        var armed: Bool
    }

    private let state: Mutex<State>

    /// Creates an injector with the given rules.
    /// - Parameter armed: With `false`, no call is faulted or counted until
    ///   ``arm()``, so set-up through the same funnel (connecting to a peer,
    ///   writing the data a faulted read will fetch) is left alone.
    package init(_ rules: [Rule], armed: Bool = true) {
        state = Mutex(State(rules: rules, seen: Array(repeating: 0, count: rules.count), armed: armed))
    }

    /// Starts matching calls against the rules (for an injector created unarmed).
    package func arm() { state.withLock { $0.armed = true } }

    /// Decides whether this call of `function` gets a fault, and records it if so.
    package func fault(for function: String) -> InjectedFault? {
        state.withLock { s in
            guard s.armed else { return nil }
            for i in s.rules.indices where s.rules[i].function == function {
                s.seen[i] += 1
                let n = s.seen[i] - s.rules[i].after
                if n >= 1 && n <= s.rules[i].times {
                    s.fired[function, default: 0] += 1
                    return s.rules[i].fault
                }
            }
            return nil
        }
    }

    /// How many faults fired for `function` so far.
    package func firedCount(_ function: String) -> Int { state.withLock { $0.fired[function] ?? 0 } }

    /// How many faults fired in total.
    package var totalFired: Int { state.withLock { $0.fired.values.reduce(0, +) } }
}

/// The one door every system call of MemWall's data paths goes through.
///
/// In production it calls the kernel. A test gives a transport a funnel with a
/// ``FaultInjector`` and so can produce EINTR, EAGAIN, ENOMEM, EIO and short
/// transfers on demand, on any machine, the way swift-system's mocking does.
/// Results follow the libc convention (`-1` and ``Errno``), wrapped in `Result`
/// so that errno cannot be clobbered between the call and its check.
public final class SyscallFunnel: Sendable {
    /// The real kernel, no faults.
    public static let system = SyscallFunnel(faults: nil)

    /// Injected faults, if any.
    package let faults: FaultInjector?
    /// Whether ``pread(_:_:_:_:)`` and friends retry on EINTR themselves.
    /// Documented behaviour, not a hidden one: tests turn it off to see EINTR surface.
    public let retryOnInterrupt: Bool

    /// Creates a funnel to the real kernel.
    /// - Parameter retryOnInterrupt: Whether byte-moving calls retry EINTR themselves.
    public convenience init(retryOnInterrupt: Bool = true) {
        self.init(faults: nil, retryOnInterrupt: retryOnInterrupt)
    }

    /// Creates a funnel; pass a ``FaultInjector`` to play the kernel in tests.
    package init(faults: FaultInjector?, retryOnInterrupt: Bool = true) {
        self.faults = faults
        self.retryOnInterrupt = retryOnInterrupt
    }

    /// Runs a byte-moving call, applying any injected fault. `body` receives the
    /// (possibly shortened) byte count and returns the libc-style result.
    @inline(__always)
    public func transfer(_ function: String, requested: Int, _ body: (Int) -> Int) -> Result<Int, Errno> {
        while true {
            var count = requested
            if let faults, let fault = faults.fault(for: function) {
                switch fault {
                case .error(let e):
                    if e == .interrupted && retryOnInterrupt { continue }
                    return .failure(e)
                case .short(let f):
                    count = max(1, min(requested - 1, Int(Double(requested) * f)))
                    if requested <= 1 { count = requested }
                }
            }
            let r = body(count)
            if r < 0 {
                let e = Errno.current
                if e == .interrupted && retryOnInterrupt { continue }
                return .failure(e)
            }
            return .success(r)
        }
    }

    /// Runs a call that either succeeds or fails (no byte count), applying any injected error.
    @inline(__always)
    public func call(_ function: String, _ body: () -> Int) -> Result<Int, Errno> {
        while true {
            if let faults, case .error(let e)? = faults.fault(for: function) {
                if e == .interrupted && retryOnInterrupt { continue }
                return .failure(e)
            }
            let r = body()
            if r == -1 {
                let e = Errno.current
                if e == .interrupted && retryOnInterrupt { continue }
                return .failure(e)
            }
            return .success(r)
        }
    }

    /// Filters a result that the kernel delivered asynchronously (an io_uring CQE's
    /// `res`, already `-errno` or a byte count): returns what the transport should see.
    @inline(__always)
    public func completion(_ function: String, requested: Int, result: Int32) -> Int32 {
        guard let faults, let fault = faults.fault(for: function) else { return result }
        switch fault {
        case .error(let e): return -e.rawValue
        case .short(let f):
            guard result > 1 else { return result }
            return Int32(max(1, min(Int(result) - 1, Int(Double(requested) * f))))
        }
    }

    /// `pread(2)` through the funnel.
    public func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int64) -> Result<Int, Errno> {
        transfer("pread", requested: count) { n in Glibc.pread(fd, buffer, n, off_t(offset)) }
    }

    /// `pwrite(2)` through the funnel.
    public func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Result<Int, Errno> {
        transfer("pwrite", requested: count) { n in Glibc.pwrite(fd, buffer, n, off_t(offset)) }
    }

    /// `read(2)` through the funnel (sockets, pipes).
    public func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Result<Int, Errno> {
        transfer("read", requested: count) { n in Glibc.read(fd, buffer, n) }
    }

    /// `write(2)` through the funnel (sockets, pipes).
    public func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Result<Int, Errno> {
        transfer("write", requested: count) { n in Glibc.write(fd, buffer, n) }
    }

    /// `open(2)` through the funnel.
    public func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) -> Result<Int32, Errno> {
        call("open") { Int(Glibc.open(path, flags, mode)) }.map { Int32($0) }
    }

    /// `fsync(2)` through the funnel.
    public func fsync(_ fd: Int32) -> Result<Void, Errno> {
        call("fsync") { Int(Glibc.fsync(fd)) }.map { _ in () }
    }

    /// `ftruncate(2)` through the funnel.
    public func ftruncate(_ fd: Int32, _ length: Int64) -> Result<Void, Errno> {
        call("ftruncate") { Int(Glibc.ftruncate(fd, off_t(length))) }.map { _ in () }
    }

    /// Reads exactly `count` bytes unless EOF comes first, resuming short reads.
    /// Returns the bytes read (less than `count` only at end of file).
    public func preadFully(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int64) -> Result<Int, Errno> {
        var done = 0
        while done < count {
            switch pread(fd, buffer + done, count - done, offset + Int64(done)) {
            case .failure(let e): return .failure(e)
            case .success(0): return .success(done)
            case .success(let n): done += n
            }
        }
        return .success(done)
    }

    /// Writes exactly `count` bytes, resuming short writes.
    public func pwriteFully(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Result<Int, Errno> {
        var done = 0
        while done < count {
            switch pwrite(fd, buffer + done, count - done, offset + Int64(done)) {
            case .failure(let e): return .failure(e)
            case .success(0): return .failure(.ioError)
            case .success(let n): done += n
            }
        }
        return .success(done)
    }
}
