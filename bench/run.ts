/**
 * `npm run bench`: throughput of import, export and merge as a ratio to `cp` of the same bytes
 * on the same file system, and the time of `snapshot` on disks holding more and more data.
 *
 * Options: --json (machine-readable output on stdout), --only=import,export,merge,snapshot,
 * --check (exit status 1 when a goal is missed), --help. Settings come from the environment:
 * see USAGE below.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  PloopImage,
  exportRaw,
  importRaw,
  mergeTop,
  parseSize,
  snapshot,
  BASE_IMAGE_NAME,
} from '../src/ploop/index.js';
import { mapAllClustersAllocated, newDisk, writeRandomFile, writeRandomToDisk } from './image.js';
import {
  GiB,
  MiB,
  cpBaseline,
  fileSystemType,
  formatBytes,
  freeBytes,
  makeScratch,
  median,
  mibPerSec,
  scratchParent,
  settle,
  syncFloorMs,
  timeMs,
  unlinkSynced,
} from './util.js';

const USAGE = `usage: npm run bench [-- --json] [-- --only=import,export,merge,snapshot] [-- --check]

environment:
  PLOOP_BENCH_SIZE            bytes of data for import, export and merge (default 1G)
  PLOOP_BENCH_RUNS            timed runs per throughput measurement, median kept (default 5)
  PLOOP_BENCH_SNAPSHOT_SIZES  data held by the snapshot disks (default 64M,1G,4G)
  PLOOP_BENCH_SNAPSHOT_RUNS   timed snapshots per disk, median kept (default 15)
  PLOOP_BENCH_CLUSTER         cluster size of the images (default 1M)
  PLOOP_BENCH_DIR             where the scratch directory is made (default: the system
                              temporary directory if it is on the repository's file system)
  PLOOP_BENCH_DROP_CACHES=1   empty the page cache before every timed step (needs root)`;

/** Throughput goal: at least this fraction of cp's. */
const THROUGHPUT_GOAL = 0.8;
/** Snapshot goals: "a few milliseconds", and flat: at most this factor over the smallest disk. */
const SNAPSHOT_MAX_MS = 10;
const SNAPSHOT_FLAT_FACTOR = 1.5;
/** Snapshot disks up to this much data are filled with written data; larger ones are allocated. */
const WRITTEN_DATA_LIMIT = GiB;

type Op = 'import' | 'export' | 'merge' | 'snapshot';
const ALL_OPS: Op[] = ['import', 'export', 'merge', 'snapshot'];

interface Config {
  size: number;
  runs: number;
  snapshotSizes: number[];
  snapshotRuns: number;
  clusterSize: number;
  dropCaches: boolean;
  ops: Set<Op>;
  json: boolean;
  check: boolean;
}

