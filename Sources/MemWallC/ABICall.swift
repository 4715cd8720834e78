#if canImport(Glibc)
import Glibc
#endif
import CMemWallABI
import MemWallCore

/// How every exported function turns its work into a status and a last-error message.
///
/// Each `@c` function runs its body through ``run(_:_:)``: a `MemWallError` becomes the
/// matching negative `MW_E_*` code and a message on the calling thread, prefixed with the
/// function's name; nothing throws or traps across the boundary, because every value from the
/// caller is checked here before Swift code that would trap on it sees it.
enum ABI {
    /// `MemWallError.Code` → status, read once from the C table behind `mw_status_name`, so the
    /// names and numbers are defined in one place (Modules/CMemWallABI/status.c).
    private static let statusByCode: [String: Int32] = {
        var table: [String: Int32] = [:]
        for status in Int32(-128)...(-1) {
            let name = String(cString: mw_status_name(status))
            if name != "unknown" { table[name] = status }
        }
        return table
    }()

    /// The status for `code` (`MW_E_INTERNAL` for a code the C table lacks).
    static func status(of code: MemWallError.Code) -> Int32 {
        statusByCode[code.rawValue] ?? MW_E_INTERNAL
    }

    /// Runs `body`; `MW_OK`, or the failure's status after recording its message.
    @inline(__always)
    static func run(_ function: StaticString, _ body: () throws(MemWallError) -> Void) -> Int32 {
        do {
            try body()
            return MW_OK
        } catch {
            return fail(function, error)
        }
    }

    /// Records `error` as the calling thread's last error and returns its status.
    static func fail(_ function: StaticString, _ error: MemWallError) -> Int32 {
        var message = "\(function): \(error)"
        message.withUTF8 { buffer in
            buffer.withMemoryRebound(to: CChar.self) { memwall_abi_set_last_error($0.baseAddress, $0.count) }
        }
        return status(of: error.code)
    }

    // MARK: Checking what the caller passed

    /// `pointer`, or `invalidArgument` naming the parameter.
    @inline(__always)
    static func required<P>(_ pointer: P?, _ name: StaticString) throws(MemWallError) -> P {
        guard let pointer else {
            throw MemWallError(.invalidArgument, "\(name) is NULL; pass a valid pointer")
        }
        return pointer
    }

    /// A count from C (`size_t` arrives as `Int`, so one above `Int.max` is negative) that
    /// lies in `range`.
    @inline(__always)
    static func count(_ value: Int, _ name: StaticString, _ range: ClosedRange<Int>) throws(MemWallError) -> Int {
        guard range.contains(value) else {
            throw .invalid(name.description, UInt(bitPattern: value), expected: "\(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    /// A NUL-terminated UTF-8 string of at most `limit` bytes (checked before it is read past).
    static func string(_ pointer: UnsafePointer<CChar>?, _ name: StaticString, limit: Int) throws(MemWallError) -> String {
        let p = try required(pointer, name)
        let length = strnlen(p, limit + 1)
        guard length <= limit else {
            throw MemWallError(.invalidArgument, "\(name) is longer than \(limit) bytes (or not NUL-terminated)")
        }
        let bytes = UnsafeRawBufferPointer(start: p, count: length)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw MemWallError(.invalidArgument, "\(name) is not valid UTF-8")
        }
        return text
    }
}
