// SwiftPM links every executable with `main` aliased to `<Target>_main` (so
// tests can call it), which hides libFuzzer's own `main`. Each target therefore
// defines `<Target>_main` and hands control to libFuzzer's documented entry
// point for that case, LLVMFuzzerRunDriver.

/// libFuzzer's per-input callback: the bytes and their count; returns 0.
public typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>, Int) -> CInt

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                                 _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                                 _ callback: FuzzCallback) -> CInt

/// Runs libFuzzer with the process's arguments and `callback` as the target.
public func runFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, _ callback: FuzzCallback) -> CInt {
    var count = argc
    var vector: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &vector, callback)
}