interface Row {
  operation: string;
  /** 'MiB/s' for throughput rows, 'ms' for snapshot rows. */
  unit: 'MiB/s' | 'ms';
  ours: number;
  baseline: number | null;
  baselineLabel: string;
  ratio: number | null;
  goal: string;
  pass: boolean;
  /** Raw timings of the runs, in milliseconds. */
  samplesMs: number[];
  baselineSamplesMs?: number[];
  bytes?: number;
  note?: string;
}

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`);
  return n;
}

function envSize(name: string, dflt: string): number {
  return parseSize(process.env[name] || dflt);
}

function parseConfig(argv: string[]): Config {
  let ops = new Set<Op>(ALL_OPS);
  let json = false;
  let check = false;
  for (const a of argv) {
    if (a === '--json') json = true;
    else if (a === '--check') check = true;
    else if (a.startsWith('--only=')) {
      const names = a.slice('--only='.length).split(',').filter(Boolean);
      for (const n of names) {
        if (!ALL_OPS.includes(n as Op)) throw new Error(`unknown operation "${n}"\n${USAGE}`);
      }
      ops = new Set(names as Op[]);
    } else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument "${a}"\n${USAGE}`);
  }
  const snapshotSizes = (process.env['PLOOP_BENCH_SNAPSHOT_SIZES'] || '64M,1G,4G')
    .split(',')
    .map((s) => parseSize(s))
    .sort((a, b) => a - b);
  return {
    size: envSize('PLOOP_BENCH_SIZE', '1G'),
    runs: envInt('PLOOP_BENCH_RUNS', 5),
    snapshotSizes,
    snapshotRuns: envInt('PLOOP_BENCH_SNAPSHOT_RUNS', 15),
    clusterSize: envSize('PLOOP_BENCH_CLUSTER', '1M'),
    dropCaches: process.env['PLOOP_BENCH_DROP_CACHES'] === '1',
    ops,
    json,
    check,
  };
}

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/** Peak scratch space the selected operations need, with some slack. */
function spaceNeeded(cfg: Config): number {
  const s = cfg.size;
  let peak = 0;
  // raw + cp copy, or raw + imported image + exported raw.
  if (cfg.ops.has('import') || cfg.ops.has('export')) peak = Math.max(peak, 3 * s);
  // raw + its cp copy + base (half) + top (whole).
  if (cfg.ops.has('merge')) peak = Math.max(peak, 3.5 * s);
  // Every snapshot disk at once (the largest ones only allocated, but allocated all the same).
  if (cfg.ops.has('snapshot'))
    peak = Math.max(
      peak,
      cfg.snapshotSizes.reduce((a, b) => a + b, 0),
    );
  return Math.ceil(peak * 1.05) + 512 * MiB;
}

/**
 * A throughput row. Every sample of ours is paired with a `cp` of the same bytes run next to
 * it (see `pair`), so the ratio is the median of the per-pair ratios: on a shared machine the
 * load drifts between runs far more than between the two halves of a pair.
 */
function throughputRow(
  operation: string,
  bytes: number,
  samplesMs: number[],
  cpSamplesMs: number[],
): Row {
  const ours = mibPerSec(bytes, median(samplesMs));
  const baseline = mibPerSec(bytes, median(cpSamplesMs));
  const ratio = median(samplesMs.map((t, i) => cpSamplesMs[i]! / t));
  return {
    operation,
    unit: 'MiB/s',
    ours,
    baseline,
    baselineLabel: 'cp',
    ratio,
    goal: `>= ${THROUGHPUT_GOAL.toFixed(2)}`,
    pass: ratio >= THROUGHPUT_GOAL,
    samplesMs,
    baselineSamplesMs: cpSamplesMs,
    bytes,
  };
}

/**
 * Times `cp` of `raw`, the baseline paired with one sample, then removes the copy. The removal
 * (unlink and directory fsync) is timed too, when `unlinkMs` is given: a merge ends by deleting
 * the merged delta, a file of about the same size.
 */
async function timeCp(
  cfg: Config,
  raw: string,
  copy: string,
  unlinkMs?: number[],
): Promise<number> {
  await settle(cfg.dropCaches);
  const t = await timeMs(() => cpBaseline(raw, copy));
  await settle(cfg.dropCaches);
  const u = await timeMs(() => unlinkSynced(copy));
  unlinkMs?.push(u);
  return t;
}

/**
 * Times `ours` and a `cp` of the raw file as a pair, in alternating order from run to run:
 * whichever writes first after a large file was deleted may land on freshly discarded space,
 * which on some virtual disks is slower to write, so a fixed order would favour one side.
 */
async function pair(
  cfg: Config,
  run: number,
  raw: string,
  copy: string,
  ours: () => Promise<unknown>,
  unlinkMs?: number[],
): Promise<{ ours: number; cp: number }> {
  const timeOurs = async () => {
    await settle(cfg.dropCaches);
    return timeMs(ours);
  };
  if (run % 2 === 0) {
    const cp = await timeCp(cfg, raw, copy, unlinkMs);
    return { cp, ours: await timeOurs() };
  }
  const t = await timeOurs();
  return { ours: t, cp: await timeCp(cfg, raw, copy, unlinkMs) };
}

