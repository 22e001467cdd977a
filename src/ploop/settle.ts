/**
 * Waiting for work that runs side by side. `Promise.all` rejects as soon as one promise does,
 * while the others may still be writing to a file that is about to be closed or removed; these
 * wait for every promise first.
 */

/** Waits for all of `work` to settle, then throws the first rejection in argument order. */
export async function settleAll(
  work: Iterable<Promise<unknown> | null | undefined>,
): Promise<void> {
  const done = await Promise.allSettled(work);
  for (const r of done) if (r.status === 'rejected') throw r.reason;
}
