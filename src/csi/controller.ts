/**
 * The CSI Controller service over a node's pool: volumes, snapshots and clones as ploop disks.
 * It runs on the node that owns the pool (distributed provisioning), so every volume it creates
 * is accessible from this node only.
 */
import {
  Freezer,
  Pool,
  SnapshotRecord,
  VolumeRecord,
  VolumeSource,
  idForName,
  isWellFormedId,
  offlineFreezer,
  parseParameters,
} from '../pool/index.js';
import { volumeCondition } from './condition.js';
import { CsiError, failedPrecondition, invalidArgument, notFound, status } from './errors.js';
import { InFlight, LockRequest, snapshotKey, volumeKey } from './locks.js';
import { paginate } from './paging.js';
import type { Handlers, RequestContext } from './rpc.js';
import type { NodeTopology } from './topology.js';
import type {
  ControllerCapabilityName,
  ControllerGetCapabilitiesResponse,
  ControllerGetVolumeRequest,
  ControllerGetVolumeResponse,
  CreateSnapshotRequest,
  CreateSnapshotResponse,
  CreateVolumeRequest,
  CreateVolumeResponse,
  DeleteSnapshotRequest,
  DeleteVolumeRequest,
  Empty,
  GetCapacityRequest,
  GetCapacityResponse,
  GetSnapshotRequest,
  GetSnapshotResponse,
  ListSnapshotsRequest,
  ListSnapshotsResponse,
  ListVolumesRequest,
  ListVolumesResponse,
  Snapshot,
  StringMap,
  ValidateVolumeCapabilitiesRequest,
  ValidateVolumeCapabilitiesResponse,
  Volume,
  VolumeCapability,
  VolumeCapabilityOut,
  VolumeContentSource,
} from './types.js';
import {
  DEFAULT_FS_TYPE,
  checkMapSize,
  checkOptionalId,
  unsupportedReason,
  validateCapabilities,
  validateCapacityRange,
  validateId,
  validateMaxEntries,
  validateName,
} from './validate.js';

export const CONTROLLER_CAPABILITIES: readonly ControllerCapabilityName[] = [
  'CREATE_DELETE_VOLUME',
  'CREATE_DELETE_SNAPSHOT',
  'LIST_SNAPSHOTS',
  'GET_SNAPSHOT',
  'CLONE_VOLUME',
  'GET_CAPACITY',
  'LIST_VOLUMES',
  'GET_VOLUME',
  'SINGLE_NODE_MULTI_WRITER',
  'VOLUME_CONDITION',
];

/** Parameter keys the Kubernetes sidecars add (`--extra-create-metadata`); never ours. */
const SIDECAR_PREFIX = 'csi.storage.k8s.io/';

export interface ControllerOptions {
  pool: Pool;
  topology: NodeTopology;
  locks: InFlight;
  /** Freezes a volume's top delta for snapshots and clones; online when the node serves it. */
  freezer?: Freezer;
  /**
   * Why a volume is in use on this node (staged, published or attached), or null. DeleteVolume
   * refuses such a volume with FAILED_PRECONDITION instead of pulling its image from under a
   * device.
   */
  inUse?: (volumeId: string) => Promise<string | null>;
}

export interface ControllerHandlers extends Handlers {
  CreateVolume(req: CreateVolumeRequest, ctx: RequestContext): Promise<CreateVolumeResponse>;
  DeleteVolume(req: DeleteVolumeRequest): Promise<Empty>;
  ValidateVolumeCapabilities(
    req: ValidateVolumeCapabilitiesRequest,
  ): Promise<ValidateVolumeCapabilitiesResponse>;
  ListVolumes(req: ListVolumesRequest): Promise<ListVolumesResponse>;
  ControllerGetVolume(req: ControllerGetVolumeRequest): Promise<ControllerGetVolumeResponse>;
  GetCapacity(req: GetCapacityRequest): Promise<GetCapacityResponse>;
  ControllerGetCapabilities(req: Empty): Promise<ControllerGetCapabilitiesResponse>;
  CreateSnapshot(req: CreateSnapshotRequest, ctx: RequestContext): Promise<CreateSnapshotResponse>;
  DeleteSnapshot(req: DeleteSnapshotRequest): Promise<Empty>;
  ListSnapshots(req: ListSnapshotsRequest): Promise<ListSnapshotsResponse>;
  GetSnapshot(req: GetSnapshotRequest): Promise<GetSnapshotResponse>;
}

