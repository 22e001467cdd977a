/**
 * Measurement helpers: timing, medians, the `cp` baseline, page-cache settling and the scratch
 * directory the benchmarks work in.
 */
import { spawn } from 'node:child_process';
import { promises as fsp, statSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const MiB = 1 << 20;
export const GiB = 1 << 30;

/** Milliseconds taken by `fn`. */
export async function timeMs(fn: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

export function median(xs: number[]): number {
  if (xs.length === 0) throw new Error('median of nothing');
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** MiB/s for `bytes` moved in `ms` milliseconds. */
export function mibPerSec(bytes: number, ms: number): number {
  return bytes / MiB / (ms / 1000);
}

/** Runs a command to completion; rejects on a non-zero exit with its stderr. */
export function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve()
        : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${err.trim()}`)),
    );
  });
}

/** fdatasync of one file, the same durability the ploop library asks for. */
export async function datasyncFile(file: string): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * The baseline: `cp` of `src` to `dst` on the same file system, then fdatasync of the copy, so
 * the copy is as durable as the outputs of the ploop operations it is compared with. Reflinks
 * are off (they would copy no data at all) and every byte is written (no hole detection).
 */
export async function cpBaseline(src: string, dst: string): Promise<void> {
  await run('cp', ['--reflink=never', '--sparse=never', src, dst]);
  await datasyncFile(dst);
}

/** Unlinks a file and fsyncs its directory, so the removal is durable. */
export async function unlinkSynced(file: string): Promise<void> {
  await fsp.unlink(file);
  const d = await fsp.open(path.dirname(file), 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * Times the synced I/O that any crash-safe snapshot needs, done with plain file calls: a new
 * file with one cluster of zeros written and fdatasync'd while a small file (the new
 * descriptor) is written and fdatasync'd, then a rename of the small file over an existing one
 * and an fsync of the directory. The snapshot row is compared with this floor.
 */
export async function syncFloorMs(dir: string, clusterSize: number): Promise<number> {
  const target = path.join(dir, 'floor.xml');
  const tmp = `${target}.tmp`;
  const delta = path.join(dir, 'floor.delta');
  await fsp.writeFile(target, 'x');
  const writeSynced = async (file: string, data: Buffer) => {
    const fh = await fsp.open(file, 'wx');
    try {
      await fh.write(data, 0, data.length, 0);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  };
  const cluster = Buffer.alloc(clusterSize);
  const xml = Buffer.alloc(2048, 'x');
  await settle(false);
  const ms = await timeMs(async () => {
    await Promise.all([writeSynced(delta, cluster), writeSynced(tmp, xml)]);
    await fsp.rename(tmp, target);
    const d = await fsp.open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  });
  await fsp.rm(delta);
  await fsp.rm(target);
  return ms;
}

/**
 * Brings the machine to the same state before each timed step: everything written so far is
 * on disk, and, when asked with PLOOP_BENCH_DROP_CACHES=1, the page cache is emptied so reads
 * come from the device.
 */
export async function settle(dropCaches: boolean): Promise<void> {
  await run('sync', []);
  if (dropCaches) await fsp.writeFile('/proc/sys/vm/drop_caches', '3\n');
}

/** The repository root (bench/ is compiled to dist/bench/, run from there). */
export function repoRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.resolve(here, path.basename(path.dirname(here)) === 'dist' ? '../..' : '..');
}

/**
 * Chooses the parent of the scratch directory: PLOOP_BENCH_DIR when set; else the system
 * temporary directory when it is on the repository's file system; else the repository itself.
 */
export function scratchParent(): string {
  const env = process.env['PLOOP_BENCH_DIR'];
  if (env) return path.resolve(env);
  const root = repoRoot();
  const tmp = os.tmpdir();
  try {
    if (statSync(tmp).dev === statSync(root).dev) return tmp;
  } catch {
    // An unusable temporary directory: fall back to the repository.
  }
  return root;
}

export interface Scratch {
  dir: string;
  /** Removes the directory and everything in it. */
  remove(): void;
}

/** Creates the scratch directory and removes it again on exit, including Ctrl-C. */
export async function makeScratch(parent: string): Promise<Scratch> {
  await fsp.mkdir(parent, { recursive: true });
  const dir = await fsp.mkdtemp(path.join(parent, '.ploop-bench-'));
  let removed = false;
  const remove = () => {
    if (removed) return;
    removed = true;
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals) => {
    remove();
    process.kill(process.pid, sig);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', remove);
  return { dir, remove };
}

/** Bytes available to this user on the file system holding `dir`. */
export async function freeBytes(dir: string): Promise<number> {
  const s = await fsp.statfs(dir);
  return s.bavail * s.bsize;
}

export async function fileSystemType(dir: string): Promise<string> {
  const s = await fsp.statfs(dir);
  const known: Record<number, string> = {
    0xef53: 'ext4',
    0x58465342: 'xfs',
    0x9123683e: 'btrfs',
    0x01021994: 'tmpfs',
    0x794c7630: 'overlayfs',
    0x2fc12fc1: 'zfs',
  };
  return known[s.type] ?? `0x${s.type.toString(16)}`;
}

export function formatBytes(n: number): string {
  if (n >= GiB && n % GiB === 0) return `${n / GiB} GiB`;
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  return `${(n / MiB).toFixed(1)} MiB`;
}
