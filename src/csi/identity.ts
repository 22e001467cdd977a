/** The CSI Identity service: who the plugin is, what it offers, whether it is healthy. */
import { readFileSync } from 'node:fs';
import { CsiError, status } from './errors.js';
import { findUp } from './proto.js';
import type { Handlers } from './rpc.js';
import type {
  Empty,
  GetPluginCapabilitiesResponse,
  GetPluginInfoResponse,
  PluginCapability,
  ProbeResponse,
} from './types.js';

export const DEFAULT_DRIVER_NAME = 'csi.ploop.dev';

let version: string | null = null;

/** The version in the package's package.json. */
export function driverVersion(): string {
  if (version === null) {
    const pkg = JSON.parse(readFileSync(findUp('package.json'), 'utf8')) as { version?: unknown };
    version = typeof pkg.version === 'string' && pkg.version ? pkg.version : '0.0.0';
  }
  return version;
}

/** Plugin capabilities of every server. */
export const PLUGIN_CAPABILITIES: readonly PluginCapability[] = [
  { service: { type: 'CONTROLLER_SERVICE' } },
  { service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } },
];

/**
 * Added when the node service runs: volumes grow on the node (NodeExpandVolume) while they are
 * in use. There is no ControllerExpandVolume, so the resizer's node-only path applies.
 */
export const ONLINE_EXPANSION: PluginCapability = { volumeExpansion: { type: 'ONLINE' } };

export interface IdentityOptions {
  driverName: string;
  /**
   * Throws when the plugin cannot serve (the pool is unreachable; with the node service, blockd
   * is unreachable or ublk is unavailable): Probe then answers FAILED_PRECONDITION.
   */
  probe: () => Promise<void>;
  /** Whether the node service runs (and with it online expansion). */
  nodeService?: boolean;
}

export interface IdentityHandlers extends Handlers {
  GetPluginInfo(req: Empty): Promise<GetPluginInfoResponse>;
  GetPluginCapabilities(req: Empty): Promise<GetPluginCapabilitiesResponse>;
  Probe(req: Empty): Promise<ProbeResponse>;
}

export function identityService(opts: IdentityOptions): IdentityHandlers {
  return {
    async GetPluginInfo() {
      return { name: opts.driverName, vendorVersion: driverVersion(), manifest: {} };
    },
    async GetPluginCapabilities() {
      const caps = [...PLUGIN_CAPABILITIES];
      if (opts.nodeService) caps.push(ONLINE_EXPANSION);
      return { capabilities: caps };
    },
    async Probe() {
      try {
        await opts.probe();
      } catch (err) {
        throw new CsiError(
          status.FAILED_PRECONDITION,
          `not ready: ${err instanceof Error ? err.message : String(err)}`,
          { cause: err },
        );
      }
      return { ready: { value: true } };
    },
  };
}
