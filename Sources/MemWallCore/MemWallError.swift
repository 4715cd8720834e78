/// The one error type every MemWall layer throws.
///
/// It carries what failed (``code``), the C function that reported it, the
/// `errno` that function gave (by name), and a message that tells the user what
/// to do about it.
///
/// Misuse is loud, never silently accepted; how loud depends on who can cause it:
/// - A bad *value* (a descriptor out of bounds, an unaligned O_DIRECT buffer, a
///   flag, a file, a peer's frame) is an error, never a trap: values usually
///   come from a user's configuration or from outside the process.
/// - Wrong use of the API's *ownership* rules that a caller can recover from —
///   posting a transfer on a transport instance other than the one that
///   prepared it, releasing a block table twice — is an error with code
///   ``Code/misuse``; nothing is changed by the refused call.
/// - Breaking an invariant only MemWall's own components can break (a transport
///   completing one descriptor twice) is a `precondition` failure, in the
///   swift-nio sense: continuing would corrupt state another thread relies on.
public struct MemWallError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is; stable for programs to switch on.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// Stable identifier, also used in JSON output.
        public let rawValue: String
        /// Creates a code from its identifier.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The identifier.
        public var description: String { rawValue }

        /// A C library or system call failed; see ``MemWallError/errno``.
        public static let systemCall = Code(rawValue: "system-call")
        /// A value given by the user is not valid; the message names valid ones.
        public static let invalidArgument = Code(rawValue: "invalid-argument")
        /// The input (file, trace line, XML, sysfs tree) could not be parsed.
        public static let malformedInput = Code(rawValue: "malformed-input")
        /// The named thing (node, device, region, file) does not exist.
        public static let notFound = Code(rawValue: "not-found")
        /// The thing already exists (e.g. a region registered twice).
        public static let alreadyExists = Code(rawValue: "already-exists")
        /// Another process (or another user of this process) holds the file or device.
        public static let busy = Code(rawValue: "busy")
        /// An access falls outside a region, file or exported range.
        public static let outOfBounds = Code(rawValue: "out-of-bounds")
        /// A buffer, offset or length breaks an alignment rule (O_DIRECT).
        public static let misaligned = Code(rawValue: "misaligned")
        /// This host or this transport cannot do the operation.
        public static let unsupported = Code(rawValue: "unsupported")
        /// Hardware was required but only emulation is available.
        public static let hardwareRequired = Code(rawValue: "hardware-required")
        /// An operation did not complete in time.
        public static let timedOut = Code(rawValue: "timed-out")
        /// The request was cancelled by its owner.
        public static let cancelled = Code(rawValue: "cancelled")
        /// The peer went away or the connection broke.
        public static let disconnected = Code(rawValue: "disconnected")
        /// A read or write moved fewer bytes than asked and could not be resumed.
        public static let shortTransfer = Code(rawValue: "short-transfer")
        /// A NUMA node has no memory left for the request.
        public static let noMemoryOnNode = Code(rawValue: "no-memory-on-node")
        /// The remote side refused an access (bad key, bounds, permissions).
        public static let remoteAccess = Code(rawValue: "remote-access")
        /// Data read back does not match what was written (checksum).
        public static let corrupted = Code(rawValue: "corrupted")
        /// The API was used against its ownership rules (a transfer posted on a
        /// transport that did not prepare it, a block table released twice);
        /// the call changed nothing.
        public static let misuse = Code(rawValue: "misuse")
        /// A needed tool or package is missing on this host.
        public static let missingDependency = Code(rawValue: "missing-dependency")
    }

    /// What kind of failure this is.
    public var code: Code
    /// The C function (or syscall) that failed, if one did.
    public var function: String?
    /// The `errno` the failing call reported, if any.
    public var errno: Errno?
    /// What happened and what the user can do, in one sentence or two.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String, function: String? = nil, errno: Errno? = nil) {
        self.code = code
        self.message = message
        self.function = function
        self.errno = errno
    }

    /// `"<message> (<function>: <ERRNO> (<explanation>))"`.
    public var description: String {
        switch (function, errno) {
        case let (function?, errno?): "\(message) (\(function): \(errno))"
        case let (function?, nil): "\(message) (\(function))"
        case let (nil, errno?): "\(message) (\(errno))"
        case (nil, nil): message
        }
    }

    /// A failed C call; the code is refined from errno where the meaning is clear.
    public static func system(_ function: String, _ errno: Errno, _ message: String) -> MemWallError {
        MemWallError(.systemCall, message, function: function, errno: errno)
    }

    /// A bad user-supplied value: says what was given and what would be valid.
    public static func invalid(_ what: String, _ value: some CustomStringConvertible, expected: String) -> MemWallError {
        MemWallError(.invalidArgument, "invalid \(what) '\(value)': expected \(expected)")
    }
}

/// Converters for the failure conventions of the five C libraries.
///
/// Each library reports failure differently (see `notes/swift-c-interop.md`);
/// one helper per convention keeps call sites honest about which one applies.
public enum CCall {
    /// liburing style: a negative return is `-errno`; otherwise the value is returned.
    @discardableResult
    public static func negativeErrno<T: SignedInteger>(_ result: T, _ function: String, _ message: @autoclosure () -> String) throws(MemWallError) -> T {
        if result < 0 {
            throw .system(function, Errno(rawValue: Int32(truncatingIfNeeded: 0 - result)), message())
        }
        return result
    }

    /// libc / librdmacm / hwloc / libnuma style: `-1` with `errno` set.
    @discardableResult
    public static func minusOne<T: BinaryInteger>(_ result: T, _ function: String, _ message: @autoclosure () -> String) throws(MemWallError) -> T {
        if result == -1 {
            throw .system(function, .current, message())
        }
        return result
    }

    /// ibverbs `ibv_post_send` / `ibv_modify_qp` style: returns the errno value itself, 0 on success.
    public static func returnsErrno<T: BinaryInteger>(_ result: T, _ function: String, _ message: @autoclosure () -> String) throws(MemWallError) {
        if result != 0 {
            throw .system(function, Errno(rawValue: Int32(truncatingIfNeeded: result)), message())
        }
    }

    /// Creator style (`ibv_reg_mr`, `hwloc_*_alloc`): `NULL` with `errno` set.
    public static func nonNull<P>(_ pointer: P?, _ function: String, _ message: @autoclosure () -> String) throws(MemWallError) -> P {
        guard let pointer else {
            let err = Errno.current
            // Some creators return NULL without setting errno; say so instead of "Success".
            throw .system(function, err.rawValue == 0 ? .noMemory : err, message())
        }
        return pointer
    }
}
