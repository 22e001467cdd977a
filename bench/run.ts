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
  timeMs,
} from './util.js';

const USAGE = `usage: npm run bench [-- --json] [-- --only=import,export,merge,snapshot] [-- --check]

environment:
  PLOOP_BENCH_SIZE            bytes of data for import, export and merge (default 1G)
  PLOOP_BENCH_RUNS            timed runs per throughput measurement, median kept (default 3)
  PLOOP_BENCH_SNAPSHOT_SIZES  data held by the snapshot disks (default 64M,1G,4G)
  PLOOP_BENCH_SNAPSHOT_RUNS   timed snapshots per disk, median kept (default 5)
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
    runs: envInt('PLOOP_BENCH_RUNS', 3),
    snapshotSizes,
    snapshotRuns: envInt('PLOOP_BENCH_SNAPSHOT_RUNS', 5),
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
  // raw (for the baseline) + base (half) + top (whole), then the merged base.
  if (cfg.ops.has('merge')) peak = Math.max(peak, 2.5 * s);
  if (cfg.ops.has('snapshot')) peak = Math.max(peak, Math.max(...cfg.snapshotSizes));
  return Math.ceil(peak * 1.05) + 512 * MiB;
}

function throughputRow(
  operation: string,
  bytes: number,
  samplesMs: number[],
  cpSamplesMs: number[],
): Row {
  const ours = mibPerSec(bytes, median(samplesMs));
  const baseline = mibPerSec(bytes, median(cpSamplesMs));
  const ratio = ours / baseline;
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

/** cp, import and export of the same raw file, interleaved run by run so drift hits all three. */
async function benchImportExport(cfg: Config, dir: string, raw: string, rows: Row[]) {
  const cpMs: number[] = [];
  const importMs: number[] = [];
  const exportMs: number[] = [];
  const copy = path.join(dir, 'copy.raw');
  const image = path.join(dir, 'imported.hds');
  const out = path.join(dir, 'exported.raw');
  for (let r = 0; r < cfg.runs; r++) {
    log(`  run ${r + 1}/${cfg.runs}: cp`);
    await settle(cfg.dropCaches);
    cpMs.push(await timeMs(() => cpBaseline(raw, copy)));
    await fsp.rm(copy);
    if (cfg.ops.has('import') || cfg.ops.has('export')) {
      log(`  run ${r + 1}/${cfg.runs}: import`);
      await settle(cfg.dropCaches);
      const t = await timeMs(() => importRaw(raw, image, { clusterSize: cfg.clusterSize }));
      if (cfg.ops.has('import')) importMs.push(t);
    }
    if (cfg.ops.has('export')) {
      log(`  run ${r + 1}/${cfg.runs}: export`);
      await settle(cfg.dropCaches);
      exportMs.push(await timeMs(() => exportRaw(image, out)));
      await fsp.rm(out);
    }
    await fsp.rm(image, { force: true });
  }
  if (cfg.ops.has('import'))
    rows.push(throughputRow('import raw -> ploop', cfg.size, importMs, cpMs));
  if (cfg.ops.has('export'))
    rows.push(throughputRow('export ploop -> raw', cfg.size, exportMs, cpMs));
  return cpMs;
}

/**
 * Merge: the base holds the first half of the disk, the top holds the whole disk, so half of
 * the top's clusters overwrite mapped clusters and half are new to the base. Rebuilt for every
 * run so each run merges the same layout.
 */
async function benchMerge(cfg: Config, dir: string, cpMs: number[], rows: Row[]) {
  const mergeMs: number[] = [];
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
    log(`  run ${r + 1}/${cfg.runs}: merge`);
    await settle(cfg.dropCaches);
    mergeMs.push(await timeMs(() => mergeTop(dd)));
    await fsp.rm(diskDir, { recursive: true });
  }
  const row = throughputRow(`merge top (${formatBytes(cfg.size)})`, cfg.size, mergeMs, cpMs);
  row.note = `base held ${formatBytes(half)}`;
  rows.push(row);
}

/** Median time of `snapshot` on disks holding each of the configured amounts of data. */
async function benchSnapshot(cfg: Config, dir: string, rows: Row[]) {
  let smallest: number | null = null;
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
    const samplesMs: number[] = [];
    for (let r = 0; r < cfg.snapshotRuns; r++) {
      await settle(cfg.dropCaches);
      samplesMs.push(await timeMs(() => snapshot(dd)));
      await mergeTop(dd);
    }
    log(`  ${formatBytes(size)}: ${samplesMs.map((t) => t.toFixed(1)).join(' ')} ms`);
    await fsp.rm(diskDir, { recursive: true });
    const ours = median(samplesMs);
    smallest ??= ours;
    const first = rows.every((x) => x.unit !== 'ms');
    const ratio = first ? null : ours / smallest;
    const flat = ratio === null || ratio <= SNAPSHOT_FLAT_FACTOR;
    rows.push({
      operation: `snapshot (${formatBytes(size)} data)`,
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
      bytes: size,
      note: `${mapped} clusters mapped, ${written ? 'written' : 'allocated'}`,
    });
  }
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
      log('cp, import and export');
      const cpMs = await benchImportExport(cfg, scratch.dir, raw, rows);
      await fsp.rm(raw);
      if (cfg.ops.has('merge')) {
        log('merge');
        await benchMerge(cfg, scratch.dir, cpMs, rows);
      }
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
      `throughput: median of ${cfg.runs} runs, fdatasync included in ours and in cp; ` +
        `snapshot: median of ${cfg.snapshotRuns}\n`,
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
