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
