/**
 * Model-based random test of the ploop library. Thousands of random operations on disk
 * directories (writes of every shape, reads, discards, write-zeroes, flushes, bursts of
 * operations issued without waiting, reopen, snapshot, merge, delete, switch, grow, compact)
 * are mirrored on a plain in-memory model. The disk must always read exactly like the model,
 * every snapshot must keep the content it had when taken, every delta must check clean, and at
 * the end export, flatten and import must reproduce the model. Scenarios (picked by the seed):
 * v1 and v2, expanded, preallocated and raw bases, small disks and disks that grow past the
 * size where the BAT needs a second cluster.
 *
 * Reproduce a run with PLOOP_MODEL_SEED=<seed> (printed for every run); PLOOP_MODEL_STEPS
 * changes the number of operations per seed.
 */
import { FileHandle, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  Chain,
  PloopImage,
  chainGuids,
  checkImage,
  compactImage,
  createDisk,
  deleteSnapshot,
  exportRaw,
  flatten,
  growDisk,
  imageOf,
  importRaw,
  listSnapshots,
  mergeTop,
  nodeFileSystem,
  readDescriptor,
  readZeroFilled,
  resolveImagePath,
  snapshot,
  switchSnapshot,
} from '../src/ploop/index.js';
import { Prng, seedFromEnv } from './support/prng.js';
import { scratchRoot } from './support/scratch.js';
import { SparseDisk, diffChain, firstDiff, hexAround } from './support/sparse-disk.js';

const CLUSTER = 64 << 10;
const MiB = 1 << 20;
/** One seed per scenario (the seed picks the scenario: seed % 6). */
const DEFAULT_SEEDS = [0x5eed0000, 0x5eed0001, 0x5eed0002, 0x5eed0003, 0x5eed0004, 0x5eed0005];
const STEPS = Number(process.env.PLOOP_MODEL_STEPS ?? 500);

interface Scenario {
  name: string;
  version: 1 | 2;
  format: 'expanded' | 'preallocated' | 'raw';
  size: number;
  maxSize: number;
  /** Where most operations land: [start, length) windows; the rest are uniform. */
  hot: (size: number) => [number, number][];
}

/** Just below the size where a 64 KiB-cluster BAT needs a second cluster (1023 MiB). */
function batGrowth(version: 1 | 2): Scenario {
  return {
    name: `v${version} 1020 MiB, BAT growth`,
    version,
    format: 'expanded',
    size: 1020 * MiB,
    maxSize: 1030 * MiB,
    hot: (size) => [
      [0, 4 * MiB],
      [size - 4 * MiB, 4 * MiB],
      [1022 * MiB, 2 * MiB],
    ],
  };
}

/** The seed alone decides the scenario, so a printed seed reproduces the whole run. */
function scenarioFor(seed: number): Scenario {
  const small = (
    name: string,
    version: 1 | 2,
    format: Scenario['format'],
    size: number,
  ): Scenario => ({ name, version, format, size, maxSize: size + 8 * MiB, hot: () => [] });
  switch (seed % 6) {
    case 0:
      return small('v2 4 MiB', 2, 'expanded', 4 * MiB);
    case 1:
      // Not a cluster multiple: rounded up on creation.
      return small('v1 6 MiB', 1, 'expanded', 6 * MiB - 1000);
    case 2:
      return small('v2 4 MiB, raw base', 2, 'raw', 4 * MiB);
    case 3:
      return batGrowth(2);
    case 4: {
      const v = seed % 12 === 4 ? 2 : 1;
      return small(`v${v} 4 MiB, preallocated`, v, 'preallocated', 4 * MiB);
    }
    default:
      return batGrowth(1);
  }
}

/**
 * Compares snapshot `guid` of the disk at `dd` with `want`, reading the snapshot's own chain of
 * deltas (base … guid) cluster by cluster: the topmost delta that maps a cluster supplies it.
 */
