#if canImport(Glibc)
import Glibc
#endif
import CIBVerbs
import CRDMACM
import MemWallCore

/// RDMA devices and port states as libibverbs reports them, plus whether
/// librdmacm can open an event channel (it fails with ENODEV on hosts without RDMA).
public struct RDMAProbe: Sendable, Codable, Hashable {
    /// One port of a device.
    public struct Port: Sendable, Codable, Hashable {
        /// Port number (1-based, as verbs counts).
        public var number: Int
        /// "PORT_ACTIVE", "PORT_DOWN", … from `ibv_port_state_str`.
        public var state: String
        /// True when the port can carry traffic.
        public var isActive: Bool
        /// "InfiniBand" or "Ethernet" (RoCE, including soft-RoCE).
        public var linkLayer: String
    }

    /// One device.
    public struct Device: Sendable, Codable, Hashable {
        /// Kernel name, e.g. "mlx5_0", "rxe0".
        public var name: String
        /// Ports, or an empty list when the device could not be opened.
        public var ports: [Port]
        /// Why the device could not be queried, when it could not.
        public var error: String?
    }

    /// Devices `ibv_get_device_list` returned (none on an ordinary host).
    public var devices: [Device]
    /// `rdma_create_event_channel` succeeded.
    public var connectionManagerWorks: Bool
    /// Why it failed, when it did.
    public var connectionManagerError: String?

    /// True when at least one port is active: the verbs path can be used.
    public var hasActivePort: Bool { devices.contains { $0.ports.contains(where: \.isActive) } }

    /// Lists devices and queries every port.
    public static func probe() -> RDMAProbe {
        var devices: [Device] = []
        var count: Int32 = 0
        if let list = ibv_get_device_list(&count) {
            defer { ibv_free_device_list(list) }
            for i in 0..<Int(count) {
                guard let dev = list[i] else { continue }
                let name = ibv_get_device_name(dev).map { String(cString: $0) } ?? "device \(i)"
                devices.append(queryDevice(dev, name: name))
            }
        }
        var cmError: String?
        if let channel = rdma_create_event_channel() {
            rdma_destroy_event_channel(channel)
        } else {
            cmError = "rdma_create_event_channel: \(Errno.current)"
        }
        return RDMAProbe(devices: devices, connectionManagerWorks: cmError == nil, connectionManagerError: cmError)
    }

    private static func queryDevice(_ dev: UnsafeMutablePointer<ibv_device>, name: String) -> Device {
        guard let ctx = ibv_open_device(dev) else {
            return Device(name: name, ports: [], error: "ibv_open_device: \(Errno.current)")
        }
        defer { ibv_close_device(ctx) }
        var attr = ibv_device_attr()
        let r = ibv_query_device(ctx, &attr)
        guard r == 0 else {
            return Device(name: name, ports: [], error: "ibv_query_device: \(Errno(rawValue: r))")
        }
        var ports: [Port] = []
        let portCount = Int(attr.phys_port_cnt)
        if portCount > 0 {
            for p in 1...portCount {
                var pa = ibv_port_attr()
                // ibv_query_port is a macro; the inline function behind it is the real entry.
                guard ___ibv_query_port(ctx, UInt8(p), &pa) == 0 else { continue }
                let state = String(cString: ibv_port_state_str(pa.state))
                let link = pa.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET) ? "Ethernet" : "InfiniBand"
                ports.append(Port(number: p, state: state, isActive: pa.state == IBV_PORT_ACTIVE, linkLayer: link))
            }
        }
        return Device(name: name, ports: ports, error: nil)
    }
}
