/**
 * Loop devices over sparse files, for tests that need a real block device on the host. Tests
 * skip (with the reason) only when the host cannot give them one: not root, or no loop support
 * in the kernel.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface Loop {
  device: string;
  file: string;
  dir: string;
  /** Grows the backing file and tells the loop driver (`losetup -c`). */
  resize(bytes: number): Promise<void>;
  close(): Promise<void>;
}

let unavailable: string | null | undefined;

/** Why loop devices cannot be used here, or null when they can. */
export function loopUnavailable(): string | null {
  if (unavailable !== undefined) return unavailable;
  if (process.getuid?.() !== 0) {
    unavailable = 'needs root (mount, losetup)';
    return unavailable;
  }
  const dir = execFileSync('mktemp', ['-d', path.join(os.tmpdir(), 'ploop-csi-loopprobe-XXXXXX')], {
    encoding: 'utf8',
  }).trim();
  const file = path.join(dir, 'probe.img');
  try {
    execFileSync('truncate', ['-s', '1M', file]);
    const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
    execFileSync('losetup', ['-d', dev]);
    unavailable = null;
  } catch (err) {
    const msg = String((err as { stderr?: unknown }).stderr ?? (err as Error).message);
    // Only a kernel without loop support is a reason to skip; any other failure is a failure.
    if (!existsSync('/dev/loop-control') && !existsSync('/sys/module/loop')) {
      unavailable = `the kernel has no loop device support (${msg.trim()})`;
    } else {
      throw err;
    }
  } finally {
    execFileSync('rm', ['-rf', dir]);
  }
  return unavailable;
}

export async function makeLoop(bytes: number, name = 'disk.img'): Promise<Loop> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-csi-host-'));
  const file = path.join(dir, name);
  await fsp.writeFile(file, '');
  await fsp.truncate(file, bytes);
  const device = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
  return {
    device,
    file,
    dir,
    async resize(n: number) {
      await fsp.truncate(file, n);
      execFileSync('losetup', ['-c', device]);
    },
    async close() {
      try {
        execFileSync('losetup', ['-d', device]);
      } finally {
        await fsp.rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/** Unmounts everything still mounted at or below `dir` (cleanup after a failed test). */
export function unmountBelow(dir: string): void {
  const lines = execFileSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' }).split('\n');
  const points = lines
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => !!p)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .reverse();
  for (const p of points) {
    try {
      execFileSync('umount', ['-l', p], { stdio: 'ignore' });
    } catch {
      // Already gone.
    }
  }
}
