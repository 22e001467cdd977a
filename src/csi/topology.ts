/**
 * Topology: every volume lives on one node, described by one segment
 * `{<driver-name>/node: <node-id>}` (the key NodeGetInfo will report as well).
 */
import { invalidArgument } from './errors.js';
import type { Topology, TopologyRequirement } from './types.js';

// CSI: a driver name follows domain name notation, at most 63 characters. Used as the topology
// key prefix, it must also be lower case.
const DRIVER_NAME = /^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/;
// CSI: a topology value is at most 63 characters, alphanumeric at both ends, '-', '_', '.' inside.
const SEGMENT_VALUE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;

export function checkDriverName(name: string): string {
  if (!DRIVER_NAME.test(name)) {
    throw invalidArgument(
      `driver name "${name}" must be a lower-case domain name of at most 63 characters`,
    );
  }
  return name;
}

export function checkNodeId(nodeId: string): string {
  if (!SEGMENT_VALUE.test(nodeId)) {
    throw invalidArgument(
      `node id "${nodeId}" must be at most 63 characters, letters, digits, '-', '_' or '.', ` +
        'alphanumeric at both ends (it is used as a topology value)',
    );
  }
  return nodeId;
}

export class NodeTopology {
  readonly key: string;

  constructor(
    driverName: string,
    readonly nodeId: string,
  ) {
    this.key = `${checkDriverName(driverName)}/node`;
    checkNodeId(nodeId);
  }

  /** The segment volumes on this node are accessible from. */
  get segment(): Topology {
    return { segments: { [this.key]: this.nodeId } };
  }

  /** True when `t` names this node. */
  contains(t: Topology): boolean {
    return t.segments[this.key] === this.nodeId;
  }

  /**
   * Whether a CreateVolume with these requirements can be provisioned here. Requisite topologies
   * are binding: none of them naming this node means "not here". Preferred topologies alone are
   * a wish the spec lets the plugin fall back from ("MAY choose from all possible topologies"),
   * and this node is the only topology this plugin can choose.
   */
  satisfies(req: TopologyRequirement | null): boolean {
    if (!req || req.requisite.length === 0) return true;
    return req.requisite.some((t) => this.contains(t));
  }
}
