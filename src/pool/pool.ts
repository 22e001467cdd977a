/**
 * A pool: volumes and snapshots of one node, as ploop disks in a directory tree.
 *
 *   <root>/volumes/<volume-id>/     DiskDescriptor.xml, deltas, volume.json
 *   <root>/snapshots/<snap-id>/     DiskDescriptor.xml, deltas (read-only), snapshot.json
 *   <root>/.staging/  <root>/.trash/
 *
 * Frozen deltas are shared by hard links: a snapshot directory links the deltas of the volume's
 * chain, and a volume restored or cloned from it links them again under a new empty top. So
 * snapshots and clones cost O(chain length), never O(data); deleting a snapshot never waits for
 * its clones (the file system's link count is the reference count); and every directory is a
 * self-contained ploop disk that `ploop` and `qemu-img` can open.
 *
 * Every object appears by rename(2) of a fully written staging directory and disappears by
 * rename into .trash, so a crash leaves either the whole object or nothing; `open` clears
 * whatever a crash left in .staging and .trash.
 */
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  DESCRIPTOR_NAME,
  Descriptor,
  NONE_GUID,
  PloopError,
  PloopImage,
  TOP_GUID,
  chainGuids,
  imageOf,
  newGuid,
  nodeFileSystem,
  parseSize,
  readDescriptor,
  resolveImagePath,
  snapshot as ploopSnapshot,
  writeDescriptor,
  writeFileAtomic,
  createDisk,
  growDisk,
  SECTOR,
  checkClusterSize,
} from '../ploop/index.js';
import { PoolError } from './errors.js';
import { idForName, isWellFormedId } from './ids.js';

export const DEFAULT_CAPACITY = 1 << 30;
const VOLUME_META = 'volume.json';
const SNAPSHOT_META = 'snapshot.json';

export interface VolumeParameters {
  clusterSize: number;
  preallocate: boolean;
  fsType: string | null;
}

export type VolumeSource = { kind: 'snapshot'; id: string } | { kind: 'volume'; id: string };

export interface VolumeRecord {
  id: string;
  name: string;
  capacityBytes: number;
  parameters: VolumeParameters;
  source: VolumeSource | null;
  createdAt: string;
}

export interface SnapshotRecord {
  id: string;
  name: string;
  sourceVolumeId: string;
  sizeBytes: number;
  createdAt: string;
}

export interface CreateVolumeRequest {
  name: string;
  requiredBytes: number;
  limitBytes: number;
  parameters: Record<string, string>;
  source: VolumeSource | null;
}

/**
 * Freezes a volume's top delta and returns the frozen snapshot GUID. Offline this is
 * ploop's snapshot; the node service substitutes an online one when the volume is attached.
 */
export type Freezer = (volumeId: string, descriptorPath: string) => Promise<string>;

export const offlineFreezer: Freezer = (_id, dd) => ploopSnapshot(dd);

export interface PoolOptions {
  /** Sum of virtual sizes allowed per byte of pool file system (thin provisioning). */
  overProvisioning?: number;
  defaultClusterSize?: number;
}

export interface PoolCapacity {
  totalBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  /** What a new volume may still use: min(total × ratio − provisioned, free × ratio). */
  availableBytes: number;
}

/** StorageClass parameters this driver understands; sidecar-added keys are ignored. */
export function parseParameters(
  params: Record<string, string>,
  defaultClusterSize: number,
): VolumeParameters {
  const out: VolumeParameters = {
    clusterSize: defaultClusterSize,
    preallocate: false,
    fsType: null,
  };
  for (const [k, v] of Object.entries(params)) {
    if (k.startsWith('csi.storage.k8s.io/')) continue;
    switch (k) {
      case 'clusterSize':
        try {
          out.clusterSize = parseSize(v);
          checkClusterSize(out.clusterSize);
        } catch (err) {
          throw new PoolError(
            'INVALID_ARGUMENT',
            `parameter clusterSize: ${(err as Error).message}`,
          );
        }
        break;
      case 'preallocate':
        if (v !== 'true' && v !== 'false') {
          throw new PoolError(
            'INVALID_ARGUMENT',
            `parameter preallocate must be "true" or "false"`,
          );
        }
        out.preallocate = v === 'true';
        break;
      case 'fsType':
        if (!['ext4', 'xfs'].includes(v)) {
          throw new PoolError(
            'INVALID_ARGUMENT',
            `parameter fsType must be ext4 or xfs, got "${v}"`,
          );
        }
        out.fsType = v;
        break;
      default:
        throw new PoolError('INVALID_ARGUMENT', `unknown parameter "${k}"`);
    }
  }
  return out;
}

