/**
 * Where randomized tests keep their disks: PLOOP_TEST_TMPDIR if set, else /dev/shm when it is a
 * writable directory (fsync is free on tmpfs, so thousands of flushes stay fast), else the
 * system temporary directory.
 */
import { constants, promises as fsp } from 'node:fs';
import * as os from 'node:os';

export async function scratchRoot(): Promise<string> {
  const env = process.env.PLOOP_TEST_TMPDIR;
  if (env) return env;
  try {
    await fsp.access('/dev/shm', constants.W_OK);
    if ((await fsp.stat('/dev/shm')).isDirectory()) return '/dev/shm';
  } catch {
    // not available
  }
  return os.tmpdir();
}
