import MemWallCore

extension Topology {
    /// Identifier of the JSON schema written by ``json()``; bumped only on incompatible change.
    /// The schema is documented in `docs/topology-json.md`.
    public static let jsonSchema = "memwall.topology/1"

    /// The topology as the stable JSON document of `memwall topo --json`
    /// (schema ``jsonSchema``, described in `docs/topology-json.md`): keys always
    /// present and in a fixed order, unknown values as `null`, sizes in bytes,
    /// latencies in ns, bandwidths in MiB/s.
    public func json() -> JSONValue {
        .object([
            ("schema", .string(Topology.jsonSchema)),
            ("source", .object([("kind", .string(source.kind)), ("argument", .optional(source.argument))])),
            ("hwlocAPIVersion", .string(hwlocAPIVersion)),
            ("machine", .object([
                ("packages", .int(packages.count)), ("cores", .int(coreCount)),
                ("processingUnits", .int(processingUnitCount)),
            ])),
            ("packages", .array(packages.map { p in
                .object([("index", .int(p.index)), ("cpus", .string(p.cpus.description)),
                         ("cores", .int(p.cores)), ("processingUnits", .int(p.processingUnits))])
            })),
            ("tiers", .array(tiers.map { t in
                .object([("rank", .int(t.rank)), ("kind", .string(t.kind.rawValue)),
                         ("nodes", .array(t.nodes.map { .int($0) })),
                         ("capacityBytes", .optional(t.capacity?.rawValue))])
            })),
            ("nodes", .array(nodes.map(Topology.json(node:)))),
            ("distances", distances.map { d in
                .object([("kind", .string("slit")), ("nodes", .array(d.nodes.map { .int($0) })),
                         ("values", .array(d.values.map { row in .array(row.map { .uint($0) }) }))])
            } ?? .null),
            ("devices", .array(devices.map { d in
                .object([("name", .string(d.name)), ("kind", .string(d.kind.rawValue)),
                         ("subtype", .optional(d.subtype)), ("pciAddress", .optional(d.pciAddress)),
                         ("localNodes", .array(d.localNodes.map { .int($0) })),
                         ("nearestNode", .optional(d.nearestNode)), ("evidence", .string(d.evidence))])
            })),
            ("notes", .array(notes.map { .string($0) })),
        ])
    }

    static func json(node n: MemoryNode) -> JSONValue {
        .object([
            ("osIndex", .int(n.osIndex)),
            ("logicalIndex", .int(n.logicalIndex)),
            ("kind", .string(n.kind.rawValue)),
            ("tierRank", .int(n.tierRank)),
            ("capacityBytes", .optional(n.capacity?.rawValue)),
            ("freeBytes", .optional(n.free?.rawValue)),
            ("hasCPUs", .optional(n.hasCPUs)),
            ("cpus", .string(n.cpus.description)),
            ("locality", .string(n.locality.description)),
            ("attachedTo", .string(n.attachedTo)),
            ("hwlocSubtype", .optional(n.hwlocSubtype)),
            ("hwlocInfo", .object(n.hwlocInfo.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
            ("kernelTier", .optional(n.kernelTier)),
            ("figures", .array(n.figures.map(json(figure:)))),
            ("ignoredZeroFigures", .array(n.ignoredZeroFigures.map { .string($0) })),
            ("memorySideCaches", .array(n.memorySideCaches.map { c in
                .object([("sizeBytes", .int(c.size.rawValue)), ("depth", .int(c.depth)),
                         ("lineSize", .optional(c.lineSize))])
            })),
            ("cxl", .array(n.cxl.map { .string($0) })),
            ("dax", .array(n.dax.map { d in
                .object([("device", .string(d.device)), ("targetNode", .int(d.targetNode)),
                         ("driver", .optional(d.driver)), ("evidence", .string(d.evidence))])
            })),
            ("evidence", .array(n.evidence.map { .string($0) })),
        ])
    }

    static func json(figure f: MemoryFigure) -> JSONValue {
        .object([
            ("metric", .string(f.metric.rawValue)),
            ("value", .uint(f.value)),
            ("unit", .string(f.metric.unit)),
            ("initiator", .object([("cpus", .string(f.initiator.cpus.description)),
                                   ("nodes", .array(f.initiator.nodes.map { .int($0) }))])),
            ("source", .string(f.source.rawValue)),
            ("evidence", .string(f.evidence)),
        ])
    }
}
