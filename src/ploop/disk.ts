/**
 * Operations on a ploop disk directory (DiskDescriptor.xml + deltas): create, snapshot, list,
 * delete, merge, switch, grow. Every descriptor change holds ploop's `.lck` lock and is stored
 * by rename; a merge marks its target `<Temporary/>` first so that an interrupted merge is
 * finished by the next operation on the disk (as ploop does).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { InvalidArgumentError, NotFoundError } from './errors.js';
import { FormatVersion, SECTOR, virtualSize } from './header.js';
import { FileSystem, nodeFileSystem, publishAfter } from './io.js';
import {
  DESCRIPTOR_NAME,
  Descriptor,
  MAX_CHAIN,
  NONE_GUID,
  TOP_GUID,
  childrenOf,
  imageOf,
  isDescriptorPath,
  isGuid,
  lockPath,
  newGuid,
  readDescriptor,
  resolveImagePath,
  serializeDescriptor,
  validateDescriptor,
  writeDescriptor,
} from './descriptor.js';
import { CreateImageOptions, PloopImage } from './image.js';
import { RawImage, openDelta } from './chain.js';
import { growImage } from './grow.js';
import { Progress } from './copy.js';
import { withLock } from './lock.js';
import { repairImage } from './check.js';
import { mergeChildInto, unlinkQuietly } from './merge.js';

export const BASE_IMAGE_NAME = 'root.hds';

export interface DiskOptions {
  fs?: FileSystem;
  progress?: Progress;
  /** How long to wait for another process's lock on the descriptor. */
  lockTimeoutMs?: number;
  /** The top is served by a paused device: it is in use, not damaged (snapshot only). */
  liveTop?: boolean;
  /** Bytes a merge copies between background syncs (default SYNC_BEHIND_BYTES). */
  syncEvery?: number;
}

function fsOf(o: DiskOptions): FileSystem {
  return o.fs ?? nodeFileSystem;
}

/** The descriptor path for a disk directory or a path ending in DiskDescriptor.xml. */
export function descriptorPathFor(target: string): string {
  const abs = path.resolve(target);
  return isDescriptorPath(abs) ? abs : path.join(abs, DESCRIPTOR_NAME);
}

/** Creates a disk directory with a descriptor and a base image `root.hds`. */
export async function createDisk(
  target: string,
  opts: Omit<CreateImageOptions, 'fs'> & DiskOptions,
): Promise<{ descriptorPath: string; imagePath: string }> {
  const fs = fsOf(opts);
  const dd = descriptorPathFor(target);
  const dir = path.dirname(dd);
  await fsp.mkdir(dir, { recursive: true });
  if (await fs.exists(dd)) throw new InvalidArgumentError(`${dd} already exists`);
  const imagePath = path.join(dir, BASE_IMAGE_NAME);
  const format = opts.format ?? 'expanded';
  const cluster = opts.clusterSize ?? 1 << 20;
  const h = await PloopImage.create(imagePath, { ...opts, fs });
  const sizeSectors = h ? h.sizeSectors : Math.ceil(opts.size / cluster) * (cluster / SECTOR);
  await fs.syncDir(dir);
  await writeDescriptor(fs, dd, {
    sizeSectors,
    clusterSectors: cluster / SECTOR,
    preallocated: format === 'preallocated',
    images: [
      { guid: TOP_GUID, type: format === 'raw' ? 'Plain' : 'Compressed', file: BASE_IMAGE_NAME },
    ],
    snapshots: [{ guid: TOP_GUID, parent: NONE_GUID, temporary: false }],
    topGuid: TOP_GUID,
  });
  return { descriptorPath: dd, imagePath };
}

/** Runs `fn` on the descriptor under its lock, after finishing merges a crash interrupted. */
async function mutate<T>(
  ddPath: string,
  opts: DiskOptions,
  fn: (d: Descriptor) => Promise<T>,
): Promise<T> {
  const fs = fsOf(opts);
  const missing = () => new NotFoundError(`${ddPath}: no such descriptor`);
  return withLock(
    lockPath(ddPath),
    async () => {
      let d = await readDescriptor(fs, ddPath).catch((err: unknown) => {
        throw err instanceof NotFoundError ? missing() : err;
      });
      // Pending merges never run under a live top: they may involve it.
      if (!opts.liveTop) d = await finishPending(ddPath, d, opts);
      return fn(d);
    },
    {
      timeoutMs: opts.lockTimeoutMs ?? 30_000,
      // No lock file is left next to a descriptor that does not exist.
      beforeCreate: async () => {
        if (!(await fs.exists(ddPath))) throw missing();
      },
    },
  );
}

