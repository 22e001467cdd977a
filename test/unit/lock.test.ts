import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BusyError, PloopError, acquireLock, withLock } from '../../src/ploop/index.js';
import { makeTempDir, removeDir } from './helpers.js';

let dir: string;
let file: string;
beforeEach(async () => {
  dir = await makeTempDir();
  file = path.join(dir, 'DiskDescriptor.xml.lck');
});
afterEach(() => removeDir(dir));

describe('acquireLock', () => {
  it('a second lock fails at once while the first is held, and succeeds after release', async () => {
    const first = await acquireLock(file, { timeoutMs: 0 });
    const err = await acquireLock(file, { timeoutMs: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BusyError);
    expect((err as BusyError).code).toBe('BUSY');
    await first.release();
    const second = await acquireLock(file, { timeoutMs: 0 });
    await second.release();
  });

  it('waits up to the timeout', async () => {
    const first = await acquireLock(file);
    const t0 = Date.now();
    await expect(acquireLock(file, { timeoutMs: 300 })).rejects.toBeInstanceOf(BusyError);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    // Released while a waiter waits: the waiter gets it.
    const waiting = acquireLock(file, { timeoutMs: 5000 });
    setTimeout(() => void first.release(), 100);
    const got = await waiting;
    await got.release();
  });

  it('excludes other processes using flock(1) on the same file', async () => {
    const held = await acquireLock(file);
    const rc = await new Promise<number | null>((resolve) => {
      const p = spawn('flock', ['-n', file, 'true']);
      p.on('close', resolve);
    });
    expect(rc).toBe(1);
    await held.release();
    const rc2 = await new Promise<number | null>((resolve) => {
      const p = spawn('flock', ['-n', file, 'true']);
      p.on('close', resolve);
    });
    expect(rc2).toBe(0);
  });

  it('reports a lock file that cannot be created with a typed error', async () => {
    await expect(
      acquireLock(path.join(dir, 'missing-dir', 'x.lck'), { timeoutMs: 0 }),
    ).rejects.toBeInstanceOf(PloopError);
  });

  it('release is idempotent', async () => {
    const l = await acquireLock(file, { timeoutMs: 0 });
    await l.release();
    await l.release();
    const again = await acquireLock(file, { timeoutMs: 0 });
    await again.release();
  });
});

describe('withLock', () => {
  it('releases the lock when the function throws', async () => {
    await expect(
      withLock(file, async () => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    const again = await acquireLock(file, { timeoutMs: 0 });
    await again.release();
  });

  it('serializes critical sections', async () => {
    const events: string[] = [];
    const section = (name: string) =>
      withLock(
        file,
        async () => {
          events.push(`${name}+`);
          await new Promise((r) => setTimeout(r, 50));
          events.push(`${name}-`);
        },
        { timeoutMs: 5000 },
      );
    await Promise.all([section('a'), section('b'), section('c')]);
    for (let i = 0; i < events.length; i += 2) {
      expect(events[i]!.slice(0, 1)).toBe(events[i + 1]!.slice(0, 1));
      expect(events[i]!.endsWith('+')).toBe(true);
    }
  });
});
