/**
 * Bulk copying shared by merge, import, export and flatten.
 *
 * Data moves in pieces of at most PIECE_BYTES through a small ring of buffers: the read of the
 * next piece runs while the current one is written, and writes happen one at a time in order,
 * so new clusters are appended in virtual order and output files are written front to back.
 * Small buffers stay in the CPU cache between the read and the write: measured, 256 KiB pieces
 * copied clearly faster than whole 1 MiB clusters, and 4 MiB pieces slower still.
 *
 * Durability is started behind the copy (see `SYNC_BEHIND_BYTES`): the destination is synced
 * while the next pieces are copied, instead of stopping the copy for each sync or leaving all
 * the write-back to one sync at the end. Crash order is kept by the destination (PloopImage
 * writes a BAT entry only after a sync that began once the cluster it points at was written).
 */

export type Progress = (done: number, total: number) => void;

/** Largest piece read and written in one call. */
export const PIECE_BYTES = 256 << 10;

/**
 * After this many bytes written, a sync of the destination is started in the background (and
 * the copy waits for the previous one first, so at most one is in flight).
 */
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
 * Starts a sync in the background every `every` bytes, at most one at a time: `wrote(n)` after
 * each write (waits only when a sync is due and the previous one has not finished), `drain()`
 * at the end to wait for (and surface the error of) the last one.
 */
export class SyncBehind {
  private bytes = 0;
  private pending: Promise<void> | null = null;
  private readonly every: number;

  constructor(
    private readonly start: () => Promise<void>,
    every?: number,
  ) {
    this.every = every ?? SYNC_BEHIND_BYTES;
  }

  async wrote(n: number): Promise<void> {
    this.bytes += n;
    if (this.bytes < this.every) return;
    this.bytes = 0;
    await this.drain();
    const p = this.start();
    p.catch(() => undefined);
    this.pending = p;
  }

  async drain(): Promise<void> {
    const p = this.pending;
    this.pending = null;
    if (p) await p;
  }
}
