/**
 * Crash consistency (ploop-format.md §5). A sequence of operations runs on a disk directory
 * through a recording file system: random writes with flushes on the base, a snapshot, writes
 * on the top that end with the process dying (chain never closed), a snapshot that repairs the
 * dirty top, more writes, a grow that needs a second BAT cluster (so data clusters are
 * relocated), writes past the old end, deleting the first snapshot (merging the middle delta
 * into the base), merging the top (whose target must grow too), discards, a compaction and a
 * raw import. Then, for many cut points in the recorded log and a few variants per cut, the
 * state a crash could leave is rebuilt (see `crashState` for the model of what survives) and
 * must:
 *  - keep a parseable descriptor and a chain that opens read-write (repairing a dirty top);
 *  - check clean, every delta (lower deltas left dirty are repaired with checkImage; a delta
 *    not marked dirty must check clean as it is);
 *  - read back everything that was durable: the disk content at the last flush, close or
 *    operation that returned before the cut, except bytes that a later, unfinished write,
 *    discard or write-zeroes may have changed (those may hold any value one of them wrote);
 *  - finish an interrupted merge on the next descriptor operation with the same content;
 *  - hold the complete import once importRaw returned, and never wrong data before.
 *
 * Runs for a version 2 and a version 1 disk. PLOOP_CRASH_SEED reproduces a run (printed);
 * PLOOP_CRASH_CUTS bounds the cut points checked per version, PLOOP_CRASH_BUDGET_MS the time,
 * PLOOP_CRASH_VARIANTS the random variants per cut.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  Chain,
  CorruptImageError,
  PloopImage,
  checkImage,
  chainGuids,
  compactImage,
  createDisk,
  deleteSnapshot,
  growDisk,
  imageOf,
  importRaw,
  isDirty,
  mergeTop,
  nodeFileSystem,
  readDescriptor,
  resolveImagePath,
  snapshot,
} from '../src/ploop/index.js';
import { Prng, seedFromEnv } from './support/prng.js';
import {
  CrashPolicy,
  RecordingFileSystem,
  crashState,
  materialize,
} from './support/recording-fs.js';
import { scratchRoot } from './support/scratch.js';
import {
  SparseDisk,
  clusterRuns,
  describeLocation,
  hexAround,
  interestingClusters,
} from './support/sparse-disk.js';

const CLUSTER = 64 << 10;
const MiB = 1 << 20;
const BASE_SIZE = 2 * MiB;
/** Past 1023 MiB a 64 KiB-cluster image needs a second BAT cluster. */
const GROWN_SIZE = 1100 * MiB;
const RAW_SIZE = 1 * MiB + 3 * 4096;
const DEFAULT_SEED = 0xc0ffee;
const MAX_CUTS = Number(process.env.PLOOP_CRASH_CUTS ?? 400);
/**
 * Checking stops after this long, shared by the versions (but not before MIN_CUTS cuts each);
 * the order of the cuts covers all phases evenly.
 */
const BUDGET_MS = Number(process.env.PLOOP_CRASH_BUDGET_MS ?? 60_000);
const MIN_CUTS = 40;
/** Randomly decided variants per cut, besides "everything kept" and "everything lost". */
const RANDOM_VARIANTS = Number(process.env.PLOOP_CRASH_VARIANTS ?? 2);

/** A change an unfinished operation may have made: bytes written, or a zeroed range. */
type Change = { off: number; data: Uint8Array } | { off: number; len: number };

type Note =
  | { t: 'begin'; what: string; changes: Change[]; growTo?: number }
  | { t: 'durable'; what: string; model: SparseDisk }
  | { t: 'import-begin' }
  | { t: 'import-done' };

/** What a crash after `cut` log entries must preserve. */
interface Expectation {
  phase: string;
  model: SparseDisk;
  pending: Change[];
  sizes: Set<number>;
  importBegun: boolean;
  importDone: boolean;
}

function expectationAt(rec: RecordingFileSystem<Note>, cut: number, initial: SparseDisk) {
  const e: Expectation = {
    phase: 'start',
    model: initial,
    pending: [],
    sizes: new Set([initial.size]),
    importBegun: false,
    importDone: false,
  };
  for (let i = 0; i < cut; i++) {
    const entry = rec.log[i]!;
    if (entry.kind !== 'mark') continue;
    const n = entry.value;
    if (n.t === 'begin') {
      e.phase = `in ${n.what}`;
      e.pending.push(...n.changes);
      if (n.growTo !== undefined) e.sizes.add(n.growTo);
    } else if (n.t === 'durable') {
      e.phase = `after ${n.what}`;
      e.model = n.model;
      e.pending = [];
      e.sizes = new Set([n.model.size]);
    } else if (n.t === 'import-begin') {
      e.phase = 'in importRaw';
      e.importBegun = true;
    } else {
      e.phase = 'after importRaw';
      e.importDone = true;
    }
  }
  return e;
}

