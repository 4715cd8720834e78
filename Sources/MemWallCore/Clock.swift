#if canImport(Glibc)
import Glibc
#endif

/// Monotonic nanosecond timestamps (CLOCK_MONOTONIC), cheap enough for per-request telemetry.
public enum MonotonicClock {
    /// Nanoseconds since an arbitrary fixed point.
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