function sameParameters(a: VolumeParameters, b: VolumeParameters): boolean {
  return (
    a.clusterSize === b.clusterSize && a.preallocate === b.preallocate && a.fsType === b.fsType
  );
}

function sameSource(a: VolumeSource | null, b: VolumeSource | null): boolean {
  return a === b || (a !== null && b !== null && a.kind === b.kind && a.id === b.id);
}

async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new PoolError('INTERNAL', `cannot read ${file}: ${(err as Error).message}`);
  }
}

function wrap(err: unknown, what: string): PoolError {
  if (err instanceof PoolError) return err;
  if (err instanceof PloopError) {
    const code =
      err.code === 'INVALID_ARGUMENT'
        ? 'INVALID_ARGUMENT'
        : err.code === 'NOT_FOUND'
          ? 'NOT_FOUND'
          : err.code === 'BUSY'
            ? 'FAILED_PRECONDITION'
            : 'INTERNAL';
    return new PoolError(code, `${what}: ${err.message}`, { cause: err });
  }
  return new PoolError('INTERNAL', `${what}: ${(err as Error).message ?? String(err)}`, {
    cause: err,
  });
}

export class Pool {
  private constructor(
    readonly root: string,
    readonly opts: Required<PoolOptions>,
  ) {}

  /** Opens (creating if needed) a pool and clears what an interrupted operation left. */
  static async open(root: string, opts: PoolOptions = {}): Promise<Pool> {
    const abs = path.resolve(root);
    const pool = new Pool(abs, {
      overProvisioning: opts.overProvisioning ?? 1,
      defaultClusterSize: opts.defaultClusterSize ?? 1 << 20,
    });
    if (!(pool.opts.overProvisioning > 0)) {
      throw new PoolError('INVALID_ARGUMENT', 'over-provisioning ratio must be positive');
    }
    for (const d of ['volumes', 'snapshots', '.staging', '.trash']) {
      await fsp.mkdir(path.join(abs, d), { recursive: true, mode: 0o700 });
    }
    for (const d of ['.staging', '.trash']) {
      for (const e of await fsp.readdir(path.join(abs, d))) {
        await fsp.rm(path.join(abs, d, e), { recursive: true, force: true });
      }
    }
    return pool;
  }

  volumeDir(id: string): string {
    return path.join(this.root, 'volumes', id);
  }
  volumeDescriptor(id: string): string {
    return path.join(this.volumeDir(id), DESCRIPTOR_NAME);
  }
  snapshotDir(id: string): string {
    return path.join(this.root, 'snapshots', id);
  }
  snapshotDescriptor(id: string): string {
    return path.join(this.snapshotDir(id), DESCRIPTOR_NAME);
  }

  private async staging(): Promise<string> {
    const dir = path.join(this.root, '.staging', randomUUID());
    await fsp.mkdir(dir, { mode: 0o700 });
    return dir;
  }

