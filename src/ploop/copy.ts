/**
 * Bulk copying shared by merge, import, export and flatten.
 *
 * Data moves in pieces of at most PIECE_BYTES through a small ring of buffers: the read of the
 * next piece runs while the current one is written, and writes happen one at a time in order,
 * so new clusters are appended in virtual order and output files are written front to back.
 * Small buffers stay in the CPU cache between the read and the write: measured, 256 KiB pieces
 * copied clearly faster than whole 1 MiB clusters, and 4 MiB pieces slower still. Merge reads
 * up to READ_BYTES at once and writes them as pieces issued together (see `writePieces`).
 *
 * Durability is started behind the copy (see `SYNC_BEHIND_BYTES`): the destination is synced
 * while the next pieces are copied, instead of stopping the copy for each sync or leaving all
 * the write-back to one sync at the end. Crash order is kept by the destination (PloopImage
 * writes a BAT entry only after a sync that began once the cluster it points at was written).
 */
import type { RandomAccessFile } from './io.js';
import { settleAll } from './settle.js';

export type Progress = (done: number, total: number) => void;

/** Largest piece written in one call. */
export const PIECE_BYTES = 256 << 10;

/** Largest read of a merge: a whole 1 MiB cluster in one call (written with `writePieces`). */
export const READ_BYTES = 1 << 20;

/**
 * Writes `data` at `pos` as pieces of at most PIECE_BYTES, all issued at once. Every file call
 * costs a hand-off to a worker thread and back, which here is a good part of the time of a
 * 256 KiB write: issued together, the hand-offs overlap. Larger single writes would avoid them
 * but measured much slower (the page cache then takes large blocks of memory at a time). Every
 * piece has settled when this returns or throws.
 */
export async function writePieces(
  file: RandomAccessFile,
  data: Uint8Array,
  pos: number,
): Promise<void> {
  const writes: Promise<void>[] = [];
  for (let off = 0; off < data.length; off += PIECE_BYTES) {
    writes.push(file.write(data.subarray(off, off + PIECE_BYTES), pos + off));
  }
  await settleAll(writes);
}

/** After this many bytes written, a sync of the destination is started in the background. */
export const SYNC_BEHIND_BYTES = 64 << 20;

/**
 * Streams `count` pieces: `read(i, buf)` fills a buffer of `size` bytes (it may use only a
 * prefix and returns the part it filled) and runs up to `ahead` pieces in front of
 * `write(i, data)`, which is called in order, one at a time. A buffer is reused only after the
 * write of its piece settled. Every started read has settled when this returns or throws.
 */
export async function streamPieces(
  count: number,
  size: number,
  read: (i: number, buf: Buffer) => Promise<Buffer>,
  write: (i: number, data: Buffer) => Promise<void>,
  ahead = 1,
): Promise<void> {
  const ring = Math.max(1, Math.min(ahead, count - 1)) + 1;
  const bufs = Array.from({ length: ring }, () => Buffer.alloc(size));
  const reads: Promise<Buffer>[] = new Array<Promise<Buffer>>(ring);
  const start = (i: number) => {
    const p = read(i, bufs[i % ring]!);
    // Rejections are observed by the loop below (or when settling after a failure).
    p.catch(() => undefined);
    reads[i % ring] = p;
  };
  let launched = 0;
  while (launched < Math.min(ring - 1, count)) start(launched++);
  try {
    for (let i = 0; i < count; i++) {
      if (launched < count && launched < i + ring) start(launched++);
      const data = await reads[i % ring]!;
      await write(i, data);
    }
  } finally {
    await Promise.allSettled(reads.filter((p) => p !== undefined));
  }
}

/**
 * Starts a sync in the background every `every` bytes, with at most `depth` in flight:
 * `wrote(n)` after each write (waits only when a sync is due and `depth` are still running),
 * `drain()` at the end to wait for all of them (and surface the first error).
 *
 * The first intervals are shorter (an eighth of `every`, doubling): nothing else writes the
 * data back (the kernel waits for far more dirty data), so the disk would idle until the first
 * sync. Two in flight keep it busy later: the last phase of a sync (the file's metadata, the
 * cache flush) gives the disk no data to write, while a second sync already has the next batch.
 */
export class SyncBehind {
  private bytes = 0;
  private readonly pending: Promise<void>[] = [];
  private readonly every: number;
  /** Bytes after which the next sync is due. */
  private due: number;

  constructor(
    private readonly start: () => Promise<void>,
    every?: number,
    private readonly depth = 2,
  ) {
    this.every = every ?? SYNC_BEHIND_BYTES;
    this.due = Math.max(1, this.every / 8);
  }

  async wrote(n: number): Promise<void> {
    this.bytes += n;
    if (this.bytes < this.due) return;
    this.bytes = 0;
    this.due = Math.min(this.every, this.due * 2);
    while (this.pending.length >= this.depth) await this.pending.shift();
    const p = this.start();
    p.catch(() => undefined);
    this.pending.push(p);
  }

  async drain(): Promise<void> {
    await settleAll(this.pending.splice(0));
  }
}