/** Merges every `<Temporary/>` snapshot that has a single child (an interrupted delete). */
async function finishPending(
  ddPath: string,
  d: Descriptor,
  opts: DiskOptions,
): Promise<Descriptor> {
  for (;;) {
    const pending = d.snapshots.find((s) => s.temporary && childrenOf(d, s.guid).length === 1);
    if (!pending) return d;
    d = await mergeChildInto(ddPath, d, pending.guid, opts);
  }
}

export interface SnapshotInfo {
  guid: string;
  parent: string;
  file: string;
  current: boolean;
  temporary: boolean;
}

export async function listSnapshots(
  ddPath: string,
  opts: DiskOptions = {},
): Promise<SnapshotInfo[]> {
  const d = await readDescriptor(fsOf(opts), ddPath);
  return d.snapshots.map((s) => ({
    guid: s.guid,
    parent: s.parent,
    file: resolveImagePath(ddPath, imageOf(d, s.guid).file),
    current: s.guid === d.topGuid,
    temporary: s.temporary,
  }));
}

/** Name for a new delta file next to the base, as ploop names them: `<base>.{uuid}`. */
function newDeltaName(d: Descriptor): string {
  const base = d.snapshots.find((s) => s.parent === NONE_GUID)!;
  return `${path.basename(imageOf(d, base.guid).file)}.${newGuid()}`;
}

/**
 * Takes a snapshot: the current top is frozen under a new GUID (returned) and an empty delta
 * becomes the top. O(1) in the amount of data.
 */
export async function snapshot(ddPath: string, opts: DiskOptions = {}): Promise<string> {
  const fs = fsOf(opts);
  return mutate(ddPath, opts, async (d) => {
    if (d.images.length >= MAX_CHAIN) {
      throw new InvalidArgumentError(`the chain already has ${MAX_CHAIN} images`);
    }
    const topIm = imageOf(d, d.topGuid);
    const topFile = resolveImagePath(ddPath, topIm.file);
    const topType = topIm.type;
    const guid = newGuid();
    const name = newDeltaName(d);
    const dir = path.dirname(ddPath);
    const file = path.join(dir, name);
    for (const im of d.images) if (im.guid === d.topGuid) im.guid = guid;
    for (const s of d.snapshots) {
      if (s.guid === d.topGuid) s.guid = guid;
      if (s.parent === d.topGuid) s.parent = guid;
    }
    d.images.push({ guid: TOP_GUID, type: 'Compressed', file: name });
    d.snapshots.push({ guid: TOP_GUID, parent: guid, temporary: false });
    d.topGuid = TOP_GUID;
    validateDescriptor(d, ddPath);
    // Size and version of the new delta are those of the current top.
    const geometry = async (): Promise<{ size: number; version: FormatVersion }> => {
      if (topType !== 'Compressed') return { size: d.sizeSectors * SECTOR, version: 2 };
      // A top left dirty by a crash is repaired before it is frozen; a live top (served by a
      // device that is paused and flushed) is in use by design and is left as it is. Only the
      // header is read: the BAT is not needed, so the cost does not grow with the disk.
      let top = await PloopImage.readHeader(topFile, fs);
      if (!opts.liveTop && top.inUse !== 0) {
        await repairImage(topFile, fs);
        top = await PloopImage.readHeader(topFile, fs);
      }
      return { size: virtualSize(top), version: top.version };
    };
    // The empty delta and the new descriptor (as DiskDescriptor.xml.tmp) are written and
    // synced at the same time; then the rename publishes both and one directory sync makes it
    // durable. No directory sync is needed between the delta's creation and the rename: both
    // are in this directory and journaling file systems commit name changes in order (ploop
    // itself renames its .tmp without one), so the new descriptor never survives a crash
    // without the delta it names, and the delta's contents (like a repair of the old top)
    // were synced before the rename.
    const created = PloopImage.createFor(file, d.clusterSectors * SECTOR, geometry(), fs);
    try {
      await publishAfter(fs, ddPath, serializeDescriptor(d), created);
    } catch (err) {
      if (
        await created.then(
          () => true,
          () => false,
        )
      )
        await unlinkQuietly(fs, file);
      throw err;
    }
    return guid;
  });
}

/** Merges the top delta into its parent; the top keeps its GUID and now uses the parent's file. */
export async function mergeTop(ddPath: string, opts: DiskOptions = {}): Promise<void> {
  await mutate(ddPath, opts, async (d) => {
    const top = d.snapshots.find((s) => s.guid === d.topGuid)!;
    if (top.parent === NONE_GUID)
      throw new InvalidArgumentError('the disk has no snapshot to merge');
    await mergeChildInto(ddPath, d, top.parent, opts);
  });
}

