/**
 * Helpers for the interoperability tests (ploop-format.md §6.1): running our CLI, qemu-img,
 * qemu-io and ploop 1.15, reading headers, flattening chains with QEMU and writing patterns
 * through the library.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants, existsSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Chain } from '../../src/ploop/index.js';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI_PATH = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

/** ploop installs into /usr/sbin, which is not on every user's PATH. */
const TOOL_PATH = [
  ...(process.env.PATH ?? '').split(':').filter(Boolean),
  '/usr/local/sbin',
  '/usr/sbin',
  '/sbin',
].join(':');

/** ploop 1.15 `init` overruns the stack when the environment is small (ploop-format.md §6). */
const PLOOP_ENV = { ...process.env, PATH: TOOL_PATH, PAD: 'x'.repeat(16384) };

export const REQUIRED_TOOLS = ['qemu-img', 'qemu-io', 'ploop'] as const;

export interface RunResult {
  cmd: string;
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; never throws for a non-zero exit. */
export function run(
  file: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  const cmd = [file, ...args].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: opts.cwd,
      env: opts.env ?? { ...process.env, PATH: TOOL_PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({ cmd, code: code ?? (signal ? 128 : 1), stdout, stderr }),
    );
  });
}

/** Throws with the command's output unless it exited 0. */
export function ok(r: RunResult): RunResult {
  if (r.code !== 0) {
    throw new Error(`"${r.cmd}" exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
  return r;
}

/** `node dist/src/cli/main.js ARGS`. */
export function cli(args: string[], cwd?: string): Promise<RunResult> {
  return run(process.execPath, [CLI_PATH, ...args], { cwd });
}

/** Our CLI with `--json`: checks the exit status and parses stdout. */
export async function cliJson<T = unknown>(args: string[], cwd?: string): Promise<T> {
  const r = ok(await cli([...args, '--json'], cwd));
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`"${r.cmd}" printed no JSON: ${r.stdout}`);
  }
}

export function ploop(args: string[], cwd?: string): Promise<RunResult> {
  return run('ploop', args, { cwd, env: PLOOP_ENV });
}

export function qemuImg(args: string[], cwd?: string): Promise<RunResult> {
  return run('qemu-img', args, { cwd });
}

export function qemuIo(args: string[], cwd?: string): Promise<RunResult> {
  return run('qemu-io', args, { cwd });
}

function onPath(tool: string): boolean {
  return TOOL_PATH.split(':').some((dir) => {
    const p = path.join(dir, tool);
    return existsSync(p);
  });
}

/** Why the suite cannot run, or null: the built CLI and the reference tools must exist. */
export async function missingPrerequisites(): Promise<string | null> {
  try {
    await fsp.access(CLI_PATH, constants.R_OK);
  } catch {
    return `${path.relative(REPO_ROOT, CLI_PATH)} is missing: build with "npx tsc -p ." (npm test builds it)`;
  }
  const missing = REQUIRED_TOOLS.filter((t) => !onPath(t));
  if (missing.length) {
    return `reference tools not installed: ${missing.join(', ')}; run scripts/setup-test.sh`;
  }
  return null;
}

/** A fresh directory under the system temporary directory; `cleanup` removes it. */
export async function makeScratchDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-interop-'));
  return { dir, cleanup: () => fsp.rm(dir, { recursive: true, force: true }) };
}

/** The 64-byte header fields in on-disk order (ploop-format.md §1.2). */
export interface RawHeader {
  signature: string;
  type: number;
  heads: number;
  cylinders: number;
  clusterSectors: number;
  batEntries: number;
  sizeSectors: number;
  inUse: number;
  dataOff: number;
  flags: number;
  extOff: number;
}

export async function readRawHeader(file: string): Promise<RawHeader> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(64);
    await fh.read(b, 0, 64, 0);
    return {
      signature: b.toString('latin1', 0, 16),
      type: b.readUInt32LE(0x10),
      heads: b.readUInt32LE(0x14),
      cylinders: b.readUInt32LE(0x18),
      clusterSectors: b.readUInt32LE(0x1c),
      batEntries: b.readUInt32LE(0x20),
      sizeSectors: Number(b.readBigUInt64LE(0x24)),
      inUse: b.readUInt32LE(0x2c),
      dataOff: b.readUInt32LE(0x30),
      flags: b.readUInt32LE(0x34),
      extOff: Number(b.readBigUInt64LE(0x38)),
    };
  } finally {
    await fh.close();
  }
}

/** Overwrites a little-endian u32 (BAT entries, header fields) in place. */
export async function pokeU32(file: string, offset: number, value: number): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value >>> 0);
    await fh.write(b, 0, 4, offset);
  } finally {
    await fh.close();
  }
}

/** BAT entry `index` of an image. */
export async function readBatEntry(file: string, index: number): Promise<number> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 64 + 4 * index);
    return b.readUInt32LE(0);
  } finally {
    await fh.close();
  }
}

/** A QEMU `json:` filename for a chain given base first (ploop-format.md §6.1 `qchain`). */
export function qemuChainSpec(files: string[]): string {
  let node: Record<string, unknown> | null = null;
  for (const f of files) {
    const layer: Record<string, unknown> = {
      driver: 'parallels',
      file: { driver: 'file', filename: f },
    };
    if (node) layer.backing = node;
    node = layer;
  }
  return `json:${JSON.stringify(node)}`;
}

/** Flattens an image or a chain (base first) to a raw file with qemu-img. */
export async function qemuToRaw(files: string[], out: string): Promise<void> {
  if (files.length === 1) {
    ok(await qemuImg(['convert', '-f', 'parallels', '-O', 'raw', files[0]!, out]));
  } else {
    ok(await qemuImg(['convert', '-O', 'raw', qemuChainSpec(files), out]));
  }
}

/** Runs qemu-io commands read-write on an image or a `json:` chain spec. */
export async function qemuIoWrite(target: string, commands: string[]): Promise<void> {
  const fmt = target.startsWith('json:') ? [] : ['-f', 'parallels'];
  const r = ok(await qemuIo([...fmt, ...commands.flatMap((c) => ['-c', c]), target]));
  if (/error|failed/i.test(r.stdout + r.stderr))
    throw new Error(`${r.cmd}: ${r.stdout}${r.stderr}`);
}

/** qemu-io exits 0 on a pattern mismatch: read its output (ploop-format.md §6.1 `pat_ok`). */
export async function qemuPatternFailures(file: string, reads: string[]): Promise<string> {
  const r = ok(await qemuIo(['-r', '-f', 'parallels', ...reads.flatMap((c) => ['-c', c]), file]));
  return (r.stdout + r.stderr)
    .split('\n')
    .filter((l) => /Pattern verification failed|error/i.test(l))
    .join('\n');
}

export interface PatternWrite {
  offset: number;
  length: number;
  byte: number;
}

/** Writes byte patterns through the library's Chain (image file or DiskDescriptor.xml). */
export async function writePatterns(target: string, writes: PatternWrite[]): Promise<void> {
  const chain = await Chain.open(target);
  try {
    for (const w of writes) await chain.write(Buffer.alloc(w.length, w.byte), w.offset);
    await chain.flush();
  } finally {
    await chain.close();
  }
}

/**
 * qemu-io `read -P` commands for a disk of `size` bytes after `writes` (later ones win): every
 * written run, and the edges of the zero runs between them (whole files are compared elsewhere).
 */
export function patternReads(size: number, writes: PatternWrite[]): string[] {
  const cuts = [
    ...new Set([0, size, ...writes.flatMap((w) => [w.offset, w.offset + w.length])]),
  ].sort((a, b) => a - b);
  const runs: { start: number; end: number; byte: number }[] = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const [start, end] = [cuts[i]!, cuts[i + 1]!];
    const last = writes.filter((w) => w.offset <= start && w.offset + w.length >= end).pop();
    const byte = last ? last.byte : 0;
    const prev = runs[runs.length - 1];
    if (prev && prev.byte === byte && prev.end === start) prev.end = end;
    else runs.push({ start, end, byte });
  }
  const edge = 64 << 10;
  return runs.flatMap(({ start, end, byte }) => {
    const read = (s: number, e: number) => `read -P 0x${byte.toString(16)} ${s} ${e - s}`;
    if (byte !== 0 || end - start <= 2 * edge) return [read(start, end)];
    return [read(start, start + edge), read(end - edge, end)];
  });
}

/**
 * Null when two raw files are identical, else why not. qemu-img compare skips holes, so sparse
 * 64 MiB files cost little; it tolerates a size mismatch, so sizes are compared first.
 */
export async function rawDifference(a: string, b: string): Promise<string | null> {
  const [sa, sb] = await Promise.all([fsp.stat(a), fsp.stat(b)]);
  if (sa.size !== sb.size) return `sizes differ: ${a} ${sa.size}, ${b} ${sb.size}`;
  const r = await qemuImg(['compare', '-f', 'raw', '-F', 'raw', a, b]);
  return r.code === 0 ? null : `${r.cmd}: ${r.stdout.trim()} ${r.stderr.trim()}`;
}

/** Null when an image (or a `json:` chain) reads like the raw file, else why not. */
export async function imageDifference(image: string, raw: string): Promise<string | null> {
  const fmt = image.startsWith('json:') ? [] : ['-f', 'parallels'];
  const r = await qemuImg(['compare', ...fmt, '-F', 'raw', image, raw]);
  return r.code === 0 ? null : `${r.cmd}: ${r.stdout.trim()} ${r.stderr.trim()}`;
}

/** Creates a sparse raw file of `size` bytes holding `writes`. */
export async function writeRawFile(
  file: string,
  size: number,
  writes: PatternWrite[],
): Promise<void> {
  const fh = await fsp.open(file, 'wx');
  try {
    await fh.truncate(size);
    for (const w of writes) await fh.write(Buffer.alloc(w.length, w.byte), 0, w.length, w.offset);
  } finally {
    await fh.close();
  }
}

/** Snapshot listing of `ploop snapshot-list` as {parent, guid, current, file-basename} rows. */
export async function ploopSnapshotList(
  dd: string,
): Promise<{ parent: string; guid: string; current: boolean; file: string }[]> {
  const r = ok(await ploop(['snapshot-list', dd]));
  const rows = r.stdout
    .split('\n')
    .slice(1)
    .map((l) => l.trim())
    .filter(Boolean);
  return rows.map((l) => {
    const m = /^(\{[0-9a-f-]+\})\s+(\*?)\s*(\{[0-9a-f-]+\})\s+(\S+)$/i.exec(l);
    if (!m) throw new Error(`unexpected ploop snapshot-list line: ${l}`);
    return {
      parent: m[1]!.toLowerCase(),
      current: m[2] === '*',
      guid: m[3]!.toLowerCase(),
      file: path.basename(m[4]!),
    };
  });
}

/**
 * Appends a format-extension cluster holding one all-ones dirty bitmap (ploop-format.md §1.8)
 * and points the header at it, marked "v2.1" as libploop leaves an image it closed.
 */
export async function appendFormatExtension(file: string): Promise<void> {
  const h = await readRawHeader(file);
  const cluster = h.clusterSectors * 512;
  const ext = Buffer.alloc(cluster);
  ext.writeBigUInt64LE(0xab234cef23dcea87n, 0);
  const granularity = 128;
  const l1Size = Math.ceil(h.sizeSectors / granularity / (cluster * 8));
  const data = Buffer.alloc(32 + 8 * l1Size);
  data.writeBigUInt64LE(BigInt(h.sizeSectors), 0);
  Buffer.from('12345678123456781234567812345678', 'hex').copy(data, 8);
  data.writeUInt32LE(granularity, 24);
  data.writeUInt32LE(l1Size, 28);
  for (let i = 0; i < l1Size; i++) data.writeBigUInt64LE(1n, 32 + 8 * i);
  ext.writeBigUInt64LE(0x20385fae252cb34an, 24);
  ext.writeUInt32LE(data.length, 40);
  data.copy(ext, 48);
  createHash('md5').update(ext.subarray(24)).digest().copy(ext, 8);
  const end = (await fsp.stat(file)).size;
  const fh = await fsp.open(file, 'r+');
  try {
    await fh.write(ext, 0, cluster, end);
    const off = Buffer.alloc(8);
    off.writeBigUInt64LE(BigInt(end / 512));
    await fh.write(off, 0, 8, 0x38);
  } finally {
    await fh.close();
  }
  await pokeU32(file, 0x2c, 0x312e3276);
}