async function diffSnapshotView(
  dd: string,
  guid: string,
  want: SparseDisk,
): Promise<string | null> {
  const d = await readDescriptor(nodeFileSystem, dd);
  const cs = want.clusterSize;
  type View = {
    map: (vc: number) => number;
    file: FileHandle | PloopImage;
    close: () => Promise<void>;
  };
  const views: View[] = [];
  try {
    let size = 0;
    for (const g of chainGuids(d, dd, guid)) {
      const im = imageOf(d, g);
      const file = resolveImagePath(dd, im.file);
      if (im.type === 'Plain') {
        const fh = await open(file, 'r');
        const rawSize = (await fh.stat()).size;
        size = rawSize;
        views.push({
          map: (vc) => (vc * cs < rawSize ? vc * cs : -1),
          file: fh,
          close: () => fh.close(),
        });
      } else {
        const img = await PloopImage.open(file, { readOnly: true });
        size = img.virtualSize;
        views.push({ map: (vc) => img.map(vc), file: img, close: () => img.close() });
      }
    }
    if (size !== want.size) return `size ${size}, expected ${want.size}`;
    const vcs = new Set(want.clusters.keys());
    for (const v of views) for (let vc = 0; vc * cs < size; vc++) if (v.map(vc) >= 0) vcs.add(vc);
    // Segments of consecutive clusters stored consecutively in one delta (or in none).
    type Segment = { vc: number; count: number; view: number; host: number };
    const segments: Segment[] = [];
    for (const vc of [...vcs].filter((x) => x * cs < size).sort((a, b) => a - b)) {
      let view = -1;
      for (let i = views.length - 1; i >= 0 && view < 0; i--) if (views[i]!.map(vc) >= 0) view = i;
      const host = view >= 0 ? views[view]!.map(vc) : -1;
      const last = segments[segments.length - 1];
      if (
        last &&
        last.view === view &&
        last.vc + last.count === vc &&
        (view < 0 || last.host + last.count * cs === host) &&
        last.count < 32
      ) {
        last.count++;
      } else {
        segments.push({ vc, count: 1, view, host });
      }
    }
    for (const seg of segments) {
      const off = seg.vc * cs;
      const len = Math.min(seg.count * cs, size - off);
      const buf = Buffer.alloc(len);
      const v = views[seg.view];
      if (v) {
        if (v.file instanceof PloopImage) await readZeroFilled(v.file.file, buf, seg.host);
        else await v.file.read(buf, 0, len, seg.host);
      }
      const exp = want.read(off, len);
      const at = firstDiff(buf, exp);
      if (at >= 0) {
        return `byte ${off + at} is ${hexAround(buf, at)}, expected ${hexAround(exp, at)}`;
      }
    }
    return null;
  } finally {
    for (const v of views) await v.close();
  }
}

class ModelRun {
  readonly rng: Prng;
  readonly scenario: Scenario;
  dir = '';
  dd = '';
  chain: Chain | null = null;
  model!: SparseDisk;
  /** Content of every snapshot (non-top GUID) as it was when taken. */
  readonly snaps = new Map<string, SparseDisk>();
  readonly snapsChecked = new Set<string>();
  step = 0;
  readonly history: string[] = [];
  readonly counts: Record<string, number> = {};

  constructor(readonly seed: number) {
    this.rng = new Prng(seed);
    this.scenario = scenarioFor(seed);
  }

  fail(message: string): never {
    throw new Error(
      `seed ${this.seed} (${this.scenario.name}), step ${this.step}: ${message}\n` +
        `reproduce with PLOOP_MODEL_SEED=${this.seed}\nlast operations:\n  ` +
        this.history.slice(-25).join('\n  '),
    );
  }

  log(op: string): void {
    this.history.push(`#${this.step} ${op}`);
    if (this.history.length > 200) this.history.splice(0, 100);
    const kind = op.split(' ')[0]!;
    this.counts[kind] = (this.counts[kind] ?? 0) + 1;
  }

