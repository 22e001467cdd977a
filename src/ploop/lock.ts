/**
 * Advisory whole-file locks compatible with ploop's own (flock(2) on `DiskDescriptor.xml.lck`),
 * so our tools and ploop's never change a disk at the same time. Waiting polls a non-blocking
 * flock: a blocking one would stall the event loop.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import fsExt from 'fs-ext';
import { BusyError, toPloopError } from './errors.js';

export interface Lock {
  release(): Promise<void>;
}

export interface LockOptions {
  /** How long to wait for a lock held by someone else; 0 fails at once. */
  timeoutMs?: number;
  /**
   * Runs before the lock file is created (only when it does not exist yet); throwing leaves
   * no lock file behind.
   */
  beforeCreate?: () => Promise<void>;
}

/** Opens the lock file, creating it if missing, like ploop's; an existing file is opened as is. */
async function openLockFile(file: string, opts: LockOptions): Promise<fsp.FileHandle> {
  try {
    // The lock file usually exists already: one call, and nothing created when it does not.
    return await fsp.open(file, fsc.O_RDONLY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw toPloopError(err, file);
  }
  await opts.beforeCreate?.();
  try {
    return await fsp.open(file, fsc.O_RDONLY | fsc.O_CREAT, 0o600);
  } catch (err) {
    throw toPloopError(err, file);
  }
}

const POLL_MS = 10;

function tryFlock(fd: number): boolean {
  try {
    fsExt.flockSync(fd, 'exnb');
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return false;
    throw err;
  }
}

export async function acquireLock(file: string, opts: LockOptions = {}): Promise<Lock> {
  const timeout = opts.timeoutMs ?? 30_000;
  const fh = await openLockFile(file, opts);
  const deadline = Date.now() + timeout;
  try {
    while (!tryFlock(fh.fd)) {
      if (Date.now() >= deadline) throw new BusyError(`${file} is locked by another process`);
      await sleep(POLL_MS);
    }
  } catch (err) {
    await fh.close();
    throw toPloopError(err, file);
  }
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      // Closing the descriptor drops the flock.
      await fh.close();
    },
  };
}

/** Runs `fn` while holding the lock on `file`. */
export async function withLock<T>(
  file: string,
  fn: () => Promise<T>,
  opts?: LockOptions,
): Promise<T> {
  const lock = await acquireLock(file, opts);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