/** Import and export of the same raw file, each paired with its own `cp` of that file. */
async function benchImportExport(cfg: Config, dir: string, raw: string, rows: Row[]) {
  const importMs: number[] = [];
  const exportMs: number[] = [];
  const cpImportMs: number[] = [];
  const cpExportMs: number[] = [];
  const copy = path.join(dir, 'copy.raw');
  const image = path.join(dir, 'imported.hds');
  const out = path.join(dir, 'exported.raw');
  for (let r = 0; r < cfg.runs; r++) {
    log(`  run ${r + 1}/${cfg.runs}: cp and import`);
    const i = await pair(cfg, r, raw, copy, () =>
      importRaw(raw, image, { clusterSize: cfg.clusterSize }),
    );
    if (cfg.ops.has('import')) {
      importMs.push(i.ours);
      cpImportMs.push(i.cp);
    }
    if (cfg.ops.has('export')) {
      log(`  run ${r + 1}/${cfg.runs}: cp and export`);
      const e = await pair(cfg, r, raw, copy, () => exportRaw(image, out));
      exportMs.push(e.ours);
      cpExportMs.push(e.cp);
      await fsp.rm(out);
    }
    await fsp.rm(image, { force: true });
  }
  if (cfg.ops.has('import'))
    rows.push(throughputRow('import raw -> ploop', cfg.size, importMs, cpImportMs));
  if (cfg.ops.has('export'))
    rows.push(throughputRow('export ploop -> raw', cfg.size, exportMs, cpExportMs));
}

/**
 * Merge: the base holds the first half of the disk, the top holds the whole disk, so half of
 * the top's clusters overwrite mapped clusters and half are new to the base. Rebuilt for every
 * run so each run merges the same layout. The merge is the whole operation: marking the
 * descriptor, copying, syncing, closing the parent, rewriting the descriptor and unlinking
 * the merged delta.
 */
async function benchMerge(cfg: Config, dir: string, raw: string, rows: Row[]) {
  const mergeMs: number[] = [];
  const cpMs: number[] = [];
  const unlinkMs: number[] = [];
  const copy = path.join(dir, 'copy.raw');
  const half = Math.floor(cfg.size / 2 / cfg.clusterSize) * cfg.clusterSize;
  for (let r = 0; r < cfg.runs; r++) {
    const diskDir = path.join(dir, `merge-${r}`);
    log(
      `  run ${r + 1}/${cfg.runs}: preparing (base ${formatBytes(half)}, top ${formatBytes(cfg.size)})`,
    );
    const dd = await newDisk(diskDir, cfg.size, cfg.clusterSize);
    await writeRandomToDisk(dd, 0, half);
    await snapshot(dd);
    await writeRandomToDisk(dd, 0, cfg.size);
    log(`  run ${r + 1}/${cfg.runs}: cp and merge`);
    const m = await pair(cfg, r, raw, copy, () => mergeTop(dd), unlinkMs);
    mergeMs.push(m.ours);
    cpMs.push(m.cp);
    await fsp.rm(diskDir, { recursive: true });
  }
  const row = throughputRow(`merge top (${formatBytes(cfg.size)})`, cfg.size, mergeMs, cpMs);
  row.note = `base held ${formatBytes(half)}; includes deleting the merged delta`;
  rows.push(row);
  rows.push({
    operation: `unlink of a ${formatBytes(cfg.size)} file`,
    unit: 'ms',
    ours: median(unlinkMs),
    baseline: null,
    baselineLabel: '',
    ratio: null,
    goal: 'reference',
    pass: true,
    samplesMs: unlinkMs,
    note:
      'rm of the cp copy plus a directory fsync: what deleting the merged delta costs on ' +
      'this file system (slow where it is mounted with online discard)',
  });
}