  async setup(): Promise<void> {
    this.dir = await mkdtemp(path.join(await scratchRoot(), 'ploop-model-'));
    const disk = path.join(this.dir, 'disk');
    const r = await createDisk(disk, {
      size: this.scenario.size,
      clusterSize: CLUSTER,
      version: this.scenario.version,
      format: this.scenario.format,
    });
    this.dd = r.descriptorPath;
    const size = Math.ceil(this.scenario.size / CLUSTER) * CLUSTER;
    this.model = new SparseDisk(size, CLUSTER);
    await this.open();
  }

  async teardown(): Promise<void> {
    if (this.chain) await this.chain.close().catch(() => undefined);
    this.chain = null;
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }

  async open(readOnly = false): Promise<Chain> {
    this.chain = await Chain.open(this.dd, { readOnly });
    if (this.chain.virtualSize !== this.model.size) {
      this.fail(`opened disk has size ${this.chain.virtualSize}, model ${this.model.size}`);
    }
    return this.chain;
  }

  async closeChain(): Promise<void> {
    if (!this.chain) return;
    const c = this.chain;
    this.chain = null;
    await c.close();
  }

  async openChain(): Promise<Chain> {
    return this.chain ?? this.open();
  }

  // ---- random shapes ---------------------------------------------------------------------

  pickOffset(): number {
    const size = this.model.size;
    const hot = this.scenario.hot(size).filter(([s, l]) => s >= 0 && s + l <= size);
    if (hot.length && this.rng.chance(0.85)) {
      const [s, l] = this.rng.pick(hot);
      return s + this.rng.int(l);
    }
    return this.rng.int(size);
  }

  /** A random range inside the disk; shapes cover sub-sector, sector, cross-cluster, whole. */
  pickRange(): { off: number; len: number } {
    const size = this.model.size;
    const shape = this.rng.weighted({ tiny: 3, sectors: 3, span: 3, clusters: 2, edge: 1 });
    let off = this.pickOffset();
    let len: number;
    switch (shape) {
      case 'tiny':
        len = this.rng.range(1, 700);
        break;
      case 'sectors':
        off -= off % 512;
        len = 512 * this.rng.range(1, 160);
        break;
      case 'span':
        len = this.rng.range(1, 3 * CLUSTER);
        break;
      case 'clusters':
        off -= off % CLUSTER;
        len = CLUSTER * this.rng.range(1, 3);
        break;
      default:
        // Straddles a cluster boundary by a few bytes.
        off = Math.max(0, off - (off % CLUSTER) - this.rng.range(1, 600));
        len = this.rng.range(2, 1200);
        break;
    }
    if (off >= size) off = size - 1;
    len = Math.max(1, Math.min(len, size - off));
    return { off, len };
  }

  makeData(len: number): { data: Uint8Array; kind: string } {
    const kind = this.rng.weighted({ random: 6, zero: 2, fill: 1, sparse: 1 });
    let data: Uint8Array;
    switch (kind) {
      case 'random':
        data = this.rng.bytes(len);
        break;
      case 'zero':
        data = new Uint8Array(len);
        break;
      case 'fill':
        data = new Uint8Array(len).fill(this.rng.range(1, 255));
        break;
      default:
        data = new Uint8Array(len);
        for (let i = 0; i < 1 + this.rng.int(4); i++)
          data[this.rng.int(len)] = this.rng.range(1, 255);
        break;
    }
    return { data, kind };
  }

  // ---- verification ----------------------------------------------------------------------

  async verifyDisk(what: string): Promise<void> {
    const chain = await this.openChain();
    const samples = Array.from({ length: 3 }, () => this.rng.int(this.model.clusterCount));
    const diff = await diffChain(chain, this.model, samples);
    if (diff) this.fail(`after ${what}: ${diff}`);
  }

