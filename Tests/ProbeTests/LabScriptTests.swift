import Foundation
import Testing

/// The lab launcher's own error handling (no guest is booted by these tests).
@Suite("scripts/lab refuses bad input and names what is missing")
struct LabScriptTests {
    let script = packageRoot.appendingPathComponent("scripts/lab").path

    func runLab(_ args: [String], env: [String: String] = [:]) throws -> (status: Int32, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: script)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: e, as: UTF8.self))
    }

    @Test func withoutQEMUItSaysWhichPieceAndHowToGetIt() throws {
        let r = try runLab(["--", "true"], env: ["MEMWALL_QEMU": "memwall-no-such-qemu", "MEMWALL_VNG": "memwall-no-such-vng",
                                                 "MEMWALL_KERNEL_GLOB": "/nonexistent/vmlinuz-*"])
        #expect(r.status == 3)
        #expect(r.stderr.contains("QEMU (apt-get install qemu-system-x86)"), "\(r.stderr)")
        #expect(r.stderr.contains("virtme-ng (pip install virtme-ng)"))
        #expect(r.stderr.contains("a guest kernel (apt-get install linux-image-amd64)"))
    }

    @Test(arguments: [
        (["--far", "lots", "--", "true"], "invalid --far 'lots'"),
        (["--far-hmat", "250", "--", "true"], "invalid --far-hmat '250'"),
        (["--distance", "5", "--", "true"], "invalid --distance '5'"),
        (["--bogus"], "unknown option '--bogus'"),
        ([], "no command given"),
    ])
    func badLayoutIsRejectedBeforeBooting(_ args: [String], _ expected: String) throws {
        let r = try runLab(args)
        #expect(r.status == 2)
        #expect(r.stderr.contains(expected), "\(r.stderr)")
    }
}
