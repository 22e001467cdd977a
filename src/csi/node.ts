/**
 * The CSI Node service: volumes of this node's pool attached as ublk devices through blockd,
 * staged (a file system made on first use and mounted at the staging path, or the raw device
 * recorded), published (bind mounts of the staging mount, or of the device node onto a file),
 * measured, grown online, and taken apart again.
 *
 * What is staged and published where is kept per volume in `node.json` beside the volume's
 * descriptor in the pool (the staging path itself is the volume's file system once mounted, and
 * belongs to the CO). The record says what was asked for; the mount table and blockd say what
 * is true. Every RPC checks both, so a record outliving a reboot, a lost mount or a restarted
 * blockd is recognised as stale rather than trusted.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { BlockdError } from '../blockdev/errors.js';
import type { BlockdClient, DeviceListEntry } from '../blockdev/client.js';
import {
  FsType,
  HostError,
  MountInfo,
  bindMount,
  blockUsage,
  detect,
  deviceNumber,
  deviceSize,
  ensureDirectory,
  ensureFile,
  findMount,
  freeze,
  fsUsage,
  growFs,
  isBlockDevice,
  isFsType,
  isHeldExclusively,
  mkfs,
  mount,
  mountsOf,
  readMountInfo,
  removeMountPoint,
  thaw,
  unmount,
  waitForBlockDevice,
} from '../host/index.js';
import { Freezer, Pool, VolumeRecord, offlineFreezer } from '../pool/index.js';
import {
  AccessType,
  NodeRecord,
  PublishRecord,
  StageRecord,
  emptyRecord,
  readRecord,
  writeRecord,
} from './node-record.js';
import { volumeCondition } from './condition.js';
import { CsiError, invalidArgument, notFound, status } from './errors.js';
import { InFlight, volumeKey } from './locks.js';
import type { Handlers, RequestContext } from './rpc.js';
import type { NodeTopology } from './topology.js';
import type {
  AccessModeName,
  Empty,
  NodeCapabilityName,
  NodeExpandVolumeRequest,
  NodeExpandVolumeResponse,
  NodeGetCapabilitiesResponse,
  NodeGetInfoResponse,
  NodeGetVolumeStatsRequest,
  NodeGetVolumeStatsResponse,
  NodePublishVolumeRequest,
  NodeStageVolumeRequest,
  NodeUnpublishVolumeRequest,
  NodeUnstageVolumeRequest,
  StringMap,
  VolumeCapability,
  VolumeCondition,
} from './types.js';
import {
  DEFAULT_FS_TYPE,
  unsupportedReason,
  validateCapacityRange,
  validateId,
} from './validate.js';

export const NODE_CAPABILITIES: readonly NodeCapabilityName[] = [
  'STAGE_UNSTAGE_VOLUME',
  'GET_VOLUME_STATS',
  'EXPAND_VOLUME',
  'VOLUME_CONDITION',
  'SINGLE_NODE_MULTI_WRITER',
];

/** What the node service needs from blockd (BlockdClient; a fake in unit tests). */
export type BlockdApi = Pick<
  BlockdClient,
  'probe' | 'attach' | 'detach' | 'list' | 'snapshot' | 'grow'
>;

export interface NodeOptions {
  pool: Pool;
  topology: NodeTopology;
  locks: InFlight;
  blockd: BlockdApi;
  /** NodeGetInfo's max_volumes_per_node; 0 leaves the limit to the CO. */
  maxVolumesPerNode?: number;
}

export interface NodeHandlers extends Handlers {
  NodeStageVolume(req: NodeStageVolumeRequest, ctx: RequestContext): Promise<Empty>;
  NodeUnstageVolume(req: NodeUnstageVolumeRequest, ctx: RequestContext): Promise<Empty>;
  NodePublishVolume(req: NodePublishVolumeRequest, ctx: RequestContext): Promise<Empty>;
  NodeUnpublishVolume(req: NodeUnpublishVolumeRequest, ctx: RequestContext): Promise<Empty>;
  NodeGetVolumeStats(req: NodeGetVolumeStatsRequest): Promise<NodeGetVolumeStatsResponse>;
  NodeExpandVolume(
    req: NodeExpandVolumeRequest,
    ctx: RequestContext,
  ): Promise<NodeExpandVolumeResponse>;
  NodeGetCapabilities(req: Empty): Promise<NodeGetCapabilitiesResponse>;
  NodeGetInfo(req: Empty): Promise<NodeGetInfoResponse>;
}