  /** With the chain closed: every delta checks clean, the descriptor agrees, no stray files. */
  async verifyDeltas(what: string): Promise<void> {
    if (this.chain) this.fail('verifyDeltas with the chain open');
    const d = await readDescriptor(nodeFileSystem, this.dd);
    if (d.sizeSectors * 512 !== this.model.size) {
      this.fail(`after ${what}: descriptor size ${d.sizeSectors * 512}, model ${this.model.size}`);
    }
    for (const im of d.images) {
      const file = resolveImagePath(this.dd, im.file);
      if (im.type === 'Plain') {
        // A raw base must still cover the disk it held.
        const size = (await stat(file)).size;
        if (size % CLUSTER !== 0) this.fail(`after ${what}: raw base of ${size} bytes`);
        continue;
      }
      const r = await checkImage(file);
      const bad = r.findings.filter((f) => f.severity === 'error');
      if (!r.clean || bad.length) {
        this.fail(
          `after ${what}: check of ${im.file} failed: ` +
            r.findings.map((f) => `${f.severity}: ${f.message}`).join('; '),
        );
      }
    }
    const expected = new Set([
      'DiskDescriptor.xml',
      'DiskDescriptor.xml.lck',
      ...d.images.map((im) => path.basename(im.file)),
    ]);
    const stray = (await readdir(path.dirname(this.dd))).filter((f) => !expected.has(f));
    if (stray.length) this.fail(`after ${what}: stray files ${stray.join(', ')}`);
  }

  /**
   * Runs a descriptor operation with the chain closed, then checks everything. Snapshot
   * contents are re-read in full after operations that merge or drop deltas (`all`); after the
   * others only new snapshots are, unless the operation finished a pending merge.
   */
  async structural(
    what: string,
    fn: () => Promise<void>,
    snapshots: 'all' | 'new' = 'all',
  ): Promise<void> {
    await this.closeChain();
    await fn();
    await this.verifyDeltas(what);
    await this.verifySnapshots(what, snapshots);
    await this.verifyDisk(what);
  }

  // ---- operations ------------------------------------------------------------------------

  async opWrite(): Promise<void> {
    const { off, len } = this.pickRange();
    const { data, kind } = this.makeData(len);
    this.log(`write ${off}+${len} ${kind}`);
    await (await this.openChain()).write(data, off);
    this.model.write(off, data);
  }

  async opRead(): Promise<void> {
    const { off, len } = this.pickRange();
    this.log(`read ${off}+${len}`);
    const got = new Uint8Array(len);
    await (await this.openChain()).read(got, off);
    const want = this.model.read(off, len);
    const d = firstDiff(got, want);
    if (d >= 0) {
      this.fail(
        `read ${off}+${len}: byte ${off + d} is ${hexAround(got, d)}, model ${hexAround(want, d)}`,
      );
    }
  }

  async opDiscard(): Promise<void> {
    const { off, len } = this.pickRange();
    this.log(`discard ${off}+${len}`);
    await (await this.openChain()).discard(off, len);
    this.model.discard(off, len);
  }

  async opWriteZeroes(): Promise<void> {
    const { off, len } = this.pickRange();
    const noUnmap = this.rng.chance(0.5);
    this.log(`writeZeroes ${off}+${len}${noUnmap ? ' noUnmap' : ''}`);
    await (await this.openChain()).writeZeroes(off, len, { noUnmap });
    this.model.zero(off, len);
  }