/**
 * Median time of `snapshot` on disks holding each of the configured amounts of data. The disks
 * are prepared first and then snapshotted in turns, so that load drifting over the run hits
 * every disk alike; the sync floor (see syncFloorMs) is measured in the same turns.
 */
async function benchSnapshot(cfg: Config, dir: string, rows: Row[]) {
  const disks: { size: number; dd: string; diskDir: string; written: boolean; mapped: number }[] =
    [];
  for (const size of cfg.snapshotSizes) {
    const diskDir = path.join(dir, `snap-${size}`);
    const written = size <= WRITTEN_DATA_LIMIT;
    log(`  ${formatBytes(size)}: preparing (${written ? 'written data' : 'allocated clusters'})`);
    const dd = await newDisk(diskDir, size, cfg.clusterSize);
    if (written) await writeRandomToDisk(dd, 0, size);
    else await mapAllClustersAllocated(diskDir);
    const img = await PloopImage.open(path.join(diskDir, BASE_IMAGE_NAME), { readOnly: true });
    const mapped = img.allocatedClusters;
    const expected = img.bat.length;
    await img.close();
    if (mapped !== expected) throw new Error(`only ${mapped} of ${expected} clusters mapped`);
    // One untimed round first; every timed snapshot is then merged back so the data-holding
    // image is always the one that becomes a snapshot.
    await snapshot(dd);
    await mergeTop(dd);
    disks.push({ size, dd, diskDir, written, mapped });
  }
  const samples = disks.map(() => [] as number[]);
  const floorMs: number[] = [];
  for (let r = 0; r < cfg.snapshotRuns; r++) {
    for (const [k, disk] of disks.entries()) {
      await settle(cfg.dropCaches);
      samples[k]!.push(await timeMs(() => snapshot(disk.dd)));
      await mergeTop(disk.dd);
    }
    floorMs.push(await syncFloorMs(dir, cfg.clusterSize));
  }
  let smallest: number | null = null;
  for (const [k, disk] of disks.entries()) {
    const samplesMs = samples[k]!;
    log(`  ${formatBytes(disk.size)}: ${samplesMs.map((t) => t.toFixed(1)).join(' ')} ms`);
    await fsp.rm(disk.diskDir, { recursive: true });
    const ours = median(samplesMs);
    const first = smallest === null;
    smallest ??= ours;
    const ratio = first ? null : ours / smallest;
    const flat = ratio === null || ratio <= SNAPSHOT_FLAT_FACTOR;
    rows.push({
      operation: `snapshot (${formatBytes(disk.size)} data)`,
      unit: 'ms',
      ours,
      baseline: first ? null : smallest,
      baselineLabel: first ? '' : `${formatBytes(cfg.snapshotSizes[0]!)} disk`,
      ratio,
      goal: first
        ? `<= ${SNAPSHOT_MAX_MS} ms`
        : `<= ${SNAPSHOT_MAX_MS} ms, <= ${SNAPSHOT_FLAT_FACTOR}x`,
      pass: ours <= SNAPSHOT_MAX_MS && flat,
      samplesMs,
      bytes: disk.size,
      note: `${disk.mapped} clusters mapped, ${disk.written ? 'written' : 'allocated'}`,
    });
  }
  rows.push({
    operation: 'sync floor of a snapshot',
    unit: 'ms',
    ours: median(floorMs),
    baseline: null,
    baselineLabel: '',
    ratio: null,
    goal: 'reference',
    pass: true,
    samplesMs: floorMs,
    note:
      'plain file calls: a new file with one cluster written and synced while a small file is ' +
      'written and synced, then a rename over an existing file and a directory fsync',
  });
}

function fmt(n: number | null, digits: number): string {
  return n === null ? '-' : n.toFixed(digits);
}

/** Lowest and highest of our runs, in the row's unit: how noisy the median is. */
function range(r: Row): string {
  const xs = r.unit === 'ms' ? r.samplesMs : r.samplesMs.map((t) => mibPerSec(r.bytes!, t));
  const digits = r.unit === 'ms' ? 1 : 0;
  return `${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)}`;
}