/**
 * Deletes snapshot `guid` with ploop's semantics: a leaf is dropped; with one child, the child
 * is merged into it and the child's GUID survives; with more, it is marked and merged later.
 */
export async function deleteSnapshot(
  ddPath: string,
  guid: string,
  opts: DiskOptions = {},
): Promise<{ deferred: boolean }> {
  const fs = fsOf(opts);
  const g = guid.toLowerCase();
  if (!isGuid(g)) throw new InvalidArgumentError(`invalid snapshot GUID "${guid}"`);
  return mutate(ddPath, opts, async (d) => {
    const snap = d.snapshots.find((s) => s.guid === g);
    if (!snap) throw new NotFoundError(`snapshot ${g} does not exist`);
    if (g === d.topGuid) throw new InvalidArgumentError('the current top cannot be deleted');
    const kids = childrenOf(d, g);
    if (kids.length === 0) {
      if (snap.parent === NONE_GUID) throw new InvalidArgumentError('the base cannot be deleted');
      const file = resolveImagePath(ddPath, imageOf(d, g).file);
      d.images = d.images.filter((i) => i.guid !== g);
      d.snapshots = d.snapshots.filter((s) => s.guid !== g);
      await writeDescriptor(fs, ddPath, d);
      await unlinkQuietly(fs, file);
      return { deferred: false };
    }
    if (kids.length > 1) {
      snap.temporary = true;
      await writeDescriptor(fs, ddPath, d);
      return { deferred: true };
    }
    await mergeChildInto(ddPath, d, g, opts);
    return { deferred: false };
  });
}

/**
 * Makes an empty top over snapshot `guid`; the current top's data is discarded (ploop
 * snapshot-switch).
 */
export async function switchSnapshot(
  ddPath: string,
  guid: string,
  opts: DiskOptions = {},
): Promise<void> {
  const fs = fsOf(opts);
  const g = guid.toLowerCase();
  await mutate(ddPath, opts, async (d) => {
    if (!d.snapshots.some((s) => s.guid === g))
      throw new NotFoundError(`snapshot ${g} does not exist`);
    if (g === d.topGuid) throw new InvalidArgumentError('already the current top');
    const oldTop = imageOf(d, d.topGuid);
    const oldFile = resolveImagePath(ddPath, oldTop.file);
    const snapIm = imageOf(d, g);
    const snapFile = resolveImagePath(ddPath, snapIm.file);
    const below =
      snapIm.type === 'Compressed' ? await PloopImage.open(snapFile, { readOnly: true, fs }) : null;
    const version = below ? below.version : 2;
    await below?.close();
    const name = newDeltaName(d);
    const file = path.join(path.dirname(ddPath), name);
    await PloopImage.create(file, {
      size: d.sizeSectors * SECTOR,
      clusterSize: d.clusterSectors * SECTOR,
      version,
      fs,
    });
    await fs.syncDir(path.dirname(file));
    d.images = d.images.filter((i) => i.guid !== d.topGuid);
    d.snapshots = d.snapshots.filter((s) => s.guid !== d.topGuid);
    d.images.push({ guid: TOP_GUID, type: 'Compressed', file: name });
    d.snapshots.push({ guid: TOP_GUID, parent: g, temporary: false });
    await writeDescriptor(fs, ddPath, d);
    await unlinkQuietly(fs, oldFile);
  });
}

/** Grows the disk's top delta and records the new size in the descriptor. */
export async function growDisk(
  ddPath: string,
  size: number,
  opts: DiskOptions = {},
): Promise<number> {
  const fs = fsOf(opts);
  return mutate(ddPath, opts, async (d) => {
    const topIm = imageOf(d, d.topGuid);
    const file = resolveImagePath(ddPath, topIm.file);
    let sectors: number;
    if (topIm.type === 'Plain') {
      const raw = await RawImage.open(file, fs, false);
      const cluster = d.clusterSectors * SECTOR;
      const bytes = Math.ceil(size / cluster) * cluster;
      if (bytes < raw.size) throw new InvalidArgumentError(`cannot shrink ${file}`);
      await raw.file.truncate(bytes);
      await raw.close();
      sectors = bytes / SECTOR;
    } else {
      const img = (await openDelta(file, 'Compressed', fs, false, true)) as PloopImage;
      try {
        await growImage(img, size);
      } catch (err) {
        await img.close();
        throw err;
      }
      sectors = img.header.sizeSectors;
      await img.close();
    }
    d.sizeSectors = Math.max(d.sizeSectors, sectors);
    await writeDescriptor(fs, ddPath, d);
    return d.sizeSectors * SECTOR;
  });
}