/** Compares the chain with the expectation; returns the first violation or null. */
async function diffCrashed(chain: Chain, exp: Expectation): Promise<string | null> {
  const size = chain.virtualSize;
  if (!exp.sizes.has(size)) return `virtual size ${size}, expected one of ${[...exp.sizes]}`;
  const cs = chain.clusterSize;
  const vcs = new Set(interestingClusters(chain, exp.model, size));
  for (const c of exp.pending) {
    const len = 'data' in c ? c.data.length : c.len;
    for (let vc = Math.floor(c.off / cs); vc * cs < c.off + len; vc++) vcs.add(vc);
  }
  for (const [first, count] of clusterRuns([...vcs].filter((vc) => vc * cs < size))) {
    const start = first * cs;
    const len = Math.min(count * cs, size - start);
    const part = Buffer.alloc(len);
    await chain.read(part, start);
    const inModel = Math.max(0, Math.min(len, exp.model.size - start));
    const want = Buffer.alloc(len);
    if (inModel > 0) want.set(exp.model.read(start, inModel));
    if (part.equals(want)) continue;
    for (let i = 0; i < len; i++) {
      if (part[i] === want[i]) continue;
      const off = start + i;
      const explained = exp.pending.some((c) =>
        'data' in c
          ? off >= c.off && off < c.off + c.data.length && c.data[off - c.off] === part[i]
          : off >= c.off && off < c.off + c.len && part[i] === 0,
      );
      if (!explained) {
        const vc = Math.floor(off / cs);
        return (
          `byte ${off} (cluster ${vc} +${off % cs}) is ${hexAround(part, i)}, durable content ` +
          `${hexAround(want, i)}, no unfinished write explains it (${describeLocation(chain, vc)})`
        );
      }
    }
  }
  return null;
}

// ---- the recorded scenario ----------------------------------------------------------------

class Scenario {
  model: SparseDisk;
  readonly dd: string;
  readonly raw: string;
  readonly imported: string;

  constructor(
    readonly rec: RecordingFileSystem<Note>,
    readonly rng: Prng,
    readonly dir: string,
    readonly version: 1 | 2,
  ) {
    this.model = new SparseDisk(BASE_SIZE, CLUSTER);
    this.dd = path.join(dir, 'DiskDescriptor.xml');
    this.raw = path.join(dir, 'source.raw');
    this.imported = path.join(dir, 'imported.hds');
  }

  /** Content at the last durable point, and what unfinished operations changed since. */
  lastDurable!: SparseDisk;
  pending: Change[] = [];

  durable(what: string): void {
    this.lastDurable = this.model.clone();
    this.pending = [];
    this.rec.mark({ t: 'durable', what, model: this.lastDurable });
  }

  begin(what: string, changes: Change[] = [], growTo?: number): void {
    this.pending.push(...changes);
    this.rec.mark({ t: 'begin', what, changes, growTo });
  }

  randomRange(lo: number, hi: number): { off: number; len: number } {
    const shape = this.rng.weighted({ small: 3, sectors: 2, cross: 3, whole: 2 });
    let off = lo + this.rng.int(hi - lo);
    let len: number;
    if (shape === 'small') len = this.rng.range(1, 900);
    else if (shape === 'sectors') {
      off -= off % 512;
      len = 512 * this.rng.range(1, 40);
    } else if (shape === 'cross') {
      off = Math.max(lo, off - (off % CLUSTER) - this.rng.range(1, 3000));
      len = this.rng.range(2, CLUSTER + 6000);
    } else {
      off -= off % CLUSTER;
      len = CLUSTER * this.rng.range(1, 2);
    }
    off = Math.max(lo, Math.min(off, hi - 1));
    return { off, len: Math.max(1, Math.min(len, hi - off)) };
  }