function table(rows: Row[]): string {
  const head = ['operation', 'ours', 'range', 'baseline', 'ratio', 'goal', 'result'];
  const body = rows.map((r) => [
    r.operation,
    `${fmt(r.ours, r.unit === 'ms' ? 1 : 0)} ${r.unit}`,
    range(r),
    r.baseline === null
      ? '-'
      : `${fmt(r.baseline, r.unit === 'ms' ? 1 : 0)} ${r.unit} (${r.baselineLabel})`,
    fmt(r.ratio, 2),
    r.goal,
    r.pass ? 'PASS' : 'BELOW',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 0 || i === 5 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

async function main(): Promise<void> {
  const started = process.hrtime.bigint();
  const loadBefore = os.loadavg()[0]!;
  const cfg = parseConfig(process.argv.slice(2));
  const parent = scratchParent();
  const need = spaceNeeded(cfg);
  await fsp.mkdir(parent, { recursive: true });
  const free = await freeBytes(parent);
  if (free < need) {
    throw new Error(
      `${parent} has ${formatBytes(free)} free, the benchmark needs about ${formatBytes(need)}; ` +
        'set PLOOP_BENCH_SIZE lower or PLOOP_BENCH_DIR elsewhere',
    );
  }
  const scratch = await makeScratch(parent);
  const fsType = await fileSystemType(scratch.dir);
  log(`scratch directory ${scratch.dir} (${fsType}, ${formatBytes(free)} free)`);
  const rows: Row[] = [];
  try {
    const throughput = cfg.ops.has('import') || cfg.ops.has('export') || cfg.ops.has('merge');
    if (throughput) {
      const raw = path.join(scratch.dir, 'data.raw');
      log(`writing ${formatBytes(cfg.size)} of random data`);
      await writeRandomFile(raw, cfg.size);
      if (cfg.ops.has('import') || cfg.ops.has('export')) {
        log('cp, import and export');
        await benchImportExport(cfg, scratch.dir, raw, rows);
      }
      if (cfg.ops.has('merge')) {
        log('cp and merge');
        await benchMerge(cfg, scratch.dir, raw, rows);
      }
      await fsp.rm(raw);
    }
    if (cfg.ops.has('snapshot')) {
      log('snapshot');
      await benchSnapshot(cfg, scratch.dir, rows);
    }
  } finally {
    scratch.remove();
  }
  const totalSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  const load = { before: loadBefore, after: os.loadavg()[0]!, cpus: os.cpus().length };
  const ok = rows.every((r) => r.pass);
  if (cfg.json) {
    const config = { ...cfg, ops: [...cfg.ops] };
    const out = {
      config,
      fileSystem: fsType,
      directory: parent,
      rows,
      allGoalsMet: ok,
      totalSeconds,
      loadAverage: load,
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  } else {
    const drop = cfg.dropCaches ? ', page cache dropped before each step' : '';
    console.log(
      `\nploop benchmark: ${formatBytes(cfg.size)} of random data, ${formatBytes(cfg.clusterSize)} ` +
        `clusters, ${fsType} under ${parent}${drop}`,
    );
    console.log(
      `throughput: median of ${cfg.runs} runs, each paired with a cp of the same bytes; ratio = ` +
        `median of the per-run ratios; fdatasync included in ours and in cp\n` +
        `snapshot: median of ${cfg.snapshotRuns}; sync floor = the synced I/O a snapshot needs, ` +
        `done with plain file calls between the snapshots\n`,
    );
    console.log(table(rows));
    console.log(
      `\n${ok ? 'all goals met' : 'some goals not met'}; total ${totalSeconds.toFixed(1)} s; ` +
        `load average ${load.before.toFixed(1)} before, ${load.after.toFixed(1)} after ` +
        `on ${load.cpus} CPUs (a busy machine makes the numbers noisy)`,
    );
  }
  if (cfg.check && !ok) process.exitCode = 1;
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = 2;
});