// ---- request checks -------------------------------------------------------------------------

/** A REQUIRED absolute path (no upper length limit: the spec exempts paths from 128 bytes). */
function requirePath(p: string, field: string): string {
  if (typeof p !== 'string' || p.length === 0) throw invalidArgument(`${field} is required`);
  if (p.includes('\0')) throw invalidArgument(`${field} contains a NUL character`);
  if (!path.isAbsolute(p)) throw invalidArgument(`${field} must be an absolute path`);
  return path.resolve(p);
}

function accessTypeOf(cap: VolumeCapability): AccessType {
  return cap.accessType ?? (cap.mount ? 'mount' : 'block');
}

function modeOf(cap: VolumeCapability): string {
  return String(cap.accessMode?.mode ?? 'UNKNOWN');
}

/**
 * A REQUIRED capability of a stage or publish: malformed → INVALID_ARGUMENT (from
 * unsupportedReason); well-formed but beyond what the volume can do → FAILED_PRECONDITION
 * ("exceeds capabilities").
 */
function requireCapability(cap: VolumeCapability | null, field: string): VolumeCapability {
  if (!cap) throw invalidArgument(`${field} is required`);
  const why = unsupportedReason(cap, field);
  if (why) throw new CsiError(status.FAILED_PRECONDITION, `${field}: ${why}`);
  return cap;
}

const READ_ONLY_MODES: readonly string[] = ['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY'];
/** Modes under which one node may publish a volume at several targets. */
const SHARED_MODES: readonly AccessModeName[] = [
  'SINGLE_NODE_MULTI_WRITER',
  'MULTI_NODE_READER_ONLY',
  'MULTI_NODE_SINGLE_WRITER',
  'MULTI_NODE_MULTI_WRITER',
];

const sameFlags = (a: readonly string[], b: readonly string[]): boolean => {
  const x = [...new Set(a)].sort();
  const y = [...new Set(b)].sort();
  return x.length === y.length && x.every((v, i) => v === y[i]);
};

interface StageWish {
  accessType: AccessType;
  /** The file system asked for (capability, volume context, volume record), or null. */
  fsType: FsType | null;
  mountFlags: string[];
  accessMode: string;
  readonly: boolean;
}

function stageWish(cap: VolumeCapability, context: StringMap, v: VolumeRecord): StageWish {
  const accessType = accessTypeOf(cap);
  const mode = modeOf(cap);
  let fsType: FsType | null = null;
  if (accessType === 'mount') {
    // The capability's file system first, then the volume context's, then the one the
    // volume was created for.
    const asked = cap.mount?.fsType || context['fsType'] || v.parameters.fsType || '';
    if (asked && !isFsType(asked)) {
      throw new CsiError(
        status.FAILED_PRECONDITION,
        `file system type "${asked}" is not supported (ext4 or xfs)`,
      );
    }
    fsType = asked ? (asked as FsType) : null;
  }
  return {
    accessType,
    fsType,
    mountFlags: accessType === 'mount' ? [...(cap.mount?.mountFlags ?? [])] : [],
    accessMode: mode,
    readonly: READ_ONLY_MODES.includes(mode),
  };
}

/** The options of the staging mount. */
function stageMountOptions(fsType: string, wish: StageWish): string[] {
  const opts = wish.mountFlags.filter((o) => o !== 'ro' && o !== 'rw');
  // Restored and cloned volumes carry their source's XFS UUID; XFS refuses to mount a second
  // file system with a UUID already mounted unless told not to check.
  if (fsType === 'xfs' && !opts.includes('nouuid')) opts.push('nouuid');
  const ro = wish.readonly || wish.mountFlags.includes('ro');
  opts.push(ro ? 'ro' : 'rw');
  return opts;
}

const sameDevice = (m: MountInfo | null, dev: { major: number; minor: number }): boolean =>
  m !== null && m.major === dev.major && m.minor === dev.minor;