  /**
   * Random writes (some all-zero), discards and write-zeroes, a flush every few operations,
   * then a clean close; or, with `abandon`, a few more writes and no close at all (the process
   * died: the top stays marked in use).
   */
  async writes(
    what: string,
    count: number,
    windows: [number, number][],
    abandon = false,
  ): Promise<void> {
    const chain = await Chain.open(this.dd, { fs: this.rec });
    for (let i = 0; i < count; i++) {
      const [lo, hi] = this.rng.pick(windows);
      const { off, len } = this.randomRange(lo, hi);
      const kind = this.rng.weighted({ write: 8, zero: 1, discard: 1, writeZeroes: 1 });
      if (kind === 'write' || kind === 'zero') {
        const data = kind === 'zero' ? new Uint8Array(len) : this.rng.bytes(len);
        this.begin(`${what}: write ${off}+${len}`, [{ off, data }]);
        await chain.write(data, off);
        this.model.write(off, data);
      } else if (kind === 'discard') {
        const first = Math.ceil(off / CLUSTER) * CLUSTER;
        const end = Math.floor((off + len) / CLUSTER) * CLUSTER;
        this.begin(`${what}: discard ${off}+${len}`, [
          { off: first, len: Math.max(0, end - first) },
        ]);
        await chain.discard(off, len);
        this.model.discard(off, len);
      } else {
        const noUnmap = this.rng.chance(0.5);
        this.begin(`${what}: writeZeroes ${off}+${len}`, [{ off, len }]);
        await chain.writeZeroes(off, len, { noUnmap });
        this.model.zero(off, len);
      }
      if ((i % 4 === 3 || this.rng.chance(0.1)) && !(abandon && i >= count - 3)) {
        this.begin(`${what}: flush`);
        await chain.flush();
        this.durable(`${what}: flush`);
      }
    }
    if (abandon) {
      for (const d of chain.deltas) {
        if (d instanceof PloopImage) await d.abandon();
        else await d.file.close();
      }
      return;
    }
    this.begin(`${what}: close`);
    await chain.close();
    this.durable(`${what}: close`);
  }

  /** Discards whole clusters of a single-delta disk so that compaction has holes to fill. */
  async punchHoles(): Promise<void> {
    const chain = await Chain.open(this.dd, { fs: this.rec });
    for (const vc of [1, 3, 4, 8, 9, 10, 20]) {
      this.begin(`holes: discard cluster ${vc}`, [{ off: vc * CLUSTER, len: CLUSTER }]);
      await chain.discard(vc * CLUSTER, CLUSTER);
      this.model.discard(vc * CLUSTER, CLUSTER);
    }
    this.begin('holes: close');
    await chain.close();
    this.durable('holes: close');
  }

  /**
   * After an abandoned chain, the next operation (a snapshot) repairs the dirty top. Unflushed
   * writes may or may not have survived; what the disk holds then must be explained by them,
   * and becomes the durable content.
   */
  async recoverWithSnapshot(): Promise<string> {
    this.begin('recovery snapshot');
    const guid = await snapshot(this.dd, { fs: this.rec });
    const chain = await Chain.open(this.dd, { readOnly: true, fs: this.rec });
    try {
      const diff = await diffCrashed(chain, {
        phase: 'recovery',
        model: this.lastDurable,
        pending: this.pending,
        sizes: new Set([this.model.size]),
        importBegun: false,
        importDone: false,
      });
      expect(diff).toBeNull();
      const adopted = new SparseDisk(this.model.size, CLUSTER);
      const vcs = new Set(interestingClusters(chain, this.model, this.model.size));
      for (const vc of vcs) {
        const buf = new Uint8Array(CLUSTER);
        await chain.read(buf, vc * CLUSTER);
        adopted.write(vc * CLUSTER, buf);
      }
      this.model = adopted;
    } finally {
      await chain.close();
    }
    this.durable('recovery snapshot');
    return guid;
  }

  /** Whether the top (or its parent) maps the cluster right after a one-cluster BAT. */
  async mapsFirstDataCluster(top: boolean): Promise<boolean> {
    const d = await readDescriptor(nodeFileSystem, this.dd);
    const guids = chainGuids(d, this.dd);
    const guid = guids[guids.length - (top ? 1 : 2)]!;
    const img = await PloopImage.open(resolveImagePath(this.dd, imageOf(d, guid).file), {
      readOnly: true,
    });
    try {
      return img.dataOffBytes === CLUSTER && img.bat.some((_, vc) => img.map(vc) === CLUSTER);
    } finally {
      await img.close();
    }
  }

