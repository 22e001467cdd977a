/** Usage of a volume: bytes and inodes of a mounted file system, the size of a block device. */
import { promises as fsp } from 'node:fs';
import { HostError } from './errors.js';
import { blockdevSize } from './device.js';

export interface FsUsage {
  totalBytes: number;
  /** What an unprivileged writer can still use. */
  availableBytes: number;
  usedBytes: number;
  totalInodes: number;
  freeInodes: number;
  usedInodes: number;
}

const safe = (n: bigint): number =>
  Number(n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : n);

/** statfs(2) of the file system mounted at (or containing) `p`. */
export async function fsUsage(p: string): Promise<FsUsage> {
  let st;
  try {
    st = await fsp.statfs(p, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new HostError('NOT_FOUND', `${p} does not exist`);
    }
    throw err;
  }
  const bsize = st.bsize;
  const used = st.blocks > st.bfree ? st.blocks - st.bfree : 0n;
  return {
    totalBytes: safe(st.blocks * bsize),
    availableBytes: safe(st.bavail * bsize),
    usedBytes: safe(used * bsize),
    totalInodes: safe(st.files),
    freeInodes: safe(st.ffree),
    usedInodes: safe(st.files > st.ffree ? st.files - st.ffree : 0n),
  };
}

/** The size of a block volume: `blockdev --getsize64` of the device (or a node bound onto a file). */
export async function blockUsage(p: string): Promise<{ totalBytes: number }> {
  return { totalBytes: await blockdevSize(p) };
}