  /**
   * Several operations issued at once without waiting: the chain must run them in issue order,
   * each read seeing exactly the writes issued before it.
   */
  async opBurst(): Promise<void> {
    const chain = await this.openChain();
    const n = this.rng.range(2, 6);
    const pending: Promise<void>[] = [];
    const reads: { got: Uint8Array; want: Uint8Array; off: number }[] = [];
    const parts: string[] = [];
    for (let i = 0; i < n; i++) {
      const { off, len } = this.pickRange();
      const kind = this.rng.weighted({ write: 5, read: 3, discard: 1, zero: 1, flush: 1 });
      parts.push(`${kind} ${off}+${len}`);
      if (kind === 'write') {
        const { data } = this.makeData(len);
        pending.push(chain.write(data, off));
        this.model.write(off, data);
      } else if (kind === 'read') {
        const got = new Uint8Array(len);
        pending.push(chain.read(got, off));
        reads.push({ got, want: this.model.read(off, len), off });
      } else if (kind === 'discard') {
        pending.push(chain.discard(off, len));
        this.model.discard(off, len);
      } else if (kind === 'zero') {
        pending.push(chain.writeZeroes(off, len, { noUnmap: this.rng.chance(0.5) }));
        this.model.zero(off, len);
      } else {
        pending.push(chain.flush());
      }
    }
    this.log(`burst [${parts.join(', ')}]`);
    await Promise.all(pending);
    for (const r of reads) {
      const d = firstDiff(r.got, r.want);
      if (d >= 0) {
        this.fail(
          `burst read at ${r.off}: byte ${r.off + d} is ${hexAround(r.got, d)}, ` +
            `model ${hexAround(r.want, d)}`,
        );
      }
    }
  }

  async opFlush(): Promise<void> {
    this.log('flush');
    await (await this.openChain()).flush();
  }

  async opReopen(): Promise<void> {
    const readOnly = this.rng.chance(0.3);
    this.log(`reopen${readOnly ? ' read-only' : ''}`);
    await this.closeChain();
    await this.verifyDeltas('close');
    if (readOnly) {
      await this.open(true);
      await this.verifyDisk('read-only open');
      await this.closeChain();
      await this.verifyDeltas('read-only close');
    }
    await this.open();
  }

  async depth(): Promise<number> {
    return (await listSnapshots(this.dd)).length;
  }

  async opSnapshot(): Promise<void> {
    if ((await this.depth()) >= 8) return this.opDelete();
    this.log('snapshot');
    await this.structural(
      'snapshot',
      async () => {
        const guid = await snapshot(this.dd);
        this.snaps.set(guid, this.model.clone());
        const snaps = await listSnapshots(this.dd);
        const top = snaps.find((s) => s.current)!;
        if (top.parent !== guid) this.fail(`new top's parent is ${top.parent}, snapshot ${guid}`);
      },
      'new',
    );
  }

  async opMerge(): Promise<void> {
    const snaps = await listSnapshots(this.dd);
    const top = snaps.find((s) => s.current)!;
    if (snaps.length < 2) return this.opSnapshot();
    const siblings = snaps.filter((s) => s.parent === top.parent).length;
    this.log(`mergeTop${siblings > 1 ? ' (parent has other children)' : ''}`);
    await this.structural('mergeTop', async () => {
      if (siblings > 1) {
        // ploop merges only into a parent with a single child.
        await expect(mergeTop(this.dd)).rejects.toThrow(/children/);
        this.counts.mergeRefused = (this.counts.mergeRefused ?? 0) + 1;
      } else {
        await mergeTop(this.dd);
      }
    });
  }

  async opDelete(): Promise<void> {
    const snaps = await listSnapshots(this.dd);
    // A snapshot already marked for deletion may be merged away by the call itself.
    const candidates = snaps.filter((s) => !s.current && !s.temporary);
    if (!candidates.length) return this.opSnapshot();
    const victim = this.rng.pick(candidates);
    const kids = snaps.filter((s) => s.parent === victim.guid).length;
    this.log(`deleteSnapshot ${victim.guid} (${snaps.length} deltas, ${kids} children)`);
    await this.structural('deleteSnapshot', async () => {
      const r = await deleteSnapshot(this.dd, victim.guid);
      if (r.deferred !== kids > 1) this.fail(`deleteSnapshot deferred=${r.deferred}`);
      if (r.deferred) this.counts.deferred = (this.counts.deferred ?? 0) + 1;
      const after = await listSnapshots(this.dd);
      const gone = !after.some((s) => s.guid === victim.guid);
      if (gone === r.deferred) this.fail(`deleteSnapshot: snapshot still there: ${!gone}`);
    });
  }

