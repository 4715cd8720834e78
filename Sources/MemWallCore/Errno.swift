#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim

/// A POSIX error number with its symbolic name, so messages say `ENOMEM`, not `12`.
public struct Errno: RawRepresentable, Error, Hashable, Sendable, CustomStringConvertible {
    /// The C `errno` value.
    public let rawValue: Int32

    /// Wraps a C `errno` value.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(rawValue: memwall_get_errno()) }

    /// Symbolic name such as `"EINVAL"`, or `"errno 4242"` when libc does not know it.
    public var name: String {
        guard let cName = memwall_errno_name(rawValue) else { return "errno \(rawValue)" }
        return String(cString: cName)
    }

    /// The libc explanation, e.g. "Invalid argument".
    public var explanation: String { String(cString: strerror(rawValue)) }

    /// `"EINVAL (Invalid argument)"`.
    public var description: String { "\(name) (\(explanation))" }

    /// Interrupted system call; retried by the funnel's `retryOnInterrupt`.
    public static let interrupted = Errno(rawValue: EINTR)
    /// Resource temporarily unavailable.
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    /// Out of memory (also: memlock limit exceeded on registration).
    public static let noMemory = Errno(rawValue: ENOMEM)
    /// Input/output error from a device.
    public static let ioError = Errno(rawValue: EIO)
    /// Invalid argument.
    public static let invalidArgument = Errno(rawValue: EINVAL)
    /// Operation not permitted (often seccomp or missing capability).
    public static let notPermitted = Errno(rawValue: EPERM)
    /// Function not implemented (kernel built without the feature, or seccomp).
    public static let notImplemented = Errno(rawValue: ENOSYS)
    /// No such file or directory.
    public static let noEntry = Errno(rawValue: ENOENT)
    /// No such device.
    public static let noDevice = Errno(rawValue: ENODEV)
    /// Permission denied.
    public static let accessDenied = Errno(rawValue: EACCES)
    /// Operation canceled.
    public static let canceled = Errno(rawValue: ECANCELED)
    /// Connection timed out.
    public static let timedOut = Errno(rawValue: ETIMEDOUT)
    /// Connection reset by peer.
    public static let connectionReset = Errno(rawValue: ECONNRESET)
    /// Connection refused.
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)
    /// Broken pipe.
    public static let brokenPipe = Errno(rawValue: EPIPE)
    /// Bad address.
    public static let badAddress = Errno(rawValue: EFAULT)
    /// Operation not supported.
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)
    /// File exists.
    public static let exists = Errno(rawValue: EEXIST)
    /// Device or resource busy.
    public static let busy = Errno(rawValue: EBUSY)
}