  async run(): Promise<void> {
    const fs = this.rec;
    this.durable('start');
    await this.writes('base writes', 40, [[0, BASE_SIZE]]);

    this.begin('snapshot');
    const first = await snapshot(this.dd, { fs });
    this.durable('snapshot');

    await this.writes('abandoned writes', 20, [[0, BASE_SIZE]], true);
    await this.recoverWithSnapshot();
    await this.writes('top writes', 12, [[0, BASE_SIZE]]);

    // The grow must move the top's first data cluster out of the way of the second BAT cluster.
    expect(await this.mapsFirstDataCluster(true)).toBe(true);
    this.begin('grow', [], GROWN_SIZE);
    const grown = await growDisk(this.dd, GROWN_SIZE, { fs });
    expect(grown).toBe(GROWN_SIZE);
    this.model.grow(grown);
    this.durable('grow');

    await this.writes('grown writes', 16, [
      [0, BASE_SIZE],
      [GROWN_SIZE - 4 * MiB, GROWN_SIZE],
    ]);

    // base ← middle (the middle's GUID moves onto the base file), then top → base (which
    // must grow, relocating its own data clusters).
    this.begin('deleteSnapshot');
    await deleteSnapshot(this.dd, first, { fs });
    this.durable('deleteSnapshot');

    // So must the merge, in its target.
    expect(await this.mapsFirstDataCluster(false)).toBe(true);
    this.begin('mergeTop');
    await mergeTop(this.dd, { fs });
    this.durable('mergeTop');

    await this.punchHoles();

    this.begin('compact');
    const base = resolveImagePath(this.dd, 'root.hds');
    const img = await PloopImage.open(base, { fs });
    const r = await compactImage(img);
    await img.close();
    expect(r.moved).toBeGreaterThan(0);
    this.durable('compact');

    this.rec.mark({ t: 'import-begin' });
    await importRaw(this.raw, this.imported, { clusterSize: CLUSTER, version: this.version, fs });
    this.rec.mark({ t: 'import-done' });
  }
}

// ---- verification of one crash state -------------------------------------------------------

interface Stats {
  states: number;
  repairedLower: number;
  repairedTop: number;
  finishedMerges: number;
  importsAbsent: number;
  importsUnreadable: number;
  byPhase: Map<string, number>;
}

async function checkClean(file: string, what: string): Promise<void> {
  const r = await checkImage(file);
  const errors = r.findings.filter((f) => f.severity === 'error');
  if (!r.clean || errors.length) {
    throw new Error(
      `${what}: ${path.basename(file)} does not check clean: ` +
        r.findings.map((f) => f.message).join('; '),
    );
  }
}

async function deltaFiles(dd: string): Promise<string[]> {
  const d = await readDescriptor(nodeFileSystem, dd);
  return chainGuids(d, dd).map((g) => resolveImagePath(dd, imageOf(d, g).file));
}

async function verifyState(
  dir: string,
  exp: Expectation,
  rawData: SparseDisk,
  stats: Stats,
): Promise<void> {
  const dd = path.join(dir, 'DiskDescriptor.xml');
  // The descriptor parses, whatever step the crash interrupted.
  const d = await readDescriptor(nodeFileSystem, dd);
  const files = await deltaFiles(dd);
  const top = files[files.length - 1]!;

  // Lower deltas: a clean one checks clean as it is; a dirty one (merge target) is repaired.
  for (const f of files.slice(0, -1)) {
    if (await isDirty(f)) {
      const r = await checkImage(f, { repair: true });
      if (!r.clean) throw new Error(`repair of ${path.basename(f)} failed: ${JSON.stringify(r)}`);
      stats.repairedLower++;
    }
    await checkClean(f, 'lower delta after the crash');
  }
  if (!(await isDirty(top))) await checkClean(top, 'top delta marked clean after the crash');
  else stats.repairedTop++;

  // The chain opens read-write (repairing the top) and holds the durable content.
  const chain = await Chain.open(dd);
  try {
    const diff = await diffCrashed(chain, exp);
    if (diff) throw new Error(`after reopening: ${diff}`);
  } finally {
    await chain.close();
  }
  for (const f of files) await checkClean(f, 'after reopening and closing');

  // An interrupted merge is finished by the next descriptor operation, content unchanged.
  if (d.snapshots.some((s) => s.temporary)) {
    await snapshot(dd);
    stats.finishedMerges++;
    const after = await readDescriptor(nodeFileSystem, dd);
    if (after.snapshots.some((s) => s.temporary)) throw new Error('merge still pending');
    const again = await Chain.open(dd, { readOnly: true });
    try {
      const diff = await diffCrashed(again, exp);
      if (diff) throw new Error(`after finishing the merge: ${diff}`);
    } finally {
      await again.close();
    }
    for (const f of await deltaFiles(dd)) await checkClean(f, 'after finishing the merge');
  }

  // The imported image: complete once importRaw returned; before, absent or never wrong.
  if (exp.importBegun) {
    const imported = path.join(dir, 'imported.hds');
    const exists = await nodeFileSystem.exists(imported);
    if (exp.importDone && !exists) throw new Error('imported image lost after importRaw returned');
    if (!exists) {
      stats.importsAbsent++;
      return;
    }
    let img: Chain;
    try {
      img = await Chain.open(imported);
    } catch (err) {
      if (exp.importDone || !(err instanceof CorruptImageError)) throw err;
      stats.importsUnreadable++;
      return;
    }
    try {
      const partial: Expectation = {
        phase: exp.phase,
        model: exp.importDone ? rawData : new SparseDisk(rawData.size, CLUSTER),
        // Before completion, every cluster may hold the raw data or nothing.
        pending: exp.importDone
          ? []
          : [...rawData.clusters].map(([vc, data]) => ({ off: vc * CLUSTER, data })),
        sizes: new Set([Math.ceil(rawData.size / CLUSTER) * CLUSTER]),
        importBegun: true,
        importDone: exp.importDone,
      };
      const diff = await diffCrashed(img, partial);
      if (diff) throw new Error(`imported image: ${diff}`);
    } finally {
      await img.close();
    }
    await checkClean(imported, 'imported image');
  }
}

