/**
 * Advisory whole-file locks compatible with ploop's own (flock(2) on `DiskDescriptor.xml.lck`).
 * Node.js has no flock binding, so the lock is held by a util-linux `flock` child process that
 * keeps it until we close its stdin, or until this process dies (the pipe closes with it).
 */
import { spawn } from 'node:child_process';
import { BusyError, IoError } from './errors.js';

export interface Lock {
  release(): Promise<void>;
}

export interface LockOptions {
  /** How long to wait for a lock held by someone else; 0 fails at once. */
  timeoutMs?: number;
}

export function acquireLock(file: string, opts: LockOptions = {}): Promise<Lock> {
  const timeout = opts.timeoutMs ?? 30_000;
  const waitArgs = timeout > 0 ? ['-w', String(timeout / 1000)] : ['-n'];
  return new Promise((resolve, reject) => {
    const child = spawn(
      'flock',
      ['-x', ...waitArgs, file, '-c', 'echo locked; exec cat >/dev/null'],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let out = '';
    let err = '';
    let settled = false;
    const exited = new Promise<void>((res) => child.on('close', () => res()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => {
      if (!settled) {
        settled = true;
        reject(new IoError(`cannot run flock for ${file}: ${e.message}`, e));
      }
    });
    child.on('close', (code) => {
      if (settled) return;
      settled = true;
      reject(
        code === 1
          ? new BusyError(`${file} is locked by another process`)
          : new IoError(`flock ${file} failed (${code}): ${err.trim()}`),
      );
    });
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!settled && out.includes('locked')) {
        settled = true;
        resolve({
          async release() {
            child.stdin.end();
            await exited;
          },
        });
      }
    });
  });
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
