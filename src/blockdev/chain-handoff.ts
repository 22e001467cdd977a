/**
 * Handing a chain to the native engine and taking it back. The library opens and validates the
 * chain (repairing a top left dirty by a crash, setting the in-use flag); the engine gets file
 * descriptors, geometry and BATs and from then on owns the top. Taking it back re-reads the
 * top's BAT from disk (the engine flushed it) and closes the image clean.
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import {
  Chain,
  PloopImage,
  RawImage,
  nodeFileSystem,
  resolveTarget,
  readDescriptor,
  chainGuids,
  imageOf,
  resolveImagePath,
} from '../ploop/index.js';
import type { NativeDelta } from './native.js';

export interface HandedChain {
  deltas: NativeDelta[];
  sizeBytes: number;
  /** Our descriptors, to close once the engine has duplicated them. */
  close(): Promise<void>;
}

/** Descriptors and geometry of every delta; the top is opened read-write when `topWritable`. */
async function toNative(chain: Chain, topWritable: boolean): Promise<HandedChain> {
  const handles: fsp.FileHandle[] = [];
  const deltas: NativeDelta[] = [];
  try {
    for (const d of chain.deltas) {
      const writable = d === chain.top && topWritable;
      const fh = await fsp.open(d.path, writable ? fsc.O_RDWR : fsc.O_RDONLY);
      handles.push(fh);
      if (d instanceof RawImage) {
        deltas.push({ fd: fh.fd, version: 0, clusterSize: chain.clusterSize, writable });
      } else {
        deltas.push({
          fd: fh.fd,
          version: d.version,
          clusterSize: d.clusterSize,
          dataOff: d.dataOffBytes,
          bat: new Uint32Array(d.bat),
          writable,
        });
      }
    }
  } catch (err) {
    for (const h of handles) await h.close();
    throw err;
  }
  return {
    deltas,
    sizeBytes: chain.virtualSize,
    async close() {
      for (const h of handles) await h.close();
    },
  };
}

/** Drops the library's handles without writing anything (the engine owns the top now). */
async function abandon(chain: Chain): Promise<void> {
  for (const d of chain.deltas) {
    if (d instanceof PloopImage) await d.abandon();
    else await d.file.close();
  }
}

/**
 * Opens a disk for attaching: a top left dirty by a crash is repaired, then marked in use.
 */
export async function openForAttach(target: string): Promise<HandedChain> {
  const chain = await Chain.open(target, { readOnly: false });
  let handed: HandedChain;
  try {
    handed = await toNative(chain, true);
  } catch (err) {
    await chain.close(); // clears the in-use flag again: nothing was written
    throw err;
  }
  await abandon(chain);
  return handed;
}

/** Top image file of a disk (a descriptor's top, or the image itself). */
export async function topImagePath(target: string): Promise<{ path: string; raw: boolean }> {
  const t = await resolveTarget(target);
  if (t.kind === 'image') return { path: t.path, raw: false };
  const d = await readDescriptor(nodeFileSystem, t.path);
  const guids = chainGuids(d, t.path);
  const top = imageOf(d, guids[guids.length - 1]!);
  return { path: resolveImagePath(t.path, top.file), raw: top.type === 'Plain' };
}

/**
 * Opens a disk whose top is in use by a device (after a blockd restart or a chain change):
 * no repair, no in-use check; lower deltas are validated as usual.
 */
export async function openLive(target: string): Promise<HandedChain> {
  // Every delta is read and validated read-only (the in-use flag is expected on the top);
  // the engine then gets the top read-write.
  const chain = await Chain.open(target, { readOnly: true });
  try {
    return await toNative(chain, true);
  } finally {
    await abandon(chain);
  }
}

/** After the engine let go of the top (flushed): the top image is closed clean. */
export async function markClean(target: string): Promise<void> {
  const top = await topImagePath(target);
  if (!top.raw) await closeClean(top.path);
}

/** Writes a delta's header clean from what is on disk (its BAT is complete once flushed). */
export async function closeClean(file: string): Promise<void> {
  const img = await PloopImage.openForRepair(file, nodeFileSystem, false);
  await img.close();
}

/** Marks an image file in use (a new top taking over from a frozen one). */
export async function markInUse(file: string): Promise<void> {
  const img = await PloopImage.openForRepair(file, nodeFileSystem, false);
  await img.markInUse();
  await img.abandon();
}