/** The coarse phase of each cut ("in mergeTop", "after grown writes", …). */
function phaseOfCut(rec: RecordingFileSystem<Note>, cuts: number[]): Map<number, string> {
  const out = new Map<number, string>();
  let phase = 'start';
  let i = 0;
  for (const cut of cuts) {
    for (; i < cut; i++) {
      const e = rec.log[i]!;
      if (e.kind !== 'mark') continue;
      const n = e.value;
      if (n.t === 'begin') phase = `in ${n.what}`;
      else if (n.t === 'durable') phase = `after ${n.what}`;
      else phase = n.t === 'import-begin' ? 'in importRaw' : 'after importRaw';
    }
    out.set(cut, phase.split(':')[0]!);
  }
  return out;
}

/**
 * Cut points in the order to check them. A cut `c` means the first `c` log entries happened;
 * cuts lie just before file operations, so whatever returned before one counts as returned.
 * When there are more than `max`, the choice is spread evenly over the phases (round robin,
 * shuffled within each), so that every operation is covered even if the time budget ends the
 * run early.
 */
function chooseCuts(rec: RecordingFileSystem<Note>, rng: Prng, max: number): number[] {
  const all: number[] = [];
  for (let i = 0; i < rec.log.length; i++) if (rec.log[i]!.kind !== 'mark') all.push(i);
  all.push(rec.log.length);
  const phases = phaseOfCut(rec, all);
  const groups = new Map<string, number[]>();
  for (const c of all) {
    const g = phases.get(c)!;
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g)!.push(c);
  }
  for (const g of groups.values()) {
    for (let i = g.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [g[i], g[j]] = [g[j]!, g[i]!];
    }
  }
  // The very end (everything returned) is always checked first.
  const order: number[] = [rec.log.length];
  const queues = [...groups.values()];
  while (order.length < Math.min(max, all.length)) {
    for (const q of queues) {
      const c = q.shift();
      if (c !== undefined && c !== rec.log.length && order.length < max) order.push(c);
    }
    if (queues.every((q) => q.length === 0)) break;
  }
  return order;
}

