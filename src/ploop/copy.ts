/**
 * Bulk cluster copying shared by merge, import, export and flatten: a few reads and writes in
 * flight at once, progress reported per cluster, crash order kept by the destination's flush
 * (data synced before the BAT entries that point at it).
 */

export type Progress = (done: number, total: number) => void;

/** Runs `work(i)` for i in [0, count) with at most `parallel` in flight, in order of start. */
export async function forEachLimited(
  count: number,
  parallel: number,
  work: (i: number) => Promise<void>,
  progress?: Progress,
): Promise<void> {
  let next = 0;
  let done = 0;
  let failed: unknown = null;
  const worker = async () => {
    while (failed === null && next < count) {
      const i = next++;
      try {
        await work(i);
      } catch (err) {
        failed ??= err;
        return;
      }
      done++;
      progress?.(done, count);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(parallel, count)) }, worker));
  if (failed !== null) throw failed;
}

/**
 * Cluster buffers reused across a bulk copy: allocating (and zero-filling) a fresh buffer per
 * cluster costs more than copying the cluster. A buffer taken from the pool holds stale bytes;
 * the caller fills all of it before use and gives it back once no I/O refers to it.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(readonly size: number) {}

  take(): Buffer {
    return this.free.pop() ?? Buffer.alloc(this.size);
  }

  give(buf: Buffer): void {
    this.free.push(buf);
  }

  /** Runs `fn` with a buffer from the pool and returns the buffer afterwards. */
  async with<T>(fn: (buf: Buffer) => Promise<T>): Promise<T> {
    const buf = this.take();
    try {
      return await fn(buf);
    } finally {
      this.give(buf);
    }
  }
}
