/**
 * Merging a delta into its parent (ploop-format.md §3, snapshot-merge): every cluster the child
 * maps is copied into the parent, the descriptor then names the parent's file under the child's
 * GUID (ploop semantics), and the child's file is deleted.
 *
 * Crash order: the parent is marked `<Temporary/>` (durable) before its data changes, so an
 * interrupted merge is simply redone from the child; the parent's data and BAT are durable
 * before the descriptor switch; the child is not touched until the switch is durable.
 */
import * as path from 'node:path';
import { BusyError } from './errors.js';
import { FileSystem, nodeFileSystem, publishAfter } from './io.js';
import {
  Descriptor,
  childrenOf,
  imageOf,
  resolveImagePath,
  serializeDescriptor,
  validateDescriptor,
  writeDescriptor,
} from './descriptor.js';
import { PloopImage, readZeroFilled } from './image.js';
import { Delta, RawImage, openDelta } from './chain.js';
import { growImage } from './grow.js';
import { settleAll } from './settle.js';
import { Progress, READ_BYTES, SyncBehind, streamPieces, writePieces } from './copy.js';

export interface MergeOptions {
  fs?: FileSystem;
  progress?: Progress;
  /** Bytes copied between background syncs (default SYNC_BEHIND_BYTES). */
  syncEvery?: number;
}

/**
 * Merges the single child of `parentGuid` into it and rewrites the descriptor: the child's GUID
 * survives on the parent's file. Idempotent, so it can be re-run after a crash. Returns the
 * descriptor as stored.
 */
export async function mergeChildInto(
  ddPath: string,
  d: Descriptor,
  parentGuid: string,
  opts: MergeOptions,
): Promise<Descriptor> {
  const fs = opts.fs ?? nodeFileSystem;
  const kids = childrenOf(d, parentGuid);
  if (kids.length !== 1) throw new BusyError(`snapshot ${parentGuid} has ${kids.length} children`);
  const childGuid = kids[0]!.guid;
  const parentSnap = d.snapshots.find((s) => s.guid === parentGuid)!;
  const parentIm = imageOf(d, parentGuid);
  const childIm = imageOf(d, childGuid);
  const parentFile = resolveImagePath(ddPath, parentIm.file);
  const childFile = resolveImagePath(ddPath, childIm.file);

  // The child is only read: it is opened while the mark is being stored.
  const [opened, marked] = await Promise.allSettled([
    openDelta(childFile, 'Compressed', fs, true, false),
    markTemporary(fs, ddPath, d, parentGuid),
  ]);
  if (opened.status === 'rejected' || marked.status === 'rejected') {
    if (opened.status === 'fulfilled') await opened.value.close();
    throw opened.status === 'rejected' ? opened.reason : (marked as PromiseRejectedResult).reason;
  }
  const child = opened.value as PloopImage;

  let parent: Delta | null = null;
  try {
    parent = await openDelta(parentFile, parentIm.type, fs, false, true);
    const behind = await copyClusters(child, parent, opts);
    // The child's GUID now names the parent's file, and inherits its parent.
    childIm.file = parentIm.file;
    childIm.type = parentIm.type;
    d.snapshots.find((s) => s.guid === childGuid)!.parent = parentSnap.parent;
    d.images = d.images.filter((i) => i.guid !== parentGuid);
    d.snapshots = d.snapshots.filter((s) => s.guid !== parentGuid);
    validateDescriptor(d, ddPath);
    // The new descriptor is written and synced while the parent's last writes become durable;
    // it replaces the old one only after both.
    await publishAfter(fs, ddPath, serializeDescriptor(d), makeDurable(parent, behind));
  } catch (err) {
    await Promise.allSettled([parent ? abandon(parent) : null, child.close()]);
    throw err;
  }

  // The switch is durable: the child is garbage. Deleting it (slow where the file system
  // discards freed blocks) overlaps with marking the parent clean; an image left in use by a
  // crash here is repaired on its next read-write open, its data and BAT being durable.
  const removeChild = async () => {
    try {
      await child.close();
    } finally {
      await unlinkQuietly(fs, childFile);
    }
  };
  await settleAll([parent.close(), removeChild()]);
  return d;
}

/** Marks the parent `<Temporary/>` durably: a crash from then on finishes the merge next time. */
async function markTemporary(
  fs: FileSystem,
  ddPath: string,
  d: Descriptor,
  parentGuid: string,
): Promise<void> {
  const snap = d.snapshots.find((s) => s.guid === parentGuid)!;
  if (snap.temporary) return;
  snap.temporary = true;
  await writeDescriptor(fs, ddPath, d);
}

/**
 * Copies every cluster the child maps into the parent in virtual order: a cluster the parent
 * maps is overwritten in place, others are appended, each entry set once its cluster is whole.
 * A cluster (up to READ_BYTES) is read in one call and written as pieces issued together.
 * Syncs run behind the copy; the ones still running are returned with it.
 */
async function copyClusters(
  child: PloopImage,
  parent: Delta,
  opts: MergeOptions,
): Promise<SyncBehind> {
  if (parent instanceof PloopImage && child.virtualSize > parent.virtualSize) {
    // The parent's clusters past its size are visible in the chain: keep them.
    await growImage(parent, child.virtualSize, { keepBeyondSize: true });
  } else if (parent instanceof RawImage && child.virtualSize > parent.size) {
    // A raw parent must grow too, or the merged disk ends at its last written cluster.
    await parent.file.truncate(child.virtualSize);
  }
  const cluster = child.clusterSize;
  const unit = Math.min(cluster, READ_BYTES);
  const parts = cluster / unit;
  const mapped: number[] = [];
  for (let vc = 0; vc < child.bat.length; vc++) if (child.map(vc) >= 0) mapped.push(vc);
  const behind = new SyncBehind(
    () => (parent instanceof PloopImage ? parent.flushBehind() : parent.file.sync()),
    opts.syncEvery,
  );
  let host = -1;
  let fresh = false;
  await streamPieces(
    mapped.length * parts,
    unit,
    async (i, buf) => {
      const vc = mapped[Math.floor(i / parts)]!;
      await readZeroFilled(child.file, buf, child.map(vc) + (i % parts) * unit);
      return buf;
    },
    async (i, data) => {
      const n = Math.floor(i / parts);
      const part = i % parts;
      const vc = mapped[n]!;
      if (part === 0 && parent instanceof PloopImage) {
        host = parent.map(vc);
        fresh = host < 0;
        if (fresh) host = parent.reserveCluster();
      } else if (part === 0) {
        host = vc * cluster;
      }
      await writePieces(parent.file, data, host + part * unit);
      if (part === parts - 1) {
        if (fresh && parent instanceof PloopImage) parent.setEntry(vc, host);
        opts.progress?.(n + 1, mapped.length);
      }
      // After the entry: a sync started now covers its cluster.
      await behind.wrote(data.length);
    },
  );
  return behind;
}

/** Everything written to the parent, data first, then its BAT entries, made durable. */
async function makeDurable(parent: Delta, behind: SyncBehind): Promise<void> {
  await behind.drain();
  if (parent instanceof PloopImage) await parent.flush();
  else await parent.file.sync();
}

async function abandon(d: Delta): Promise<void> {
  if (d instanceof PloopImage) await d.abandon();
  else await d.close();
}

/** Unlinks a file and syncs its directory; a file already gone is fine. */
export async function unlinkQuietly(fs: FileSystem, file: string): Promise<void> {
  try {
    await fs.unlink(file);
    await fs.syncDir(path.dirname(file));
  } catch {
    // Already gone: an earlier attempt got this far.
  }
}
