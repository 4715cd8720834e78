// libFuzzer entry point: every 32-byte window of the input is decoded as a
// request (listener side) and as an answer (connector side). Decoding must be
// total, and what it accepts must be safe to act on.
import FuzzSupport
import MemWallCore
@testable import RDMATransport
import Transport

/// One export the listener's bounds check runs against (allocated once).
private let export: LocalExport? = {
    guard let region = try? MemoryRegion.allocate(byteCount: 1 << 16) else { return nil }
    return LocalExport(name: "fuzz", region: region, offset: 4096, length: 8192, access: .read,
                       key: 7, address: 0, registration: nil)
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrame(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: count)
    // Wrong sizes are refused, never read past.
    _ = try? FrameHeader.decodeRequest(bytes)
    _ = try? FrameHeader.decodeAnswer(bytes)
    var at = 0
    while count - at >= FrameHeader.size {
        let window = UnsafeRawBufferPointer(rebasing: bytes[at ..< at + FrameHeader.size])
        if let request = try? FrameHeader.decodeRequest(window) {
            switch request {
            case .write(let key, _, let offset, let length), .read(let key, _, let offset, let length):
                precondition(length >= 0 && UInt64(length) <= FrameHeader.maximumLength, "accepted length \(length)")
                if let export {
                    let need: RemoteAccess = key & 1 == 0 ? .read : .write
                    let (status, admitted) = export.admits(offset: offset, length: length, need: need)
                    if status == .ok {
                        // What the listener would touch lies inside the export.
                        precondition(admitted != nil && length > 0 && offset + UInt64(length) <= UInt64(export.length),
                                     "admitted \(offset)+\(length) of \(export.length)")
                    } else {
                        precondition(admitted == nil)
                    }
                }
            case .notify, .intraHostProbe:
                break
            }
        }
        if let answer = try? FrameHeader.decodeAnswer(window), case .readData(_, let status, let length) = answer {
            precondition(status == .ok || length == 0, "refused read with \(length) bytes")
            precondition(UInt64(length) <= FrameHeader.maximumLength)
        }
        at += 1
    }
    return 0
}

@_cdecl("FuzzFrame_main")
public func fuzzFrameMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzFrame)
}