async function runCrashTest(seed: number, version: 1 | 2, budgetMs: number): Promise<void> {
  console.log(
    `crash test v${version}: seed ${seed} (PLOOP_CRASH_SEED), at most ${MAX_CUTS} cut points`,
  );
  const started = Date.now();
  const rng = new Prng(seed);
  const root = await mkdtemp(path.join(await scratchRoot(), 'ploop-crash-'));
  try {
    const dir = path.join(root, 'disk');
    await createDisk(dir, { size: BASE_SIZE, clusterSize: CLUSTER, version });
    // The raw source: random clusters, some zero (skipped by the import), a partial tail.
    const rawModel = new SparseDisk(RAW_SIZE, CLUSTER);
    const raw = Buffer.alloc(RAW_SIZE);
    for (let off = 0; off < RAW_SIZE; off += CLUSTER) {
      if (rng.chance(0.3)) continue;
      const data = rng.bytes(Math.min(CLUSTER, RAW_SIZE - off));
      raw.set(data, off);
      rawModel.write(off, data);
    }
    rawModel.grow(Math.ceil(RAW_SIZE / CLUSTER) * CLUSTER);
    await writeFile(path.join(dir, 'source.raw'), raw);

    const rec = new RecordingFileSystem<Note>();
    await rec.start(dir, (name) => name.endsWith('.lck'));
    const scenario = new Scenario(rec, rng.fork(), dir, version);
    const initial = scenario.model.clone();
    await scenario.run();
    const recordedMs = Date.now() - started;

    const cuts = chooseCuts(rec, rng.fork(), MAX_CUTS);
    const phases = phaseOfCut(
      rec,
      [...cuts].sort((a, b) => a - b),
    );
    const stats: Stats = {
      states: 0,
      repairedLower: 0,
      repairedTop: 0,
      finishedMerges: 0,
      importsAbsent: 0,
      importsUnreadable: 0,
      byPhase: new Map(),
    };
    const policies: CrashPolicy[] = [
      'all-kept',
      'all-lost',
      ...Array.from({ length: RANDOM_VARIANTS }, () => 'random' as const),
    ];
    const work = path.join(root, 'crashed');
    let checked = 0;
    for (const cut of cuts) {
      if (Date.now() - started > budgetMs && checked >= MIN_CUTS) {
        console.log(
          `crash test v${version}: time budget used up after ${checked} of ${cuts.length} cuts`,
        );
        break;
      }
      checked++;
      const exp = expectationAt(rec, cut, initial);
      const seen = new Set<string>();
      const cutRng = new Prng((seed ^ Math.imul(cut, 0x9e3779b1)) >>> 0);
      for (const policy of policies) {
        const state = crashState(rec, cut, policy, cutRng, (p) => p === scenario.raw);
        if (seen.has(state.signature)) continue;
        seen.add(state.signature);
        await materialize(state, work);
        try {
          await verifyState(work, exp, rawModel, stats);
        } catch (err) {
          const last = rec.log
            .slice(Math.max(0, cut - 6), cut)
            .map((e) =>
              e.kind === 'mark' ? `mark ${JSON.stringify(e.value).slice(0, 80)}` : describeOp(e),
            );
          throw new Error(
            `v${version}, seed ${seed}, cut ${cut}/${rec.log.length} (${exp.phase}), ${policy} ` +
              `[${state.signature.slice(0, 300)}]: ${(err as Error).stack}\nlast entries:\n  ${last.join('\n  ')}`,
          );
        }
        stats.states++;
        const phase = phases.get(cut)!;
        stats.byPhase.set(phase, (stats.byPhase.get(phase) ?? 0) + 1);
      }
    }
    console.log(
      `crash test v${version}: ${rec.opCount} recorded file operations (${recordedMs} ms), ${checked} cuts, ` +
        `${stats.states} crash states in ${Date.now() - started} ms; repaired lower ` +
        `${stats.repairedLower}, top ${stats.repairedTop}; finished merges ${stats.finishedMerges}; ` +
        `import absent ${stats.importsAbsent}, unreadable ${stats.importsUnreadable}`,
    );
    console.log([...stats.byPhase].map(([k, v]) => `${k}: ${v}`).join('; '));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

describe('crash consistency', () => {
  const seed = seedFromEnv('PLOOP_CRASH_SEED') ?? DEFAULT_SEED;
  for (const version of [2, 1] as const) {
    it(
      `v${version}: every crash state repairs to a clean disk holding all durable data`,
      () => runCrashTest(seed, version, BUDGET_MS / 2),
      BUDGET_MS + 60_000,
    );
  }
});

function describeOp(
  e: Exclude<RecordingFileSystem<Note>['log'][number], { kind: 'mark' }>,
): string {
  const name = (p: string) => path.basename(p);
  switch (e.kind) {
    case 'write':
      return `write ${name(e.path)} ${e.pos}+${e.data.length}`;
    case 'truncate':
      return `truncate ${name(e.path)} ${e.length}`;
    case 'punchHole':
    case 'allocate':
      return `${e.kind} ${name(e.path)} ${e.pos}+${e.length}`;
    case 'sync':
      return `sync ${name(e.path)}`;
    case 'create':
      return `create ${name(e.path)}`;
    case 'rename':
      return `rename ${name(e.from)} -> ${name(e.to)}`;
    case 'unlink':
      return `unlink ${name(e.path)}`;
    default:
      return `syncDir`;
  }
}