  /** An empty top over a random snapshot; the current top's data is dropped. */
  async opSwitch(): Promise<void> {
    const snaps = await listSnapshots(this.dd);
    // A snapshot already marked for deletion may be merged away by the call itself.
    const candidates = snaps.filter((s) => !s.current && !s.temporary);
    if (!candidates.length) return this.opSnapshot();
    const target = this.rng.pick(candidates);
    this.log(`switchSnapshot ${target.guid}`);
    await this.structural('switchSnapshot', async () => {
      await switchSnapshot(this.dd, target.guid);
      const d = await readDescriptor(nodeFileSystem, this.dd);
      const view = this.snaps.get(target.guid);
      if (!view) this.fail(`switched to unknown snapshot ${target.guid}`);
      this.model = view.clone();
      this.model.grow(d.sizeSectors * 512);
    });
  }

  /**
   * Every snapshot still reads exactly as when it was taken (merges of other snapshots must
   * not change it). Read directly from its deltas, independently of Chain.
   */
  async verifySnapshots(what: string, scope: 'all' | 'new' = 'all'): Promise<void> {
    const d = await readDescriptor(nodeFileSystem, this.dd);
    const present = new Set(d.snapshots.map((s) => s.guid).filter((g) => g !== d.topGuid));
    let full = scope === 'all';
    for (const g of [...this.snaps.keys()]) {
      if (present.has(g)) continue;
      this.snaps.delete(g);
      full = true;
    }
    for (const g of present) {
      const want = this.snaps.get(g);
      if (!want) this.fail(`after ${what}: unexpected snapshot ${g}`);
      if (!full && this.snapsChecked.has(g)) continue;
      const diff = await diffSnapshotView(this.dd, g, want);
      if (diff) this.fail(`after ${what}: snapshot ${g}: ${diff}`);
      this.snapsChecked.add(g);
    }
  }

  async opGrow(): Promise<void> {
    const size = this.model.size;
    if (size >= this.scenario.maxSize) return this.opWrite();
    const want = Math.min(
      this.scenario.maxSize,
      size + this.rng.range(1, 40) * CLUSTER - this.rng.int(CLUSTER),
    );
    this.log(`grow ${size} -> ${want}`);
    await this.structural(
      'grow',
      async () => {
        const got = await growDisk(this.dd, want);
        const rounded = Math.ceil(want / CLUSTER) * CLUSTER;
        if (got !== rounded) this.fail(`growDisk returned ${got}, expected ${rounded}`);
        this.model.grow(got);
      },
      'new',
    );
  }

  async opCompact(): Promise<void> {
    this.log('compact');
    await this.structural(
      'compact',
      async () => {
        const d = await readDescriptor(nodeFileSystem, this.dd);
        const top = imageOf(d, d.topGuid);
        if (top.type === 'Plain') return;
        const img = await PloopImage.open(resolveImagePath(this.dd, top.file));
        try {
          const r = await compactImage(img);
          const dense = img.dataOffBytes + img.allocatedClusters * img.clusterSize;
          if (r.after !== dense) this.fail(`compact left ${r.after} bytes, dense is ${dense}`);
        } finally {
          await img.close();
        }
      },
      'new',
    );
  }

