/**
 * Robustness against damaged input: mutated and truncated headers, BATs and descriptors.
 *
 * Every operation (Chain.open read-only and read-write, checkImage, repairImage, info,
 * listSnapshots, parseDescriptor, a few disk operations) must either succeed or throw a
 * PloopError subclass; it must never throw anything else, never hang and never take huge memory.
 * Beyond that, what the library promises is checked too: after a successful open the whole disk
 * is readable; what opens read-only also opens read-write; what a read-write session wrote reads
 * back after close; a repair that reports success leaves an image that checks clean, opens, and
 * still holds every cluster whose entry was valid; compaction, grow, merge and snapshot keep the
 * content. A descriptor never makes an operation touch a file outside its directory.
 *
 * PLOOP_FUZZ_SEED=<n> reproduces a run (the seed is printed); PLOOP_FUZZ_ONLY=<kind>:<index>
 * replays a single case (kinds: header, bat, descriptor); PLOOP_FUZZ_SCALE multiplies the case
 * counts; PLOOP_FUZZ_DIR chooses where the scratch files live (default /dev/shm when present).
 */
import { createHash, randomInt } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CIF_EMPTY,
  CLOSED_V21,
  Chain,
  DESCRIPTOR_NAME,
  HEADER_SIZE,
  IN_USE,
  NONE_GUID,
  PloopError,
  PloopImage,
  TOP_GUID,
  batClusters,
  checkImage,
  compactImage,
  deleteSnapshot,
  encodeHeader,
  growDisk,
  growImage,
  info,
  listSnapshots,
  mergeTop,
  newGuid,
  parseDescriptor,
  repairImage,
  resolveImagePath,
  snapshot,
  switchSnapshot,
  nodeFileSystem,
  readZeroFilled,
  writeDescriptor,
} from '../src/ploop/index.js';

// ---- configuration --------------------------------------------------------------------------

const SEED = process.env.PLOOP_FUZZ_SEED
  ? Number(process.env.PLOOP_FUZZ_SEED) >>> 0
  : randomInt(0, 2 ** 32);
const SCALE = Number(process.env.PLOOP_FUZZ_SCALE ?? '1') || 1;
const ONLY = process.env.PLOOP_FUZZ_ONLY?.split(':');
const COUNTS = {
  header: Math.round(4200 * SCALE),
  bat: Math.round(3300 * SCALE),
  descriptor: Math.round(3300 * SCALE),
};
/** Per-operation limit; generous because the test host may be busy. */
const OP_TIMEOUT_MS = 20_000;
/** Each group takes well under a minute on two idle cores; a shared host can be far slower. */
const TEST_TIMEOUT_MS = 600_000;
const RSS_LIMIT = 1.5 * 2 ** 30;
/** Disks up to this size are read completely; larger ones cluster by cluster where mapped. */
const FULL_READ_LIMIT = 256 << 20;
/** Cases run concurrently (each with its own files), so that one waits while another computes. */
const LANES = 4;
const CLUSTERS = 16;

console.log(
  `ploop fuzz seed ${SEED} (reproduce with PLOOP_FUZZ_SEED=${SEED}); cases ${JSON.stringify(COUNTS)}`,
);

// ---- deterministic randomness ---------------------------------------------------------------

class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  /** mulberry32 */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }
}

function caseSeed(kind: string, index: number): number {
  const h = createHash('sha256').update(`${SEED}:${kind}:${index}`).digest();
  return h.readUInt32LE(0);
}

// ---- results --------------------------------------------------------------------------------

interface Failure {
  kind: string;
  index: number;
  op: string;
  mutations: string;
  error: string;
}

const failures: Failure[] = [];
const stats: Record<string, Record<string, number>> = {};
let peakRss = 0;
const cpuAtStart = process.cpuUsage();
let sparseReads = 0;
let casesRun = 0;
/** Milliseconds spent per operation, for the summary. */
const opTime: Record<string, number> = {};

function count(kind: string, key: string): void {
  const s = (stats[kind] ??= {});
  s[key] = (s[key] ?? 0) + 1;
}

function sampleRss(): number {
  const rss = process.memoryUsage().rss;
  if (rss > peakRss) peakRss = rss;
  return rss;
}