  /** Moves a fully written staging directory into place; false if the target exists. */
  private async publish(stagingDir: string, target: string): Promise<boolean> {
    await nodeFileSystem.syncDir(stagingDir);
    try {
      await fsp.rename(stagingDir, target);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST' || code === 'ENOTEMPTY') {
        await fsp.rm(stagingDir, { recursive: true, force: true });
        return false;
      }
      throw err;
    }
    await nodeFileSystem.syncDir(path.dirname(target));
    return true;
  }

  private async remove(dir: string): Promise<void> {
    const trash = path.join(this.root, '.trash', `${path.basename(dir)}-${randomUUID()}`);
    try {
      await fsp.rename(dir, trash);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    await nodeFileSystem.syncDir(path.dirname(dir));
    await fsp.rm(trash, { recursive: true, force: true });
  }

  // ---- volumes -----------------------------------------------------------------------------

  async getVolume(id: string): Promise<VolumeRecord | null> {
    if (!isWellFormedId('volume', id)) return null;
    return readJson<VolumeRecord>(path.join(this.volumeDir(id), VOLUME_META));
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    const out: VolumeRecord[] = [];
    for (const id of (await fsp.readdir(path.join(this.root, 'volumes'))).sort()) {
      const v = await this.getVolume(id);
      if (v) out.push(v);
    }
    return out;
  }

  /** Rounds a request up to whole clusters within [required, limit]. */
  private sizeFor(requiredBytes: number, limitBytes: number, cluster: number, min: number): number {
    if (requiredBytes < 0 || limitBytes < 0) {
      throw new PoolError('INVALID_ARGUMENT', 'capacity must not be negative');
    }
    if (limitBytes > 0 && requiredBytes > limitBytes) {
      throw new PoolError('INVALID_ARGUMENT', 'required bytes exceed the limit');
    }
    const want = Math.max(
      requiredBytes || (limitBytes ? Math.min(DEFAULT_CAPACITY, limitBytes) : DEFAULT_CAPACITY),
      min,
    );
    const size = Math.ceil(want / cluster) * cluster;
    if (limitBytes > 0 && size > limitBytes) {
      throw new PoolError(
        'OUT_OF_RANGE',
        `capacity rounded to whole ${cluster}-byte clusters (${size}) exceeds the limit ${limitBytes}`,
      );
    }
    return size;
  }

  async createVolume(
    req: CreateVolumeRequest,
    freeze: Freezer = offlineFreezer,
  ): Promise<VolumeRecord> {
    const id = idForName('volume', req.name);
    const params = parseParameters(req.parameters, this.opts.defaultClusterSize);
    // A source fixes the cluster size and the minimum capacity.
    let sourceChain: { dd: string; sizeBytes: number; clusterSize: number } | null = null;
    const existing = await this.getVolume(id);
    if (req.source) {
      try {
        sourceChain = await this.sourceInfo(req.source);
      } catch (err) {
        // A retry of a restore or clone succeeds even after its source was deleted.
        if (!(existing && err instanceof PoolError && err.code === 'NOT_FOUND')) throw err;
        if (req.parameters['clusterSize'] === undefined) {
          params.clusterSize = existing.parameters.clusterSize;
        }
      }
    }
    if (
      sourceChain &&
      req.parameters['clusterSize'] !== undefined &&
      params.clusterSize !== sourceChain.clusterSize
    ) {
      throw new PoolError('INVALID_ARGUMENT', 'clusterSize differs from the source');
    }
    if (sourceChain) params.clusterSize = sourceChain.clusterSize;
    const size = this.sizeFor(
      req.requiredBytes,
      req.limitBytes,
      params.clusterSize,
      sourceChain?.sizeBytes ?? 0,
    );

    if (existing) return this.sameVolume(existing, req, params, size);
    const cap = await this.capacity();
    if (size > cap.availableBytes) {
      throw new PoolError(
        'RESOURCE_EXHAUSTED',
        `volume of ${size} bytes does not fit: ${cap.availableBytes} bytes available in the pool`,
      );
    }

    const stage = await this.staging();
    try {
      if (req.source?.kind === 'volume') {
        // A clone: freeze the source's top, then stack on the frozen chain.
        const frozen = await this.staging();
        try {
          const { dd } = await this.freezeChain(req.source.id, freeze, frozen);
          await this.stackOn(dd, stage, size, params.clusterSize);
        } finally {
          await fsp.rm(frozen, { recursive: true, force: true });
        }
      } else if (sourceChain) {
        await this.stackOn(sourceChain.dd, stage, size, params.clusterSize);
      } else {
        await createDisk(stage, {
          size,
          clusterSize: params.clusterSize,
          format: params.preallocate ? 'preallocated' : 'expanded',
        });
      }
      const rec: VolumeRecord = {
        id,
        name: req.name,
        capacityBytes: size,
        parameters: params,
        source: req.source,
        createdAt: new Date().toISOString(),
      };
      await writeFileAtomic(
        nodeFileSystem,
        path.join(stage, VOLUME_META),
        JSON.stringify(rec, null, 2),
      );
      if (!(await this.publish(stage, this.volumeDir(id)))) {
        // Another request with the same name won the race.
        const other = await this.getVolume(id);
        if (!other) throw new PoolError('INTERNAL', `volume ${id} vanished while being created`);
        return this.sameVolume(other, req, params, size);
      }
      return rec;
    } catch (err) {
      await fsp.rm(stage, { recursive: true, force: true });
      throw wrap(err, `create volume ${req.name}`);
    }
  }

  private sameVolume(
    v: VolumeRecord,
    req: CreateVolumeRequest,
    params: VolumeParameters,
    size: number,
  ): VolumeRecord {
    const fits =
      v.capacityBytes >= size &&
      (req.limitBytes === 0 || v.capacityBytes <= req.limitBytes) &&
      sameParameters(v.parameters, params) &&
      sameSource(v.source, req.source);
    if (!fits) {
      throw new PoolError(
        'ALREADY_EXISTS',
        `volume "${req.name}" exists with different parameters`,
      );
    }
    return v;
  }

  private async sourceInfo(
    source: VolumeSource,
  ): Promise<{ dd: string; sizeBytes: number; clusterSize: number }> {
    if (source.kind === 'snapshot') {
      const s = await this.getSnapshot(source.id);
      if (!s) throw new PoolError('NOT_FOUND', `snapshot ${source.id} does not exist`);
      const d = await readDescriptor(nodeFileSystem, this.snapshotDescriptor(source.id));
      return {
        dd: this.snapshotDescriptor(source.id),
        sizeBytes: s.sizeBytes,
        clusterSize: d.clusterSectors * SECTOR,
      };
    }
    const v = await this.getVolume(source.id);
    if (!v) throw new PoolError('NOT_FOUND', `volume ${source.id} does not exist`);
    return {
      dd: this.volumeDescriptor(source.id),
      sizeBytes: v.capacityBytes,
      clusterSize: v.parameters.clusterSize,
    };
  }

  /**
   * Freezes the source volume's top and writes, in a staging directory, a descriptor of the
   * frozen chain with its deltas linked; returns that descriptor.
   */
  private async freezeChain(
    volumeId: string,
    freeze: Freezer,
    stage: string,
  ): Promise<{ d: Descriptor; dd: string }> {
    const srcDd = this.volumeDescriptor(volumeId);
    const frozen = await freeze(volumeId, srcDd);
    const src = await readDescriptor(nodeFileSystem, srcDd);
    const guids = chainGuids(src, srcDd, frozen);
    const d: Descriptor = {
      sizeSectors: src.sizeSectors,
      clusterSectors: src.clusterSectors,
      preallocated: false,
      images: [],
      snapshots: [],
      topGuid: frozen,
    };
    for (const g of guids) {
      const im = imageOf(src, g);
      const name = path.basename(im.file);
      const from = resolveImagePath(srcDd, im.file);
      await fsp.link(from, path.join(stage, name));
      // Frozen deltas never change again: make that visible.
      await fsp.chmod(from, 0o444);
      d.images.push({ guid: g, type: im.type, file: name });
      d.snapshots.push({
        guid: g,
        parent: src.snapshots.find((s) => s.guid === g)!.parent,
        temporary: false,
      });
    }
    // The frozen top's virtual size is the chain's size at this instant.
    const top = await PloopImage.open(path.join(stage, path.basename(imageOf(src, frozen).file)), {
      readOnly: true,
    });
    d.sizeSectors = top.header.sizeSectors;
    await top.close();
    const dd = path.join(stage, DESCRIPTOR_NAME);
    await writeDescriptor(nodeFileSystem, dd, d);
    return { d, dd };
  }

  /** Links the chain of `srcDd` into `stage` and stacks a new empty top of `size` bytes. */
  private async stackOn(
    srcDd: string,
    stage: string,
    size: number,
    cluster: number,
  ): Promise<void> {
    const src = await readDescriptor(nodeFileSystem, srcDd);
    const d: Descriptor = {
      sizeSectors: size / SECTOR,
      clusterSectors: cluster / SECTOR,
      preallocated: false,
      images: [],
      snapshots: [],
      topGuid: TOP_GUID,
    };
    let version: 1 | 2 = 2;
    for (const g of chainGuids(src, srcDd)) {
      const im = imageOf(src, g);
      const name = path.basename(im.file);
      await fsp.link(resolveImagePath(srcDd, im.file), path.join(stage, name));
      d.images.push({ guid: g, type: im.type, file: name });
      d.snapshots.push({
        guid: g,
        parent: src.snapshots.find((s) => s.guid === g)!.parent,
        temporary: false,
      });
      if (im.type === 'Compressed') {
        const img = await PloopImage.open(path.join(stage, name), { readOnly: true });
        version = img.version;
        await img.close();
      }
    }
    const base = d.images.find(
      (i) => d.snapshots.find((s) => s.guid === i.guid)!.parent === NONE_GUID,
    )!;
    const topName = `${path.basename(base.file)}.${newGuid()}`;
    await PloopImage.create(path.join(stage, topName), { size, clusterSize: cluster, version });
    d.images.push({ guid: TOP_GUID, type: 'Compressed', file: topName });
    d.snapshots.push({ guid: TOP_GUID, parent: src.topGuid, temporary: false });
    await writeDescriptor(nodeFileSystem, path.join(stage, DESCRIPTOR_NAME), d);
  }

  /** Deletes a volume; unknown IDs are fine (idempotent). Snapshots and clones keep their data. */
  async deleteVolume(id: string): Promise<void> {
    if (!isWellFormedId('volume', id)) return;
    await this.remove(this.volumeDir(id));
  }

  /** Grows a volume offline and records the new capacity. */
  async expandVolume(id: string, requiredBytes: number, limitBytes = 0): Promise<VolumeRecord> {
    const v = await this.getVolume(id);
    if (!v) throw new PoolError('NOT_FOUND', `volume ${id} does not exist`);
    const size = this.sizeFor(requiredBytes, limitBytes, v.parameters.clusterSize, v.capacityBytes);
    if (size === v.capacityBytes) return v;
    try {
      await growDisk(this.volumeDescriptor(id), size);
    } catch (err) {
      throw wrap(err, `expand volume ${id}`);
    }
    return this.recordCapacity(v, size);
  }

  /** Stores a new capacity in volume.json (after an online or offline grow). */
  async recordCapacity(v: VolumeRecord, size: number): Promise<VolumeRecord> {
    const rec = { ...v, capacityBytes: size };
    await writeFileAtomic(
      nodeFileSystem,
      path.join(this.volumeDir(v.id), VOLUME_META),
      JSON.stringify(rec, null, 2),
    );
    return rec;
  }

  // ---- snapshots ---------------------------------------------------------------------------

  async getSnapshot(id: string): Promise<SnapshotRecord | null> {
    if (!isWellFormedId('snapshot', id)) return null;
    return readJson<SnapshotRecord>(path.join(this.snapshotDir(id), SNAPSHOT_META));
  }

  async listSnapshots(): Promise<SnapshotRecord[]> {
    const out: SnapshotRecord[] = [];
    for (const id of (await fsp.readdir(path.join(this.root, 'snapshots'))).sort()) {
      const s = await this.getSnapshot(id);
      if (s) out.push(s);
    }
    return out;
  }

  async createSnapshot(
    req: { name: string; sourceVolumeId: string },
    freeze: Freezer = offlineFreezer,
  ): Promise<SnapshotRecord> {
    const id = idForName('snapshot', req.name);
    const existing = await this.getSnapshot(id);
    if (existing) {
      if (existing.sourceVolumeId !== req.sourceVolumeId) {
        throw new PoolError('ALREADY_EXISTS', `snapshot "${req.name}" exists for another volume`);
      }
      return existing;
    }
    const v = await this.getVolume(req.sourceVolumeId);
    if (!v) throw new PoolError('NOT_FOUND', `volume ${req.sourceVolumeId} does not exist`);
    const stage = await this.staging();
    try {
      const { d } = await this.freezeChain(v.id, freeze, stage);
      const rec: SnapshotRecord = {
        id,
        name: req.name,
        sourceVolumeId: v.id,
        sizeBytes: d.sizeSectors * SECTOR,
        createdAt: new Date().toISOString(),
      };
      await writeFileAtomic(
        nodeFileSystem,
        path.join(stage, SNAPSHOT_META),
        JSON.stringify(rec, null, 2),
      );
      if (!(await this.publish(stage, this.snapshotDir(id)))) {
        const other = await this.getSnapshot(id);
        if (!other || other.sourceVolumeId !== v.id) {
          throw new PoolError('ALREADY_EXISTS', `snapshot "${req.name}" exists for another volume`);
        }
        return other;
      }
      return rec;
    } catch (err) {
      await fsp.rm(stage, { recursive: true, force: true });
      throw wrap(err, `snapshot ${req.name}`);
    }
  }

  /** Deletes a snapshot at once; deltas still used by volumes stay through their links. */
  async deleteSnapshot(id: string): Promise<void> {
    if (!isWellFormedId('snapshot', id)) return;
    await this.remove(this.snapshotDir(id));
  }

  // ---- capacity ----------------------------------------------------------------------------

  async capacity(): Promise<PoolCapacity> {
    const st = await fsp.statfs(this.root);
    const totalBytes = st.blocks * st.bsize;
    const freeBytes = st.bavail * st.bsize;
    let provisionedBytes = 0;
    for (const v of await this.listVolumes()) provisionedBytes += v.capacityBytes;
    const ratio = this.opts.overProvisioning;
    const availableBytes = Math.max(
      0,
      Math.floor(Math.min(totalBytes * ratio - provisionedBytes, freeBytes * ratio)),
    );
    return { totalBytes, freeBytes, provisionedBytes, availableBytes };
  }
}