function contentSource(src: VolumeContentSource | null): VolumeSource | null {
  if (!src) return null;
  const type = src.type ?? (src.snapshot ? 'snapshot' : src.volume ? 'volume' : undefined);
  if (type === 'snapshot') {
    const id = src.snapshot?.snapshotId ?? '';
    return { kind: 'snapshot', id: validateId(id, 'volume_content_source.snapshot.snapshot_id') };
  }
  if (type === 'volume') {
    const id = src.volume?.volumeId ?? '';
    return { kind: 'volume', id: validateId(id, 'volume_content_source.volume.volume_id') };
  }
  throw invalidArgument('volume_content_source must name a snapshot or a volume');
}

function capabilityOut(cap: VolumeCapability): VolumeCapabilityOut {
  const mode = cap.accessMode?.mode ?? 'UNKNOWN';
  if (cap.mount) {
    return {
      mount: {
        fsType: cap.mount.fsType,
        mountFlags: cap.mount.mountFlags,
        volumeMountGroup: cap.mount.volumeMountGroup,
      },
      accessMode: { mode },
    };
  }
  return { block: {}, accessMode: { mode } };
}

function sameMap(a: StringMap, b: StringMap): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => b[k] === a[k]);
}

function timestamp(iso: string): { seconds: number; nanos: number } {
  const ms = Date.parse(iso);
  if (!Number.isFinite(ms)) return { seconds: 0, nanos: 0 };
  return { seconds: Math.floor(ms / 1000), nanos: (((ms % 1000) + 1000) % 1000) * 1e6 };
}