class Timeout extends Error {}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Timeout(`no answer after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** One fuzz case: runs operations and records anything that is not a typed outcome. */
class Case {
  hung = false;
  readonly log: string[] = [];
  constructor(
    readonly kind: string,
    readonly index: number,
    readonly rng: Rng,
    /** Names this case's scratch files apart from the concurrent ones. */
    readonly lane: number,
  ) {}

  fail(op: string, error: string): void {
    failures.push({
      kind: this.kind,
      index: this.index,
      op,
      mutations: this.log.join('; ').slice(0, 600),
      error: error.slice(0, 1200),
    });
  }

  /** Runs `fn`; true when it succeeded, false when it threw a typed error. */
  async op(name: string, fn: () => Promise<unknown> | unknown): Promise<boolean> {
    if (this.hung) return false;
    const t0 = performance.now();
    try {
      await withTimeout(Promise.resolve().then(fn), OP_TIMEOUT_MS);
      count(this.kind, `${name}:ok`);
      return true;
    } catch (err) {
      if (err instanceof Timeout) {
        this.hung = true;
        this.fail(name, `hang: ${err.message}`);
      } else if (err instanceof PloopError) {
        count(this.kind, `${name}:${err.code}`);
      } else if (err instanceof InvariantError) {
        this.fail(name, err.message);
      } else {
        const e = err as Error;
        this.fail(name, `untyped ${e?.constructor?.name}: ${e?.stack ?? String(err)}`);
      }
      return false;
    } finally {
      opTime[name] = (opTime[name] ?? 0) + performance.now() - t0;
      if (sampleRss() > RSS_LIMIT) this.fail(name, `rss ${process.memoryUsage().rss} bytes`);
    }
  }
}

/** A broken promise of the library (not an unexpected exception type). */
class InvariantError extends Error {}

function invariant(cond: unknown, message: string): asserts cond {
  if (!cond) throw new InvariantError(message);
}

// ---- disk helpers ---------------------------------------------------------------------------

/** Scratch for reads whose bytes are not compared (shared by the lanes). */
const readBuf = Buffer.alloc(1 << 20);

/** Reads the whole virtual disk (or, for huge ones, every mapped cluster and a few windows). */
async function readWhole(chain: Chain, rng: Rng): Promise<void> {
  const size = chain.virtualSize;
  invariant(Number.isSafeInteger(size) && size >= 0, `virtual size ${size}`);
  if (size <= FULL_READ_LIMIT) {
    for (let off = 0; off < size; off += readBuf.length) {
      await chain.read(readBuf.subarray(0, Math.min(readBuf.length, size - off)), off);
    }
    return;
  }
  sparseReads++;
  const cs = chain.clusterSize;
  const clusters = Math.ceil(size / cs);
  const piece = Math.min(cs, readBuf.length);
  let mapped = 0;
  for (const d of chain.deltas) {
    if (!(d instanceof PloopImage)) continue;
    for (let vc = 0; vc < Math.min(d.bat.length, clusters); vc++) {
      if (!d.bat[vc] || ++mapped > 4096) continue;
      await chain.read(readBuf.subarray(0, Math.min(piece, size - vc * cs)), vc * cs);
    }
  }
  const windows = [0, size - Math.min(size, piece)];
  for (let i = 0; i < 8; i++) windows.push(Math.floor(rng.next() * (size - piece)));
  for (const off of windows) await chain.read(readBuf.subarray(0, Math.min(piece, size)), off);
}

function fill(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = (x >>> 24) | 1;
  }
  return b;
}

/** Read-only open and full read. */
async function roRead(c: Case, target: string): Promise<boolean> {
  return c.op('ro-open', async () => {
    const chain = await Chain.open(target, { readOnly: true });
    try {
      await readWhole(chain, c.rng);
    } finally {
      await chain.close();
    }
  });
}

/** Read-write open (repairs a dirty top), a write and a discard, then read back read-only. */
async function rwSession(c: Case, target: string, roOk: boolean): Promise<boolean> {
  let wrote: { off: number; data: Buffer } | null = null;
  const ok = await c.op('rw-open', async () => {
    let chain: Chain;
    try {
      chain = await Chain.open(target);
    } catch (err) {
      // What opens read-only also opens read-write (a dirty top is repaired on the way).
      if (roOk && err instanceof PloopError) {
        throw new InvariantError(`read-only open works, read-write fails: ${err.message}`);
      }
      throw err;
    }
    try {
      await readWhole(chain, c.rng);
      const size = chain.virtualSize;
      if (size > 0) {
        const len = Math.min(size, c.rng.range(1, 2 * chain.clusterSize));
        const off = Math.floor(c.rng.next() * (size - len + 1));
        const data = fill(len, c.rng.u32());
        await chain.write(data, off);
        const dOff = Math.floor(c.rng.next() * size);
        const dLen = Math.min(size - dOff, c.rng.range(0, 3 * chain.clusterSize));
        // Discard somewhere else, so that the written bytes stay.
        const apart = dOff >= off + len || dOff + dLen <= off;
        if (apart && c.rng.chance(0.15)) await chain.discard(dOff, dLen);
        await chain.flush();
        const back = Buffer.alloc(len);
        await chain.read(back, off);
        invariant(back.equals(data), 'a write did not read back in the same session');
        wrote = { off, data };
      }
    } finally {
      await chain.close();
    }
  });
  if (!ok || !wrote) return ok;
  const w: { off: number; data: Buffer } = wrote;
  return c.op('reopen', async () => {
    let chain: Chain;
    try {
      chain = await Chain.open(target, { readOnly: true });
    } catch (err) {
      throw new InvariantError(
        `cannot reopen after a clean read-write session: ${(err as Error).message}`,
      );
    }
    try {
      const back = Buffer.alloc(w.data.length);
      await chain.read(back, w.off);
      invariant(back.equals(w.data), 'written data lost after close');
    } finally {
      await chain.close();
    }
  });
}

/**
 * What the disk of a damaged image must read after a successful repair: every cluster whose
 * entry is valid (or a duplicate, which repair splits by copying) keeps its bytes; everything
 * else reads as zeros. Null when the header is unusable or the disk too large to compare.
 */
async function expectedAfterRepair(file: string): Promise<Buffer | null> {
  let img: PloopImage;
  try {
    img = await PloopImage.openForRepair(file, nodeFileSystem, true);
  } catch {
    return null;
  }
  try {
    const size = img.virtualSize;
    if (size > 16 << 20) return null;
    const cs = img.clusterSize;
    // Repair first pads a file that ends inside a cluster.
    let fileSize = await img.file.size();
    const tail = (fileSize - img.dataOffBytes) % cs;
    if (fileSize > img.dataOffBytes && tail !== 0) fileSize += cs - tail;
    const bad = new Set(
      img
        .entryProblems(fileSize)
        .filter((p) => p.kind !== 'duplicate')
        .map((p) => p.index),
    );
    const out = Buffer.alloc(size);
    const buf = Buffer.alloc(cs);
    for (let vc = 0; vc < Math.min(img.bat.length, Math.ceil(size / cs)); vc++) {
      if (!img.bat[vc] || bad.has(vc)) continue;
      await readZeroFilled(img.file, buf, img.map(vc));
      buf.copy(out, vc * cs, 0, Math.min(cs, size - vc * cs));
    }
    return out;
  } finally {
    await img.abandon();
  }
}

/** Repair; one that reports success must leave an image that checks clean, opens, keeps data. */
async function repairOne(c: Case, file: string): Promise<void> {
  await c.op('repair', async () => {
    const expected = await expectedAfterRepair(file);
    const r = await repairImage(file);
    if (!r.clean) return;
    if (expected) {
      count(c.kind, 'repair:compared');
      const chain = await Chain.open(file, { readOnly: true }).catch((err: unknown) => {
        throw new InvariantError(`open after a clean repair: ${(err as Error).message}`);
      });
      try {
        const got = Buffer.alloc(chain.virtualSize);
        await chain.read(got, 0);
        let at = 0;
        while (at < got.length && got[at] === expected[at]) at++;
        invariant(
          got.length === expected.length && at === got.length,
          `repair changed the disk at byte ${at} (cluster ${Math.floor(at / chain.clusterSize)})`,
        );
      } finally {
        await chain.close();
      }
    }
    const again = await checkImage(file);
    const errors = again.findings.filter((f) => f.severity === 'error');
    invariant(
      again.clean && errors.length === 0,
      `check after a clean repair: ${errors.map((f) => f.message).join(' | ')}`,
    );
    const img = await PloopImage.open(file, { readOnly: true }).catch((err: unknown) => {
      throw new InvariantError(`open after a clean repair: ${(err as Error).message}`);
    });
    await img.close();
    if (c.rng.chance(0.7)) return;
    const rw = await PloopImage.open(file).catch((err: unknown) => {
      throw new InvariantError(`read-write open after a clean repair: ${(err as Error).message}`);
    });
    await rw.close();
  });
}

/** The whole disk, when small enough to compare; null otherwise. */
async function snapshotOf(target: string): Promise<Buffer | null> {
  const chain = await Chain.open(target, { readOnly: true });
  try {
    if (chain.virtualSize > 16 << 20) return null;
    const b = Buffer.alloc(chain.virtualSize);
    await chain.read(b, 0);
    return b;
  } finally {
    await chain.close();
  }
}

function sameDisk(got: Buffer | null, want: Buffer, what: string): void {
  invariant(got, `${what}: the disk cannot be read back`);
  let at = 0;
  const n = Math.min(got.length, want.length);
  while (at < n && got[at] === want[at]) at++;
  invariant(at === n, `${what} changed the disk at byte ${at}`);
}

/**
 * Maintenance on whatever opened: compaction (single image), grow or merge (chain). Each must
 * keep the content; a typed refusal is fine.
 */
async function maintenance(c: Case, target: string, isChain: boolean): Promise<void> {
  let before: Buffer | null = null;
  try {
    before = await snapshotOf(target);
  } catch {
    return; // not readable: nothing to preserve
  }
  if (!before) return;
  const want = before;
  const k = c.rng.int(isChain ? 4 : 2);
  if (k === 0) {
    await c.op('compact', async () => {
      const chain = await Chain.open(target);
      try {
        const top = chain.top;
        if (top instanceof PloopImage) await compactImage(top);
      } finally {
        await chain.close();
      }
      sameDisk(await snapshotOf(target), want, 'compaction');
    });
  } else if (k === 1) {
    // Up to 4.4 MiB more: enough for a second BAT cluster with 4 KiB clusters.
    const grow = c.rng.pick([1, 2, 1000, 1100]) * 4096;
    await c.op('grow', async () => {
      if (isChain) await growDisk(target, want.length + grow, { lockTimeoutMs: 5000 });
      else {
        const chain = await Chain.open(target);
        try {
          const top = chain.top;
          if (top instanceof PloopImage) await growImage(top, want.length + grow);
        } finally {
          await chain.close();
        }
      }
      const after = await snapshotOf(target);
      sameDisk(after, want, 'grow');
      invariant(after!.length >= want.length, 'grow shrank the disk');
      // A single image reads zeros in the new range; in a chain, lower deltas that are larger
      // than a damaged top legitimately show through there.
      invariant(
        isChain || after!.subarray(want.length).every((b) => b === 0),
        'grow exposed non-zero bytes',
      );
    });
  } else if (k === 2) {
    await c.op('merge', async () => {
      await mergeTop(target, { lockTimeoutMs: 5000 });
      sameDisk(await snapshotOf(target), want, 'merge');
    });
  } else {
    await c.op('snapshot', async () => {
      await snapshot(target, { lockTimeoutMs: 5000 });
      sameDisk(await snapshotOf(target), want, 'snapshot');
    });
  }
}

// ---- templates ------------------------------------------------------------------------------

interface ImageTemplate {
  version: 1 | 2;
  cluster: number;
  bytes: Buffer;
  /** BAT indices that map data. */
  mapped: number[];
}

interface ChainTemplate {
  version: 1 | 2;
  cluster: number;
  xml: string;
  baseName: string;
  topName: string;
  base: Buffer;
  top: Buffer;
  baseGuid: string;
}

let root: string;
let work: string;
const singles: ImageTemplate[] = [];
const chains: ChainTemplate[] = [];
/** Small clusters keep the files (and so each case) small; 64 KiB is the smallest ploop creates. */
const SMALL = 4096;
const LARGE = 64 << 10;

/** An empty image of CLUSTERS clusters; clusters below 64 KiB are readable but built by hand. */
async function createImage(file: string, cluster: number, version: 1 | 2): Promise<void> {
  if (cluster >= LARGE) {
    await PloopImage.create(file, { size: CLUSTERS * cluster, clusterSize: cluster, version });
    return;
  }
  const cs = cluster / 512;
  const dataOff = batClusters(CLUSTERS, cluster) * cs;
  const area = Buffer.alloc(dataOff * 512);
  encodeHeader({
    version,
    type: 2,
    heads: 16,
    cylinders: 1,
    clusterSectors: cs,
    batEntries: CLUSTERS,
    sizeSectors: CLUSTERS * cs,
    inUse: 0,
    dataOff,
    flags: CIF_EMPTY,
    extOff: 0,
  }).copy(area);
  await fsp.writeFile(file, area);
}

function mappedOf(b: Buffer): number[] {
  const out: number[] = [];
  const entries = b.readUInt32LE(0x20);
  for (let i = 0; i < entries; i++) if (b.readUInt32LE(HEADER_SIZE + 4 * i)) out.push(i);
  return out;
}

async function buildImage(file: string, version: 1 | 2, cluster: number): Promise<ImageTemplate> {
  await createImage(file, cluster, version);
  const chain = await Chain.open(file);
  await chain.write(fill(cluster / 2, 1), 0);
  await chain.write(fill(cluster, 2), 2 * cluster);
  await chain.write(fill(1000, 3), 3 * cluster + 50);
  await chain.write(fill(cluster + 10, 4), 7 * cluster - 5);
  await chain.write(fill(100, 5), 12 * cluster);
  await chain.discard(12 * cluster, cluster);
  await chain.close();
  const bytes = await fsp.readFile(file);
  return { version, cluster, bytes, mapped: mappedOf(bytes) };
}

async function buildChain(dir: string, version: 1 | 2, cluster: number): Promise<ChainTemplate> {
  await fsp.mkdir(dir);
  const dd = path.join(dir, DESCRIPTOR_NAME);
  const baseGuid = newGuid();
  const baseName = 'root.hds';
  const topName = `root.hds.${newGuid()}`;
  await createImage(path.join(dir, baseName), cluster, version);
  let chain = await Chain.open(path.join(dir, baseName));
  await chain.write(fill(3 * cluster, 10), 0);
  await chain.write(fill(500, 11), 9 * cluster);
  await chain.close();
  await createImage(path.join(dir, topName), cluster, version);
  await writeDescriptor(nodeFileSystem, dd, {
    sizeSectors: (CLUSTERS * cluster) / 512,
    clusterSectors: cluster / 512,
    preallocated: false,
    images: [
      { guid: baseGuid, type: 'Compressed', file: baseName },
      { guid: TOP_GUID, type: 'Compressed', file: topName },
    ],
    snapshots: [
      { guid: baseGuid, parent: NONE_GUID, temporary: false },
      { guid: TOP_GUID, parent: baseGuid, temporary: false },
    ],
    topGuid: TOP_GUID,
  });
  chain = await Chain.open(dd);
  await chain.write(fill(700, 12), cluster + 100);
  await chain.write(fill(cluster, 13), 5 * cluster);
  await chain.discard(2 * cluster, cluster);
  await chain.close();
  return {
    version,
    cluster,
    xml: await fsp.readFile(dd, 'utf8'),
    baseName,
    topName,
    base: await fsp.readFile(path.join(dir, baseName)),
    top: await fsp.readFile(path.join(dir, topName)),
    baseGuid,
  };
}

/** Mostly small clusters (fast), sometimes the 64 KiB ones ploop itself creates. */
function pickTemplate<T extends { cluster: number }>(rng: Rng, list: T[]): T {
  const cluster = rng.chance(0.75) ? SMALL : LARGE;
  return rng.pick(list.filter((t) => t.cluster === cluster));
}

beforeAll(async () => {
  const scratch = process.env.PLOOP_FUZZ_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir());
  root = await fsp.mkdtemp(path.join(scratch, 'ploop-fuzz-'));
  const tpl = path.join(root, 'templates');
  await fsp.mkdir(tpl);
  for (const v of [1, 2] as const) {
    for (const cl of [SMALL, LARGE]) {
      singles.push(await buildImage(path.join(tpl, `v${v}-${cl}.hds`), v, cl));
      chains.push(await buildChain(path.join(tpl, `chain${v}-${cl}`), v, cl));
    }
  }
  work = path.join(root, 'work');
  await fsp.mkdir(work);
});

afterAll(async () => {
  if (root) await fsp.rm(root, { recursive: true, force: true });
  const codes = Object.fromEntries(
    Object.entries(stats).map(([k, v]) => [
      k,
      Object.entries(v)
        .sort()
        .map(([a, b]) => `${a}=${b}`)
        .join(' '),
    ]),
  );
  console.log(
    `ploop fuzz seed ${SEED}: peak rss ${(peakRss / 2 ** 20).toFixed(0)} MiB, ` +
      `cpu ${(() => {
        const u = process.cpuUsage(cpuAtStart);
        return `${Math.round(u.user / 1000)} ms user + ${Math.round(u.system / 1000)} ms system`;
      })()}, ` +
      `${sparseReads} sparse reads of huge disks, ms per op ${JSON.stringify(
        Object.fromEntries(Object.entries(opTime).map(([k, v]) => [k, Math.round(v)])),
      )}\n${Object.entries(codes)
        .map(([k, v]) => `  ${k}: ${v}`)
        .join('\n')}`,
  );
});

function report(kind: string): string {
  const mine = failures.filter((f) => f.kind === kind);
  if (!mine.length) return '';
  // One line per distinct problem, with the first case that showed it.
  const seen = new Map<string, Failure & { times: number }>();
  for (const f of mine) {
    const key = `${f.op}:${f.error
      .split('\n')[0]!
      .replace(/\/[^\s:]+/g, '<path>')
      .replace(/\d+/g, 'N')}`;
    const s = seen.get(key);
    if (s) s.times++;
    else seen.set(key, { ...f, times: 1 });
  }
  return [...seen.values()]
    .map(
      (f) =>
        `[${f.times}x] PLOOP_FUZZ_SEED=${SEED} PLOOP_FUZZ_ONLY=${f.kind}:${f.index} op=${f.op}\n` +
        `  mutations: ${f.mutations}\n  ${f.error.split('\n').slice(0, 6).join('\n  ')}`,
    )
    .join('\n');
}

function indices(kind: keyof typeof COUNTS): number[] {
  if (ONLY) return ONLY[0] === kind ? [Number(ONLY[1])] : [];
  return Array.from({ length: COUNTS[kind] }, (_, i) => i);
}

// ---- header mutations -----------------------------------------------------------------------

const U32_FIELDS: [string, number][] = [
  ['type', 0x10],
  ['heads', 0x14],
  ['cylinders', 0x18],
  ['clusterSectors', 0x1c],
  ['batEntries', 0x20],
  ['sizeLow', 0x24],
  ['sizeHigh', 0x28],
  ['inUse', 0x2c],
  ['dataOff', 0x30],
  ['flags', 0x34],
  ['extLow', 0x38],
  ['extHigh', 0x3c],
];

function extremeU32(rng: Rng, b: Buffer): number {
  const cur = b.readUInt32LE(0x1c) || 128;
  return (
    rng.pick([
      0,
      1,
      2,
      3,
      7,
      8,
      64,
      127,
      128,
      129,
      255,
      256,
      2048,
      4096,
      65536,
      131072,
      262144,
      0x7fffffff,
      0x80000000,
      0xfffffffe,
      0xffffffff,
      IN_USE,
      CLOSED_V21,
      cur * rng.range(0, 40),
      1 << rng.int(32),
      rng.u32(),
      rng.int(4096),
    ]) >>> 0
  );
}

function mutateHeader(c: Case, b: Buffer): Buffer {
  const rng = c.rng;
  const steps = rng.pick([1, 1, 1, 2, 3]);
  for (let s = 0; s < steps; s++) {
    const k = rng.int(100);
    if (k < 25) {
      const n = rng.range(1, 8);
      // Mostly past the signature: a broken signature is rejected at once.
      const from = rng.chance(0.7) ? 16 * 8 : 0;
      for (let i = 0; i < n; i++) {
        const bit = from + rng.int(HEADER_SIZE * 8 - from);
        b[bit >> 3]! ^= 1 << (bit & 7);
      }
      c.log.push(`flip ${n} header bits`);
    } else if (k < 40) {
      const n = rng.range(1, 4);
      for (let i = 0; i < n; i++)
        b[rng.range(rng.chance(0.7) ? 16 : 0, HEADER_SIZE - 1)] = rng.int(256);
      c.log.push(`set ${n} header bytes`);
    } else if (k < 75) {
      const [name, off] = rng.pick(U32_FIELDS);
      const v = extremeU32(rng, b);
      b.writeUInt32LE(v, off);
      c.log.push(`${name}=0x${v.toString(16)}`);
    } else if (k < 85) {
      const off = rng.pick([0x24, 0x38]);
      const v = rng.pick([
        0n,
        1n,
        2n ** 32n,
        2n ** 53n - 1n,
        2n ** 53n + 1n,
        2n ** 63n,
        2n ** 64n - 1n,
        BigInt(rng.u32()) * 512n,
        BigInt(b.length / 512 + rng.int(10)),
      ]);
      b.writeBigUInt64LE(v, off);
      c.log.push(`u64@0x${off.toString(16)}=${v}`);
    } else if (k < 92) {
      // Swap the signature: BAT entries change units.
      const v1 = b.toString('latin1', 0, 16) === 'WithoutFreeSpace';
      b.write(v1 ? 'WithouFreSpacExt' : 'WithoutFreeSpace', 0, 'latin1');
      c.log.push('swap v1/v2 signature');
    } else {
      b.writeUInt32LE(rng.pick([IN_USE, CLOSED_V21, rng.u32()]), 0x2c);
      c.log.push('in-use value');
    }
  }
  return b;
}

/** Truncates, extends with garbage, or leaves the length alone. */
function mutateLength(c: Case, b: Buffer, cluster: number): Buffer {
  const rng = c.rng;
  const k = rng.int(100);
  if (k < 70) return b;
  if (k < 90) {
    const len = rng.pick([
      rng.int(HEADER_SIZE),
      rng.range(HEADER_SIZE, cluster),
      rng.int(b.length),
      b.length - rng.range(1, 512),
      Math.floor(rng.int(b.length) / cluster) * cluster,
    ]);
    c.log.push(`truncate to ${Math.max(0, len)}`);
    return b.subarray(0, Math.max(0, len));
  }
  const extra = Buffer.alloc(rng.pick([1, 511, 512, cluster, cluster + 7]));
  for (let i = 0; i < extra.length; i += 97) extra[i] = rng.int(256);
  c.log.push(`append ${extra.length} bytes`);
  return Buffer.concat([b, extra]);
}

// ---- BAT mutations --------------------------------------------------------------------------

function mutateBat(c: Case, b: Buffer, t: ImageTemplate): Buffer {
  const rng = c.rng;
  const { version, mapped, cluster } = t;
  const unit = version === 1 ? cluster / 512 : 1;
  const fileClusters = Math.ceil(b.length / cluster);
  const slots = (cluster - HEADER_SIZE) / 4;
  const entries = b.readUInt32LE(0x20);
  const get = (i: number) => b.readUInt32LE(HEADER_SIZE + 4 * i);
  const set = (i: number, v: number, why: string) => {
    b.writeUInt32LE(v >>> 0, HEADER_SIZE + 4 * i);
    c.log.push(`bat[${i}]=0x${(v >>> 0).toString(16)} (${why})`);
  };
  const anyIndex = () => (rng.chance(0.9) ? rng.int(Math.min(entries, slots)) : rng.int(slots));
  const mappedIndex = () => (mapped.length ? rng.pick(mapped) : anyIndex());
  const n = rng.pick([1, 1, 1, 2, 3, 4, 8]);
  for (let s = 0; s < n; s++) {
    const k = rng.int(110);
    if (k < 10) set(anyIndex(), 0xffffffff, 'reserved');
    else if (k < 25) set(anyIndex(), unit * (fileClusters + rng.range(0, 100)), 'beyond EOF');
    else if (k < 30) set(anyIndex(), rng.pick([0xfffffff0, 0x80000000, rng.u32()]), 'huge');
    else if (k < 45) set(anyIndex(), get(mappedIndex()), 'duplicate');
    else if (k < 55) set(mappedIndex(), get(mappedIndex()) + rng.range(1, 127), 'misaligned');
    else if (k < 65) set(anyIndex(), rng.range(1, unit * 2), 'into BAT area');
    else if (k < 75) set(mappedIndex(), 0, 'unmap (leak)');
    else if (k < 80) set(rng.range(Math.min(entries, slots), slots - 1), rng.u32(), 'padding slot');
    else if (k < 88) set(anyIndex(), unit * rng.range(1, fileClusters + 1), 'random valid-looking');
    else if (k < 93) {
      for (let i = 0; i < Math.min(entries, slots); i++)
        b.writeUInt32LE(unit * (1 + (i % 3)), HEADER_SIZE + 4 * i);
      c.log.push('every entry maps one of three clusters');
    } else if (k < 97) {
      for (let i = 0; i < Math.min(entries, slots); i++)
        b.writeUInt32LE(rng.chance(0.5) ? 0 : rng.u32(), HEADER_SIZE + 4 * i);
      c.log.push('random BAT');
    } else if (k < 103) {
      b.writeUInt32LE(rng.pick([IN_USE, CLOSED_V21]), 0x2c);
      c.log.push('dirty');
    } else {
      const [name, off] = rng.pick(U32_FIELDS);
      const v = extremeU32(rng, b);
      b.writeUInt32LE(v, off);
      c.log.push(`${name}=0x${v.toString(16)}`);
    }
  }
  // Most crash damage comes with the in-use flag: exercise repair on open.
  if (rng.chance(0.4)) {
    b.writeUInt32LE(IN_USE, 0x2c);
    c.log.push('in use');
  }
  return b;
}

// ---- image cases (single file or a chain) ---------------------------------------------------

async function runImageCase(c: Case, mutate: (b: Buffer, t: ImageTemplate) => Buffer) {
  const rng = c.rng;
  if (rng.chance(0.55)) {
    const t = pickTemplate(rng, singles);
    c.log.push(`single v${t.version} ${t.cluster}`);
    const bytes = mutateLength(c, mutate(Buffer.from(t.bytes), t), t.cluster);
    const file = path.join(work, `${c.kind}-${c.lane}.hds`);
    const restore = () => fsp.writeFile(file, bytes);
    await restore();
    const roOk = await roRead(c, file);
    await c.op('check', () => checkImage(file));
    // info opens the chain like ro-open does: a sample is enough.
    if (rng.chance(0.25)) await c.op('info', () => info(file));
    await rwSession(c, file, roOk);
    if (rng.chance(0.5)) {
      await restore();
      await repairOne(c, file);
    }
    if (roOk && rng.chance(0.12)) {
      await restore();
      await maintenance(c, file, false);
    }
    return;
  }
  const t = pickTemplate(rng, chains);
  const dir = path.join(work, `${c.kind}-chain-${c.lane}`);
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.mkdir(dir, { recursive: true });
  const dd = path.join(dir, DESCRIPTOR_NAME);
  const mutateTop = rng.chance(0.5);
  c.log.push(`chain v${t.version} ${t.cluster}, damaged ${mutateTop ? 'top' : 'base'}`);
  const src = mutateTop ? t.top : t.base;
  const damaged = mutateLength(
    c,
    mutate(Buffer.from(src), {
      version: t.version,
      cluster: t.cluster,
      bytes: src,
      mapped: mappedOf(src),
    }),
    t.cluster,
  );
  const base = mutateTop ? t.base : damaged;
  const top = mutateTop ? damaged : t.top;
  const restore = async () => {
    await fsp.writeFile(dd, t.xml);
    await fsp.writeFile(path.join(dir, t.baseName), base);
    await fsp.writeFile(path.join(dir, t.topName), top);
  };
  await restore();
  const roOk = await roRead(c, dd);
  await c.op('check', () => checkImage(path.join(dir, mutateTop ? t.topName : t.baseName)));
  if (rng.chance(0.25)) await c.op('info', () => info(dd));
  await rwSession(c, dd, roOk);
  if (rng.chance(0.5)) {
    await restore();
    await repairOne(c, path.join(dir, mutateTop ? t.topName : t.baseName));
  }
  if (roOk && rng.chance(0.12)) {
    await restore();
    await maintenance(c, dd, true);
  }
}

// ---- descriptor mutations -------------------------------------------------------------------

/** Spans of every element `<Name>…</Name>` (descriptor elements never nest in themselves). */
function elements(
  xml: string,
): { name: string; start: number; end: number; inner: [number, number] }[] {
  const out: { name: string; start: number; end: number; inner: [number, number] }[] = [];
  const open = /<([A-Za-z_][\w.-]*)>/g;
  for (let m = open.exec(xml); m; m = open.exec(xml)) {
    const close = xml.indexOf(`</${m[1]}>`, m.index);
    if (close < 0) continue;
    out.push({
      name: m[1]!,
      start: m.index,
      end: close + m[1]!.length + 3,
      inner: [m.index + m[0].length, close],
    });
  }
  return out;
}

function randomGuid(rng: Rng): string {
  const h = (n: number) =>
    Array.from({ length: n }, () => '0123456789abcdef'[rng.int(16)]).join('');
  return `{${h(8)}-${h(4)}-${h(4)}-${h(4)}-${h(12)}}`;
}

function mutateDescriptor(c: Case, xml: string, t: ChainTemplate): string {
  const rng = c.rng;
  const victim = path.join(work, 'victim.raw');
  const outside = path.join(work, 'outside.hds');
  const values = [
    '',
    '0',
    '1',
    '-1',
    '2048',
    '128',
    '256',
    '262144',
    '4096',
    '99999999999999999999',
    '9007199254740993',
    '9007199254740991',
    '4294967296',
    '1e3',
    '0x800',
    ' 2048 ',
    'NaN',
    randomGuid(rng),
    TOP_GUID,
    NONE_GUID,
    t.baseGuid,
    TOP_GUID.toUpperCase(),
    '5fbaabe3-6958-40ff-92a7-860e329aab41',
    '{5fbaabe3-6958-40ff-92a7-860e329aab4}',
    '../../etc/passwd',
    '/etc/passwd',
    '../victim.raw',
    victim,
    outside,
    `../${path.basename(path.dirname(victim))}/victim.raw`,
    '.',
    '..',
    'sub',
    'sub/',
    'DiskDescriptor.xml',
    'DiskDescriptor.xml.lck',
    t.baseName,
    t.topName,
    `./${t.baseName}`,
    `sub/../${t.topName}`,
    'missing.hds',
    'a'.repeat(rng.pick([255, 256, 5000])),
    '&lt;x&gt;',
    '&#0;',
    '&amp;',
    'Plain',
    'Compressed',
    '<![CDATA[root.hds]]>',
    '<x/>',
    '<Temporary/>',
  ];
  const steps = rng.range(1, 3);
  for (let s = 0; s < steps; s++) {
    const els = elements(xml);
    const k = rng.int(100);
    if (k < 10) {
      const len = rng.int(xml.length);
      xml = xml.slice(0, len);
      c.log.push(`truncate xml to ${len}`);
    } else if (k < 20) {
      const b = Buffer.from(xml, 'utf8');
      const n = rng.range(1, 8);
      for (let i = 0; i < n; i++) {
        if (!b.length) break;
        const bit = rng.int(b.length * 8);
        b[bit >> 3]! ^= 1 << (bit & 7);
      }
      xml = b.toString('utf8');
      c.log.push(`flip ${n} xml bits`);
    } else if (k < 30 && els.length) {
      const e = rng.pick(els);
      xml = xml.slice(0, e.start) + xml.slice(e.end);
      c.log.push(`delete <${e.name}>`);
    } else if (k < 40 && els.length) {
      const e = rng.pick(els);
      const seg = xml.slice(e.start, e.end);
      xml = xml.slice(0, e.end) + seg + xml.slice(e.end);
      c.log.push(`duplicate <${e.name}>`);
    } else if (k < 48 && els.length > 1) {
      const e = rng.pick(els);
      const at = rng.pick(els);
      const seg = xml.slice(e.start, e.end);
      const pos = rng.chance(0.5) ? at.start : at.inner[0];
      xml = xml.slice(0, pos) + seg + xml.slice(pos);
      c.log.push(`copy <${e.name}> into/before <${at.name}>`);
    } else if (k < 70 && els.length) {
      const leaves = els.filter((e) => !xml.slice(e.inner[0], e.inner[1]).includes('<'));
      const e = rng.pick(leaves.length ? leaves : els);
      const v = rng.pick(values);
      xml = xml.slice(0, e.inner[0]) + v + xml.slice(e.inner[1]);
      c.log.push(`<${e.name}>=${v.slice(0, 60)}`);
    } else if (k < 80) {
      // Path traversal and foreign files in <File>.
      const files = els.filter((e) => e.name === 'File');
      if (files.length) {
        const e = rng.pick(files);
        const v = rng.pick([
          '../../etc/passwd',
          '../victim.raw',
          victim,
          outside,
          '/etc/passwd',
          `../${path.basename(work)}/victim.raw`,
          'sub',
          '.',
          `sub/../../${path.basename(path.dirname(victim))}/victim.raw`,
          `${path.dirname(path.dirname(victim))}/${path.basename(work)}/outside.hds`,
        ]);
        xml = xml.slice(0, e.inner[0]) + v + xml.slice(e.inner[1]);
        c.log.push(`<File>=${v}`);
        if (rng.chance(0.5)) {
          xml = xml.replace(/<Type>Compressed<\/Type>/, '<Type>Plain</Type>');
          c.log.push('first image Plain');
        }
      }
    } else if (k < 88) {
      // Parent links: cycles, self-parents, dangling parents.
      const parents = els.filter((e) => e.name === 'ParentGUID');
      if (parents.length) {
        const e = rng.pick(parents);
        const v = rng.pick([TOP_GUID, t.baseGuid, randomGuid(rng), NONE_GUID]);
        xml = xml.slice(0, e.inner[0]) + v + xml.slice(e.inner[1]);
        c.log.push(`<ParentGUID>=${v}`);
      }
    } else if (k < 92) {
      xml = xml.replace(/<Type>(Compressed|Plain)<\/Type>/g, (m) =>
        rng.chance(0.5)
          ? m.includes('Plain')
            ? '<Type>Compressed</Type>'
            : '<Type>Plain</Type>'
          : m,
      );
      c.log.push('flip image types');
    } else if (k < 95) {
      const shots = els.filter((e) => e.name === 'Shot');
      if (shots.length) {
        const e = rng.pick(shots);
        xml = xml.slice(0, e.inner[1]) + '<Temporary/>' + xml.slice(e.inner[1]);
        c.log.push('add <Temporary/>');
      }
    } else if (k < 98) {
      const dtd = rng.pick([
        `<!DOCTYPE a [<!ENTITY f "${t.baseName}">]>`,
        '<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>',
        '<!DOCTYPE a SYSTEM "file:///etc/passwd">',
        '<?xml-stylesheet href="x"?>',
      ]);
      xml = xml.replace(/^<\?xml[^>]*\?>\s*/, (m) => m + dtd + '\n');
      if (dtd.includes('ENTITY f'))
        xml = xml.replace(`<File>${t.baseName}</File>`, '<File>&f;</File>');
      if (dtd.includes('ENTITY c')) xml = xml.replace('<Disk_size>', '<Disk_size>&c;');
      c.log.push(`dtd ${dtd.slice(0, 40)}`);
    } else {
      xml = xml.replace(/<(Image|Shot|Storage)>/, '<$1 a="1" xmlns="urn:x">');
      c.log.push('attributes');
    }
  }
  return xml;
}

async function runDescriptorCase(c: Case): Promise<void> {
  const rng = c.rng;
  const t = pickTemplate(rng, chains);
  const dir = path.join(work, `desc-${c.lane}`);
  const dd = path.join(dir, DESCRIPTOR_NAME);
  c.log.push(`chain v${t.version}`);
  const xml = mutateDescriptor(c, t.xml, t);
  // A fresh directory each time: disk operations create and remove files.
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.mkdir(path.join(dir, 'sub'), { recursive: true });
  await fsp.writeFile(dd, xml);
  await fsp.writeFile(path.join(dir, t.baseName), t.base);
  await fsp.writeFile(path.join(dir, t.topName), t.top);

  let parsed = false;
  await c.op('parse', () => {
    parseDescriptor(xml, dd);
    parsed = true;
  });
  await roRead(c, dd);
  await c.op('info', () => info(dd));
  await c.op('list', () => listSnapshots(dd));
  if (parsed) {
    const d = parseDescriptor(xml, dd);
    for (const im of d.images) {
      if (im.type !== 'Compressed') continue;
      await c.op('check', async () => checkImage(resolveImagePath(dd, im.file)));
    }
  }
  await rwSession(c, dd, false);
  if (parsed && rng.chance(0.15)) {
    const opts = { lockTimeoutMs: 5000 };
    const k = rng.int(4);
    if (k === 0) await c.op('snapshot', () => snapshot(dd, opts));
    else if (k === 1) await c.op('merge', () => mergeTop(dd, opts));
    else if (k === 2) await c.op('switch', () => switchSnapshot(dd, t.baseGuid, opts));
    else await c.op('delete', () => deleteSnapshot(dd, t.baseGuid, opts));
    await roRead(c, dd);
  }
}

// ---- the tests ------------------------------------------------------------------------------

/** Files outside the descriptor directory, with what they contain. */
async function outsideState(): Promise<string> {
  const lines: string[] = [];
  for (const name of (await fsp.readdir(work)).sort()) {
    if (name.startsWith('desc-')) continue;
    const p = path.join(work, name);
    const st = await fsp.stat(p);
    if (!st.isFile()) continue;
    const h = createHash('sha256')
      .update(await fsp.readFile(p))
      .digest('hex');
    lines.push(`${name} ${st.size} ${st.mtimeMs} ${h}`);
  }
  return lines.join('\n');
}

async function runAll(kind: keyof typeof COUNTS, run: (c: Case) => Promise<void>): Promise<void> {
  const t0 = Date.now();
  const todo = indices(kind);
  let next = 0;
  let hung = false;
  const lane = async (n: number) => {
    // A hung operation may still touch its lane's files: stop that lane.
    while (!hung && next < todo.length) {
      const i = todo[next++]!;
      const c = new Case(kind, i, new Rng(caseSeed(kind, i)), n);
      await run(c);
      casesRun++;
      if (c.hung) hung = true;
    }
  };
  await Promise.all(Array.from({ length: LANES }, (_, n) => lane(n)));
  console.log(`ploop fuzz ${kind}: ${indices(kind).length} cases in ${Date.now() - t0} ms`);
}

describe('fuzz', () => {
  it(
    'damaged headers and truncated files',
    async () => {
      await runAll('header', (c) => runImageCase(c, (b) => mutateHeader(c, b)));
      expect(report('header')).toBe('');
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'damaged BATs',
    async () => {
      await runAll('bat', (c) => runImageCase(c, (b, t) => mutateBat(c, b, t)));
      expect(report('bat')).toBe('');
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'damaged descriptors, path traversal, cycles',
    async () => {
      // Bait outside the descriptor directory: a raw file and a valid image.
      await fsp.writeFile(path.join(work, 'victim.raw'), Buffer.alloc(CLUSTERS * LARGE, 0x5a));
      await fsp.writeFile(path.join(work, 'outside.hds'), singles[0]!.bytes);
      const before = await outsideState();
      await runAll('descriptor', runDescriptorCase);
      expect(report('descriptor')).toBe('');
      expect(await outsideState()).toBe(before);
      // Nothing was created next to the descriptor directory either.
      const names = (await fsp.readdir(work)).filter((n) => !/^(header|bat|desc)-/.test(n)).sort();
      expect(names).toEqual(['outside.hds', 'victim.raw']);
    },
    TEST_TIMEOUT_MS,
  );

  it('ran enough cases', () => {
    if (ONLY || SCALE < 1) return;
    expect(casesRun).toBeGreaterThanOrEqual(10_000);
  });
});