  /** With the chain closed: export, flatten and re-import reproduce the model exactly. */
  async verifyConversions(): Promise<void> {
    const raw = path.join(this.dir, 'export.raw');
    await exportRaw(this.dd, raw);
    const fh = await open(raw, 'r');
    try {
      const size = (await fh.stat()).size;
      if (size !== this.model.size) this.fail(`exported ${size} bytes, model ${this.model.size}`);
      const small = size <= 64 * MiB;
      const vcs = small
        ? Array.from({ length: this.model.clusterCount }, (_, i) => i)
        : [
            ...this.model.clusters.keys(),
            ...Array.from({ length: 8 }, () => this.rng.int(this.model.clusterCount)),
          ];
      const buf = Buffer.alloc(CLUSTER);
      for (const vc of vcs) {
        const len = Math.min(CLUSTER, size - vc * CLUSTER);
        const { bytesRead } = await fh.read(buf, 0, len, vc * CLUSTER);
        const want = this.model.read(vc * CLUSTER, len);
        const d = firstDiff(buf.subarray(0, bytesRead), want);
        if (d >= 0) this.fail(`exported raw differs at ${vc * CLUSTER + d}`);
      }
    } finally {
      await fh.close();
    }
    const flat = path.join(this.dir, 'flat.hds');
    const imported = path.join(this.dir, 'imported.hds');
    await flatten(this.dd, flat);
    const targets = [flat];
    if (this.model.size <= 64 * MiB) {
      await importRaw(raw, imported, { clusterSize: CLUSTER, version: this.scenario.version });
      targets.push(imported);
    }
    for (const file of targets) {
      const r = await checkImage(file);
      if (!r.clean) this.fail(`${path.basename(file)} does not check clean`);
      const c = await Chain.open(file, { readOnly: true });
      try {
        const diff = await diffChain(c, this.model);
        if (diff) this.fail(`${path.basename(file)}: ${diff}`);
      } finally {
        await c.close();
      }
    }
    for (const f of [raw, flat, imported]) await rm(f, { force: true });
  }

  async run(steps: number): Promise<void> {
    await this.setup();
    try {
      for (this.step = 0; this.step < steps; this.step++) {
        const op = this.rng.weighted({
          write: 32,
          read: 12,
          burst: 4,
          discard: 8,
          writeZeroes: 8,
          flush: 6,
          reopen: 3,
          snapshot: 2.5,
          mergeTop: 1.5,
          deleteSnapshot: 1.5,
          switchSnapshot: 0.7,
          grow: 1.2,
          compact: 1,
        });
        switch (op) {
          case 'write':
            await this.opWrite();
            break;
          case 'read':
            await this.opRead();
            break;
          case 'burst':
            await this.opBurst();
            break;
          case 'discard':
            await this.opDiscard();
            break;
          case 'writeZeroes':
            await this.opWriteZeroes();
            break;
          case 'flush':
            await this.opFlush();
            break;
          case 'reopen':
            await this.opReopen();
            break;
          case 'snapshot':
            await this.opSnapshot();
            break;
          case 'mergeTop':
            await this.opMerge();
            break;
          case 'deleteSnapshot':
            await this.opDelete();
            break;
          case 'switchSnapshot':
            await this.opSwitch();
            break;
          case 'grow':
            await this.opGrow();
            break;
          case 'compact':
            await this.opCompact();
            break;
        }
        if (this.step % 20 === 19) await this.verifyDisk('periodic check');
      }
      await this.verifyDisk('last step');
      await this.closeChain();
      await this.verifyDeltas('final close');
      await this.verifySnapshots('final close');
      await this.verifyConversions();
      // Everything survives a fresh read-only open.
      await this.open(true);
      await this.verifyDisk('final read-only open');
      await this.closeChain();
    } catch (err) {
      if (err instanceof Error && !err.message.startsWith(`seed ${this.seed}`)) {
        this.fail(`${err.stack ?? err.message}`);
      }
      throw err;
    } finally {
      await this.teardown();
    }
  }
}

const envSeed = seedFromEnv('PLOOP_MODEL_SEED');
const seeds = envSeed !== undefined ? [envSeed] : DEFAULT_SEEDS;

// The seeds are independent and mostly wait for I/O and helper processes: run them together.
describe.concurrent('ploop model-based random operations', () => {
  for (const seed of seeds) {
    it(`matches an in-memory model (seed ${seed}, ${scenarioFor(seed).name})`, async () => {
      const started = Date.now();
      const run = new ModelRun(seed);
      console.log(`model test seed ${seed} (${run.scenario.name}), ${STEPS} steps`);
      await run.run(STEPS);
      const ops = Object.entries(run.counts)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ');
      console.log(`model test seed ${seed}: ${Date.now() - started} ms; ${ops}`);
    }, 300_000);
  }
});