export function controllerService(opts: ControllerOptions): ControllerHandlers {
  const { pool, topology, locks } = opts;
  const freezer = opts.freezer ?? offlineFreezer;
  const clusterDefault = pool.opts.defaultClusterSize;

  const volumeContext = (v: VolumeRecord): StringMap =>
    v.parameters.fsType ? { fsType: v.parameters.fsType } : {};

  const toVolume = (v: VolumeRecord): Volume => ({
    capacityBytes: v.capacityBytes,
    volumeId: v.id,
    volumeContext: volumeContext(v),
    ...(v.source
      ? {
          contentSource:
            v.source.kind === 'snapshot'
              ? { snapshot: { snapshotId: v.source.id } }
              : { volume: { volumeId: v.source.id } },
        }
      : {}),
    accessibleTopology: [topology.segment],
  });

  const toSnapshot = (s: SnapshotRecord): Snapshot => ({
    sizeBytes: s.sizeBytes,
    snapshotId: s.id,
    sourceVolumeId: s.sourceVolumeId,
    creationTime: timestamp(s.createdAt),
    // A snapshot is cut and usable the moment CreateSnapshot returns: nothing to upload.
    readyToUse: true,
  });

  /** The file system a source volume or a snapshot's volume was created for, when known. */
  const sourceFsType = async (source: VolumeSource): Promise<string | null> => {
    let volumeId = source.id;
    if (source.kind === 'snapshot') {
      const s = await pool.getSnapshot(source.id);
      if (!s) return null;
      volumeId = s.sourceVolumeId;
    }
    return (await pool.getVolume(volumeId))?.parameters.fsType ?? null;
  };

  const volumeStatus = async (id: string) => ({
    publishedNodeIds: [],
    volumeCondition: await volumeCondition(pool, id),
  });

  return {
    async CreateVolume(req, ctx) {
      const name = validateName(req.name);
      const caps = validateCapabilities(req.volumeCapabilities);
      const range = validateCapacityRange(req.capacityRange);
      checkMapSize(req.parameters, 'parameters');
      if (Object.keys(req.mutableParameters).length > 0) {
        throw invalidArgument('mutable_parameters are not supported (no MODIFY_VOLUME capability)');
      }
      // Unknown or malformed parameters are refused before anything else happens.
      const params = parseParameters(req.parameters, clusterDefault);
      const source = contentSource(req.volumeContentSource);
      const id = idForName('volume', name);
      if (!topology.satisfies(req.accessibilityRequirements)) {
        const where = `none of the requisite topologies names this node (${topology.key}=${topology.nodeId})`;
        // An existing volume that cannot move is incompatible; a new one cannot be made here.
        if (await pool.getVolume(id)) {
          throw new CsiError(status.ALREADY_EXISTS, `volume "${name}" exists: ${where}`);
        }
        throw new CsiError(status.RESOURCE_EXHAUSTED, where);
      }
      // The capability's file system wins over the StorageClass parameter; a restore or clone
      // keeps its source's; mount volumes default to ext4, block-only volumes have none until
      // someone asks for one.
      const asked = caps.fsType ?? params.fsType;
      const existing = await pool.getVolume(id);
      // A retry finds what the first call inherited, even if the source is gone since.
      const inherited =
        existing &&
        source &&
        existing.source?.kind === source.kind &&
        existing.source.id === source.id
          ? existing.parameters.fsType
          : source
            ? await sourceFsType(source)
            : null;
      if (asked && inherited && asked !== inherited) {
        throw invalidArgument(`the source holds a ${inherited} file system, not ${asked}`);
      }
      const fsType = asked ?? inherited ?? (caps.hasMount ? DEFAULT_FS_TYPE : null);
      const parameters = { ...req.parameters, ...(fsType ? { fsType } : {}) };
      const held: LockRequest[] = [{ key: volumeKey(id), mode: 'exclusive' }];
      if (source?.kind === 'volume') held.push({ key: volumeKey(source.id), mode: 'exclusive' });
      if (source?.kind === 'snapshot') held.push({ key: snapshotKey(source.id), mode: 'shared' });
      const v = await locks.run(held, `CreateVolume ${id}`, () =>
        pool.createVolume(
          {
            name,
            requiredBytes: range.requiredBytes,
            limitBytes: range.limitBytes,
            parameters,
            source,
          },
          freezer,
        ),
      );
      ctx.log.info({ volumeId: v.id, capacityBytes: v.capacityBytes }, 'volume ready');
      return { volume: toVolume(v) };
    },

    async DeleteVolume(req) {
      const id = validateId(req.volumeId, 'volume_id');
      await locks.run(
        [{ key: volumeKey(id), mode: 'exclusive' }],
        `DeleteVolume ${id}`,
        async () => {
          if (opts.inUse && (await pool.getVolume(id))) {
            const why = await opts.inUse(id);
            if (why) throw failedPrecondition(`${why}: unpublish and unstage it before deleting`);
          }
          await pool.deleteVolume(id);
        },
      );
      return {};
    },

    async ValidateVolumeCapabilities(req) {
      const id = validateId(req.volumeId, 'volume_id');
      if (req.volumeCapabilities.length === 0) {
        throw invalidArgument('volume_capabilities is required');
      }
      const v = await pool.getVolume(id);
      if (!v) throw notFound(`volume ${id} does not exist`);
      const reasons: string[] = [];
      req.volumeCapabilities.forEach((cap, i) => {
        const why = unsupportedReason(cap, `volume_capabilities[${i}]`);
        if (why) reasons.push(why);
        const fs = cap.mount?.fsType;
        if (!why && fs && v.parameters.fsType && fs !== v.parameters.fsType) {
          reasons.push(`the volume was created for ${v.parameters.fsType}, not ${fs}`);
        }
      });
      const context = volumeContext(v);
      if (Object.keys(req.volumeContext).length > 0 && !sameMap(req.volumeContext, context)) {
        reasons.push('volume_context does not match the volume');
      }
      if (Object.keys(req.parameters).length > 0) {
        try {
          const p = parseParameters(req.parameters, clusterDefault);
          const fsDiffers = p.fsType !== null && p.fsType !== v.parameters.fsType;
          if (
            p.clusterSize !== v.parameters.clusterSize ||
            p.preallocate !== v.parameters.preallocate ||
            fsDiffers
          ) {
            reasons.push('parameters do not match the volume');
          }
        } catch (err) {
          reasons.push(err instanceof Error ? err.message : String(err));
        }
      }
      if (Object.keys(req.mutableParameters).length > 0) {
        reasons.push('mutable_parameters are not supported');
      }
      if (reasons.length > 0) return { message: reasons.join('; ') };
      return {
        confirmed: {
          volumeContext: context,
          volumeCapabilities: req.volumeCapabilities.map(capabilityOut),
          parameters: req.parameters,
          mutableParameters: {},
        },
        message: '',
      };
    },

    async ListVolumes(req) {
      const max = validateMaxEntries(req.maxEntries);
      const page = paginate(
        await pool.listVolumes(),
        (v) => v.id,
        max,
        req.startingToken,
        (t) => isWellFormedId('volume', t),
      );
      const entries = [];
      for (const v of page.entries)
        entries.push({ volume: toVolume(v), status: await volumeStatus(v.id) });
      return { entries, nextToken: page.nextToken };
    },

    async ControllerGetVolume(req) {
      const id = validateId(req.volumeId, 'volume_id');
      const v = await pool.getVolume(id);
      if (!v) throw notFound(`volume ${id} does not exist`);
      return { volume: toVolume(v), status: await volumeStatus(id) };
    },

    async GetCapacity(req) {
      const t = req.accessibleTopology;
      if (t && Object.keys(t.segments).length > 0 && !topology.contains(t)) {
        return { availableCapacity: 0, maximumVolumeSize: { value: 0 } };
      }
      for (const [i, cap] of req.volumeCapabilities.entries()) {
        if (unsupportedReason(cap, `volume_capabilities[${i}]`)) {
          return { availableCapacity: 0, maximumVolumeSize: { value: 0 } };
        }
      }
      parseParameters(req.parameters, clusterDefault);
      const { availableBytes } = await pool.capacity();
      // One volume may take everything that is left, and nothing more.
      return { availableCapacity: availableBytes, maximumVolumeSize: { value: availableBytes } };
    },

    async ControllerGetCapabilities() {
      return { capabilities: CONTROLLER_CAPABILITIES.map((type) => ({ rpc: { type } })) };
    },

    async CreateSnapshot(req, ctx) {
      const name = validateName(req.name);
      const sourceVolumeId = validateId(req.sourceVolumeId, 'source_volume_id');
      checkMapSize(req.parameters, 'parameters');
      for (const k of Object.keys(req.parameters)) {
        if (!k.startsWith(SIDECAR_PREFIX))
          throw invalidArgument(`unknown snapshot parameter "${k}"`);
      }
      const id = idForName('snapshot', name);
      const s = await locks.run(
        [{ key: snapshotKey(id), mode: 'exclusive' }],
        `CreateSnapshot ${id}`,
        async () => {
          // A retry of a snapshot already cut needs nothing from the (maybe busy) volume.
          const existing = await pool.getSnapshot(id);
          if (existing && existing.sourceVolumeId === sourceVolumeId) return existing;
          return locks.run(
            [{ key: volumeKey(sourceVolumeId), mode: 'exclusive' }],
            `CreateSnapshot ${id}`,
            () => pool.createSnapshot({ name, sourceVolumeId }, freezer),
          );
        },
      );
      ctx.log.info({ snapshotId: s.id, sizeBytes: s.sizeBytes }, 'snapshot ready');
      return { snapshot: toSnapshot(s) };
    },

    async DeleteSnapshot(req) {
      const id = validateId(req.snapshotId, 'snapshot_id');
      await locks.run([{ key: snapshotKey(id), mode: 'exclusive' }], `DeleteSnapshot ${id}`, () =>
        pool.deleteSnapshot(id),
      );
      return {};
    },

    async ListSnapshots(req) {
      const max = validateMaxEntries(req.maxEntries);
      checkOptionalId(req.snapshotId, 'snapshot_id');
      checkOptionalId(req.sourceVolumeId, 'source_volume_id');
      let all: SnapshotRecord[];
      if (req.snapshotId) {
        const s = await pool.getSnapshot(req.snapshotId);
        all = s ? [s] : [];
      } else {
        all = await pool.listSnapshots();
      }
      if (req.sourceVolumeId) all = all.filter((s) => s.sourceVolumeId === req.sourceVolumeId);
      const page = paginate(
        all,
        (s) => s.id,
        max,
        req.startingToken,
        (t) => isWellFormedId('snapshot', t),
      );
      return {
        entries: page.entries.map((s) => ({ snapshot: toSnapshot(s) })),
        nextToken: page.nextToken,
      };
    },

    async GetSnapshot(req) {
      const id = validateId(req.snapshotId, 'snapshot_id');
      const s = await pool.getSnapshot(id);
      if (!s) throw notFound(`snapshot ${id} does not exist`);
      return { snapshot: toSnapshot(s) };
    },
  };
}
