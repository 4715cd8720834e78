#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

extension SocketIO {
    /// A TCP socket bound to `address` (port 0: a free one) and listening —
    /// the set-up both socket listeners (the emulation's and the RDMA socket
    /// exchange's) share.
    /// - Returns: The descriptor (the caller owns and closes it) and the bound port.
    /// - Throws: `systemCall` from socket, bind or listen, naming the address.
    static func listen(on address: sockaddr_in) throws(MemWallError) -> (fd: Int32, port: UInt16) {
        var sa = address
        let fd = try makeStreamSocket()
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            let e = Errno.current
            Glibc.close(fd)
            throw .system("bind", e, "cannot listen on \(SocketAddress.describe(sa)); is the port in use?")
        }
        if Glibc.listen(fd, 64) != 0 {
            let e = Errno.current
            Glibc.close(fd)
            throw .system("listen", e, "cannot listen on \(SocketAddress.describe(sa))")
        }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return (fd, UInt16(bigEndian: bound.sin_port))
    }
}