const message = (err: unknown): string =>
  (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';

// ---- the service ----------------------------------------------------------------------------

export function nodeService(opts: NodeOptions): NodeHandlers {
  const { pool, topology, locks, blockd } = opts;

  /** The device blockd serves for a volume, if any; UNAVAILABLE when blockd cannot say. */
  const deviceOf = async (id: string): Promise<DeviceListEntry | null> => {
    const dd = pool.volumeDescriptor(id);
    const list = await blockd.list();
    return list.find((e) => path.resolve(e.target) === dd) ?? null;
  };

  const attach = async (id: string): Promise<string> => {
    const r = await blockd.attach(pool.volumeDescriptor(id));
    await waitForBlockDevice(r.blockPath);
    return r.blockPath;
  };

  const deviceNumberOf = async (device: string) => {
    try {
      return await deviceNumber(device);
    } catch (err) {
      if (err instanceof HostError) return null;
      throw err;
    }
  };

  /** Whether the recorded staging is in place right now. */
  const stagedNow = async (s: StageRecord, dev: DeviceListEntry | null): Promise<boolean> => {
    if (!dev) return false;
    const n = await deviceNumberOf(dev.blockPath);
    if (!n) return false;
    if (s.accessType === 'block') return true;
    return sameDevice(await findMount(s.stagingTargetPath), n);
  };

  /** Whether `target` holds this volume's publication (a bind of its fs, or of its device). */
  const publishedAt = async (
    target: string,
    accessType: AccessType,
    n: { major: number; minor: number },
    m?: MountInfo | null,
  ): Promise<boolean> => {
    const mnt = m === undefined ? await findMount(target) : m;
    if (!mnt) return false;
    if (accessType === 'mount') return sameDevice(mnt, n);
    try {
      const st = await fsp.stat(target, { bigint: true });
      if (!st.isBlockDevice()) return false;
      const got = await deviceNumber(target);
      return got.major === n.major && got.minor === n.minor;
    } catch {
      return false;
    }
  };

  const getVolume = async (id: string): Promise<VolumeRecord> => {
    const v = await pool.getVolume(id);
    if (!v) throw notFound(`volume ${id} does not exist`);
    return v;
  };

  const lock = <T>(id: string, what: string, fn: () => Promise<T>): Promise<T> =>
    locks.run([{ key: volumeKey(id), mode: 'exclusive' }], `${what} ${id}`, fn);

  /**
   * Makes sure the device holds the file system to mount: a blank device gets one (never a
   * device with any signature or data), an existing one must be the one asked for. Returns the
   * file system type and whether it was just made.
   */
  const prepareFileSystem = async (
    device: string,
    wish: StageWish,
    log: Logger,
  ): Promise<{ fsType: string; made: boolean }> => {
    const c = await detect(device);
    if (c.kind === 'blank') {
      if (wish.readonly) {
        throw new CsiError(
          status.FAILED_PRECONDITION,
          'the volume has no file system yet and is staged read-only: nothing to mount',
        );
      }
      const fsType = wish.fsType ?? DEFAULT_FS_TYPE;
      log.info({ device, fsType }, 'making a file system on the new volume');
      await mkfs(device, fsType);
      return { fsType, made: true };
    }
    if (c.kind === 'filesystem') {
      if (wish.fsType && c.type !== wish.fsType) {
        throw new CsiError(
          status.FAILED_PRECONDITION,
          `the volume holds a ${c.type} file system, not ${wish.fsType}; it is not reformatted`,
        );
      }
      if (!isFsType(c.type)) {
        throw new CsiError(
          status.FAILED_PRECONDITION,
          `the volume holds a ${c.type} file system, which this driver does not mount`,
        );
      }
      return { fsType: c.type, made: false };
    }
    throw new CsiError(
      status.FAILED_PRECONDITION,
      `the volume holds ${c.description}: it is not formatted and cannot be mounted`,
    );
  };

  return {
    async NodeStageVolume(req, ctx) {
      const id = validateId(req.volumeId, 'volume_id');
      const staging = requirePath(req.stagingTargetPath, 'staging_target_path');
      const cap = requireCapability(req.volumeCapability, 'volume_capability');
      return lock(id, 'NodeStageVolume', async () => {
        const v = await getVolume(id);
        const wish = stageWish(cap, req.volumeContext, v);
        const rec = await readRecord(pool, id);
        const existing = await deviceOf(id);
        const prev = rec.staged;
        if (prev && prev.stagingTargetPath !== staging && (await stagedNow(prev, existing))) {
          throw new CsiError(
            status.FAILED_PRECONDITION,
            `volume ${id} is already staged at ${prev.stagingTargetPath}`,
          );
        }
        const mounted = await findMount(staging);
        const n = existing ? await deviceNumberOf(existing.blockPath) : null;
        const incompatible = (why: string) =>
          new CsiError(
            status.ALREADY_EXISTS,
            `volume ${id} is already staged at ${staging} ${why}`,
          );

        if (mounted) {
          if (!n || !sameDevice(mounted, n)) {
            throw new CsiError(
              status.ALREADY_EXISTS,
              `${staging} is a mount point of something else (${mounted.source}, ${mounted.fsType})`,
            );
          }
          if (wish.accessType === 'block') throw incompatible('with a file system');
          const same =
            prev && prev.stagingTargetPath === staging
              ? prev.accessType === 'mount' &&
                (!wish.fsType || wish.fsType === prev.fsType) &&
                sameFlags(prev.mountFlags, wish.mountFlags) &&
                prev.accessMode === wish.accessMode
              : (!wish.fsType || wish.fsType === mounted.fsType) &&
                mounted.options.includes('ro') === wish.readonly;
          if (!same) throw incompatible('with another capability');
          if (!prev || prev.stagingTargetPath !== staging) {
            rec.staged = {
              stagingTargetPath: staging,
              accessType: 'mount',
              fsType: mounted.fsType,
              mountFlags: wish.mountFlags,
              accessMode: wish.accessMode,
              device: existing!.blockPath,
              stagedAt: new Date().toISOString(),
            };
            await writeRecord(pool, id, rec);
          }
          return {};
        }
        if (prev && prev.stagingTargetPath === staging && prev.accessType === 'block' && n) {
          if (wish.accessType !== 'block' || prev.accessMode !== wish.accessMode) {
            throw incompatible('as a raw block device with another capability');
          }
          return {};
        }

        // Not staged here (or only a stale record): attach, then format and mount.
        const device = existing?.blockPath ?? (await attach(id));
        try {
          let fsType: string | null = null;
          if (wish.accessType === 'mount') {
            const fs = await prepareFileSystem(device, wish, ctx.log);
            fsType = fs.fsType;
            await ensureDirectory(staging);
            await mount(device, staging, { fsType, options: stageMountOptions(fsType, wish) });
            if (!fs.made && !wish.readonly) {
              // The image may be larger than its file system: an expansion finished while the
              // volume was not staged (kernels without online resize), or a restore into a
              // larger volume. Growing to the current size changes nothing.
              await growFs(device, fsType, staging).catch((err: unknown) =>
                ctx.log.warn(
                  { err: message(err) },
                  'could not grow the file system to the volume size',
                ),
              );
            }
          } else if (!(await isBlockDevice(device))) {
            throw new HostError('NOT_FOUND', `${device} is not a block device`);
          }
          rec.staged = {
            stagingTargetPath: staging,
            accessType: wish.accessType,
            fsType,
            mountFlags: wish.mountFlags,
            accessMode: wish.accessMode,
            device,
            stagedAt: new Date().toISOString(),
          };
          rec.published = {};
          await writeRecord(pool, id, rec);
        } catch (err) {
          // Leave nothing behind that no NodeUnstageVolume may ever come to clean up.
          if (
            await findMount(staging).then(
              (m) => m !== null,
              () => true,
            )
          ) {
            await unmount(staging).catch(() => undefined);
          }
          if (!existing) {
            await blockd
              .detach(device)
              .catch((e: unknown) =>
                ctx.log.warn({ err: message(e), device }, 'could not detach after a failed stage'),
              );
          }
          throw err;
        }
        ctx.log.info({ device, staging, accessType: wish.accessType }, 'volume staged');
        return {};
      });
    },

    async NodeUnstageVolume(req, ctx) {
      const id = validateId(req.volumeId, 'volume_id');
      const staging = requirePath(req.stagingTargetPath, 'staging_target_path');
      return lock(id, 'NodeUnstageVolume', async () => {
        const v = await pool.getVolume(id);
        const rec = v ? await readRecord(pool, id) : emptyRecord();
        const existing = await deviceOf(id);
        const prev = rec.staged;
        if (prev && prev.stagingTargetPath !== staging && (await stagedNow(prev, existing))) {
          // Staged, but not at this path: nothing to undo here.
          return {};
        }
        // The device blockd serves, or (blockd lost it) the one recorded at stage time.
        const device =
          existing?.blockPath ?? (prev?.stagingTargetPath === staging ? prev.device : null);
        const n = device ? await deviceNumberOf(device) : null;
        const mounted = await findMount(staging);
        const ours = mounted !== null && n !== null && sameDevice(mounted, n);
        if (!v && !ours && !existing) throw notFound(`volume ${id} does not exist`);

        if (n) {
          // Every publication must be gone first (the CO guarantees it; a mistake here
          // would yank a device from under a running workload).
          const table = await readMountInfo();
          const elsewhere = mountsOf(n.major, n.minor, table).filter(
            (m) => !(ours && m.id === mounted!.id),
          );
          for (const [t, p] of Object.entries(rec.published)) {
            if (p.accessType === 'block' && (await publishedAt(t, 'block', n))) {
              elsewhere.push({ mountPoint: t } as MountInfo);
            }
          }
          if (elsewhere.length > 0) {
            throw new CsiError(
              status.FAILED_PRECONDITION,
              `volume ${id} is still in use at ${elsewhere.map((m) => m.mountPoint).join(', ')}`,
            );
          }
        }
        if (ours) {
          // Never lazily: the device goes away next.
          await unmount(staging, { attempts: 5 });
        }
        if (existing) {
          if (await isHeldExclusively(existing.blockPath)) {
            throw new CsiError(
              status.FAILED_PRECONDITION,
              `${existing.blockPath} is still in use (mounted elsewhere or held by another user)`,
            );
          }
          await blockd.detach(existing.blockPath);
          ctx.log.info({ device: existing.blockPath }, 'volume detached');
        }
        if (v) await writeRecord(pool, id, emptyRecord());
        return {};
      });
    },

    async NodePublishVolume(req, ctx) {
      const id = validateId(req.volumeId, 'volume_id');
      const target = requirePath(req.targetPath, 'target_path');
      const cap = requireCapability(req.volumeCapability, 'volume_capability');
      if (!req.stagingTargetPath) {
        throw new CsiError(
          status.FAILED_PRECONDITION,
          'staging_target_path is required: the volume must be staged (NodeStageVolume) first',
        );
      }
      const staging = requirePath(req.stagingTargetPath, 'staging_target_path');
      if (target === staging) {
        throw invalidArgument('target_path must differ from staging_target_path');
      }
      return lock(id, 'NodePublishVolume', async () => {
        await getVolume(id);
        const rec = await readRecord(pool, id);
        const s = rec.staged;
        const notStaged = () =>
          new CsiError(
            status.FAILED_PRECONDITION,
            `volume ${id} is not staged at ${staging}: call NodeStageVolume first`,
          );
        if (!s || s.stagingTargetPath !== staging) throw notStaged();
        const n = await deviceNumberOf(s.device);
        if (!n) throw notStaged();
        if (s.accessType === 'mount' && !sameDevice(await findMount(staging), n)) {
          throw notStaged();
        }
        const accessType = accessTypeOf(cap);
        if (accessType !== s.accessType) {
          throw new CsiError(
            status.FAILED_PRECONDITION,
            `volume ${id} is staged for ${s.accessType} access, not ${accessType}`,
          );
        }
        const fsAsked = cap.mount?.fsType;
        if (accessType === 'mount' && fsAsked && fsAsked !== s.fsType) {
          throw new CsiError(
            status.FAILED_PRECONDITION,
            `volume ${id} holds a ${s.fsType} file system, not ${fsAsked}`,
          );
        }
        const mode = modeOf(cap);
        const pub: PublishRecord = {
          accessType,
          readonly: req.readonly || READ_ONLY_MODES.includes(mode),
          accessMode: mode,
          mountFlags: accessType === 'mount' ? [...(cap.mount?.mountFlags ?? [])] : [],
        };
        const samePub = (p: PublishRecord) =>
          p.accessType === pub.accessType &&
          p.readonly === pub.readonly &&
          p.accessMode === pub.accessMode &&
          sameFlags(p.mountFlags, pub.mountFlags);

        const here = await findMount(target);
        if (here) {
          if (!(await publishedAt(target, accessType, n, here))) {
            throw new CsiError(
              status.ALREADY_EXISTS,
              `${target} is a mount point of something else (${here.source}, ${here.fsType})`,
            );
          }
          const known: PublishRecord = rec.published[target] ?? {
            ...pub,
            readonly: here.options.includes('ro'),
          };
          if (!samePub(known)) {
            throw new CsiError(
              status.ALREADY_EXISTS,
              `volume ${id} is already published at ${target} with other arguments`,
            );
          }
          if (!rec.published[target]) {
            rec.published[target] = known;
            await writeRecord(pool, id, rec);
          }
          return {};
        }

        // Publications elsewhere on this node: allowed only when every one of them (and this
        // one) is in a mode that shares the volume between targets.
        const live: string[] = [];
        let exclusive = !SHARED_MODES.includes(mode as AccessModeName);
        for (const [t, p] of Object.entries(rec.published)) {
          if (t === target) continue;
          if (await publishedAt(t, p.accessType, n)) {
            live.push(t);
            if (!SHARED_MODES.includes(p.accessMode as AccessModeName)) exclusive = true;
          } else {
            delete rec.published[t];
          }
        }
        if (live.length > 0 && exclusive) {
          throw new CsiError(
            status.FAILED_PRECONDITION,
            `volume ${id} is already published at ${live.join(', ')} and its access mode does not allow another target`,
          );
        }

        const existed = await fsp.lstat(target).then(
          () => true,
          () => false,
        );
        try {
          if (accessType === 'mount') {
            await ensureDirectory(target);
            await bindMount(staging, target, { readonly: pub.readonly, options: pub.mountFlags });
          } else {
            await ensureFile(target);
            await bindMount(s.device, target, { readonly: pub.readonly });
          }
        } catch (err) {
          if (!existed) await removeMountPoint(target).catch(() => undefined);
          throw err;
        }
        rec.published[target] = pub;
        await writeRecord(pool, id, rec);
        ctx.log.info({ target, readonly: pub.readonly }, 'volume published');
        return {};
      });
    },

    async NodeUnpublishVolume(req, ctx) {
      const id = validateId(req.volumeId, 'volume_id');
      const target = requirePath(req.targetPath, 'target_path');
      return lock(id, 'NodeUnpublishVolume', async () => {
        const v = await pool.getVolume(id);
        const rec = v ? await readRecord(pool, id) : emptyRecord();
        const present = await fsp.lstat(target).then(
          () => true,
          () => false,
        );
        let mounted = await findMount(target);
        if (!v && !mounted && !present) throw notFound(`volume ${id} does not exist`);
        if (mounted && rec.staged) {
          // Make sure it is this volume before taking it away.
          const n = await deviceNumberOf(rec.staged.device);
          const mine =
            n !== null &&
            ((await publishedAt(target, 'mount', n, mounted)) ||
              (await publishedAt(target, 'block', n, mounted)));
          if (!mine && !rec.published[target]) {
            throw new CsiError(
              status.FAILED_PRECONDITION,
              `${target} holds something other than volume ${id} (${mounted.source}, ${mounted.fsType})`,
            );
          }
        }
        // Stacked mounts (a publish repeated by hand) are all taken away.
        for (let i = 0; mounted && i < 8; i++) {
          await unmount(target, { lazyAsLastResort: true });
          mounted = await findMount(target);
        }
        if (mounted) throw new HostError('BUSY', `${target} is still a mount point`);
        await removeMountPoint(target);
        if (v && rec.published[target]) {
          delete rec.published[target];
          await writeRecord(pool, id, rec);
        }
        ctx.log.info({ target }, 'volume unpublished');
        return {};
      });
    },

    async NodeGetVolumeStats(req) {
      const id = validateId(req.volumeId, 'volume_id');
      const volumePath = requirePath(req.volumePath, 'volume_path');
      const v = await getVolume(id);
      const rec = await readRecord(pool, id);
      let dev: DeviceListEntry | null = null;
      let blockdProblem: string | null = null;
      try {
        dev = await deviceOf(id);
      } catch (err) {
        blockdProblem = `blockd cannot be asked about the device: ${message(err)}`;
      }
      const device = dev?.blockPath ?? rec.staged?.device ?? null;
      const n = device ? await deviceNumberOf(device) : null;
      const missing = () => notFound(`volume ${id} is not staged or published at ${volumePath}`);
      if (!device || !n) throw missing();
      const where = await located(volumePath, n, rec);
      if (!where) throw missing();

      const conditions: VolumeCondition[] = [];
      if (blockdProblem) conditions.push({ abnormal: true, message: blockdProblem });
      else if (!dev) {
        conditions.push({ abnormal: true, message: `blockd serves no device for volume ${id}` });
      } else if (dev.state !== 'live') {
        conditions.push({
          abnormal: true,
          message: `device ${dev.blockPath} is ${dev.state}, not live`,
        });
      }
      conditions.push(await volumeCondition(pool, v.id));

      if (where.kind === 'mount') {
        const wantRw = !(rec.staged?.accessType === 'mount' && stagedReadonly(rec.staged));
        if (wantRw && where.mount.superOptions.includes('ro')) {
          conditions.push({
            abnormal: true,
            message: 'the file system has turned read-only (an error was detected?)',
          });
        }
        const u = await fsUsage(volumePath);
        return {
          usage: [
            {
              unit: 'BYTES',
              total: u.totalBytes,
              available: u.availableBytes,
              used: u.usedBytes,
            },
            {
              unit: 'INODES',
              total: u.totalInodes,
              available: u.freeInodes,
              used: u.usedInodes,
            },
          ],
          volumeCondition: worst(conditions),
        };
      }
      const b = await blockUsage(device);
      return {
        usage: [{ unit: 'BYTES', total: b.totalBytes }],
        volumeCondition: worst(conditions),
      };
    },

    async NodeExpandVolume(req, ctx) {
      const id = validateId(req.volumeId, 'volume_id');
      const volumePath = requirePath(req.volumePath, 'volume_path');
      const range = validateCapacityRange(req.capacityRange);
      if (req.volumeCapability) {
        const why = unsupportedReason(req.volumeCapability, 'volume_capability');
        if (why) throw invalidArgument(`volume_capability: ${why}`);
      }
      return lock(id, 'NodeExpandVolume', async () => {
        const v = await getVolume(id);
        const rec = await readRecord(pool, id);
        const dev = await deviceOf(id);
        const n = dev ? await deviceNumberOf(dev.blockPath) : null;
        if (!dev || !n) throw notFound(`volume ${id} is not staged or published at ${volumePath}`);
        const where = await located(volumePath, n, rec);
        if (!where) throw notFound(`volume ${id} is not staged or published at ${volumePath}`);
        if (req.volumeCapability && accessTypeOf(req.volumeCapability) !== where.kind) {
          throw invalidArgument(
            `volume ${id} is used for ${where.kind} access at ${volumePath}, not ${accessTypeOf(req.volumeCapability)}`,
          );
        }

        const cluster = v.parameters.clusterSize;
        const want = Math.ceil(range.requiredBytes / cluster) * cluster;
        if (range.limitBytes > 0 && want > range.limitBytes) {
          throw new CsiError(
            status.OUT_OF_RANGE,
            `${range.requiredBytes} bytes rounded to whole ${cluster}-byte clusters (${want}) exceed the limit ${range.limitBytes}`,
          );
        }
        let size = await deviceSize(dev.blockPath);
        if (want > size) {
          try {
            await blockd.grow(dev.blockPath, want);
          } catch (err) {
            if (err instanceof BlockdError && err.code === 'FAILED_PRECONDITION') {
              // The image has grown, the live device cannot: the new size arrives with the
              // next attach, and the next stage grows the file system.
              if (want > v.capacityBytes) await pool.recordCapacity(v, want);
              throw new CsiError(
                status.FAILED_PRECONDITION,
                `${err.message}. The volume needs to be unstaged and staged again (for example by restarting its pod) to use the new size`,
                { cause: err },
              );
            }
            throw err;
          }
          size = await deviceSize(dev.blockPath);
          if (size < want) {
            throw new CsiError(
              status.INTERNAL,
              `${dev.blockPath} still has ${size} bytes after growing to ${want}`,
            );
          }
          ctx.log.info({ device: dev.blockPath, sizeBytes: size }, 'device grown');
        }
        if (where.kind === 'mount') {
          if (where.mount.superOptions.includes('ro')) {
            ctx.log.info('read-only file system: left as it is');
          } else {
            // Grown through a writable mount: xfs_growfs refuses a read-only bind.
            const s = rec.staged;
            const stagedHere =
              s?.accessType === 'mount' && sameDevice(await findMount(s.stagingTargetPath), n);
            const mountpoint = stagedHere ? s!.stagingTargetPath : where.mount.mountPoint;
            await growFs(dev.blockPath, where.mount.fsType, mountpoint);
          }
        }
        if (size > v.capacityBytes) await pool.recordCapacity(v, size);
        return { capacityBytes: Math.max(size, v.capacityBytes) };
      });
    },

    async NodeGetCapabilities() {
      return { capabilities: NODE_CAPABILITIES.map((type) => ({ rpc: { type } })) };
    },

    async NodeGetInfo() {
      return {
        nodeId: topology.nodeId,
        maxVolumesPerNode: opts.maxVolumesPerNode ?? 0,
        accessibleTopology: topology.segment,
      };
    },
  };

  /**
   * How the volume (device `n`) is present at `p`: its file system mounted there (staging or
   * publish target), its device node bound there, or — block access — its staging directory.
   */
  async function located(
    p: string,
    n: { major: number; minor: number },
    rec: NodeRecord,
  ): Promise<{ kind: 'mount'; mount: MountInfo } | { kind: 'block' } | null> {
    const m = await findMount(p);
    if (m && sameDevice(m, n)) return { kind: 'mount', mount: m };
    if (m && (await publishedAt(p, 'block', n, m))) return { kind: 'block' };
    if (rec.staged?.accessType === 'block' && rec.staged.stagingTargetPath === p) {
      return { kind: 'block' };
    }
    return null;
  }
}

function stagedReadonly(s: StageRecord): boolean {
  return READ_ONLY_MODES.includes(s.accessMode) || s.mountFlags.includes('ro');
}

/** The first abnormal condition, or the last (normal) one. */
function worst(conditions: VolumeCondition[]): VolumeCondition {
  return conditions.find((c) => c.abnormal) ?? conditions[conditions.length - 1]!;
}

/**
 * The Freezer for CreateSnapshot and clones when the node service runs: a volume blockd serves
 * is snapshotted online (blockd pauses and flushes the device, freezes the live top and stacks
 * a new one); a mounted file system is frozen around it so the snapshot holds it clean. A volume
 * that is not attached is snapshotted offline. When blockd cannot be asked, nothing is done:
 * an offline snapshot of a live image would corrupt it.
 */
/** blockd's device list; UNAVAILABLE when blockd cannot be asked (nothing may be assumed). */
export async function attachedDevices(
  blockd: BlockdApi,
  volumeId: string,
): Promise<DeviceListEntry[]> {
  try {
    return await blockd.list();
  } catch (err) {
    throw new CsiError(
      status.UNAVAILABLE,
      `cannot tell whether volume ${volumeId} is attached: ${message(err)}`,
      { cause: err },
    );
  }
}

export function nodeFreezer(pool: Pool, blockd: BlockdApi, log: Logger): Freezer {
  return async (volumeId, dd) => {
    const list = await attachedDevices(blockd, volumeId);
    const dev = list.find((e) => path.resolve(e.target) === path.resolve(dd));
    if (!dev) return offlineFreezer(volumeId, dd);

    let frozen: string | null = null;
    const rec = await readRecord(pool, volumeId);
    if (rec.staged?.accessType === 'mount') {
      const mountpoint = rec.staged.stagingTargetPath;
      try {
        const n = await deviceNumber(dev.blockPath);
        if (sameDevice(await findMount(mountpoint), n)) {
          await freeze(mountpoint);
          frozen = mountpoint;
        }
      } catch (err) {
        log.warn(
          { volumeId, mountpoint, err: message(err) },
          'could not freeze the file system; the snapshot is crash-consistent only',
        );
      }
    }
    try {
      return await blockd.snapshot(dev.blockPath);
    } finally {
      if (frozen) {
        await thaw(frozen).catch((err: unknown) =>
          log.error(
            { volumeId, mountpoint: frozen, err: message(err) },
            'could not thaw the file system',
          ),
        );
      }
    }
  };
}
