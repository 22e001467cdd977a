/**
 * Interoperability with the reference tools (ploop-format.md §6.1, recipes R1–R10), driven
 * through the `ploop-csi image` CLI: images we write must pass `qemu-img check` and
 * `ploop check`, and read back identically through QEMU; images QEMU and ploop write must read
 * back identically through us; snapshots, merges, deletes and grows must match ploop's.
 *
 * Needs qemu-img, qemu-io and ploop (scripts/setup-test.sh installs them) and a built CLI.
 * Tests run concurrently: nearly all their time is spent in child processes.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { PloopImage } from '../src/ploop/index.js';
import {
  PatternWrite,
  appendFormatExtension,
  RawHeader,
  RunResult,
  cli,
  cliJson,
  imageDifference,
  makeScratchDir,
  missingPrerequisites,
  ok,
  patternReads,
  ploop,
  ploopSnapshotList,
  pokeU32,
  qemuChainSpec,
  qemuImg,
  qemuIoWrite,
  qemuPatternFailures,
  qemuToRaw,
  rawDifference,
  readBatEntry,
  readRawHeader,
  writePatterns,
  writeRawFile,
} from './support/interop-tools.js';

const MiB = 1 << 20;
const DISK = 64 * MiB;
const TOP_GUID = '{5fbaabe3-6958-40ff-92a7-860e329aab41}';
const NONE_GUID = '{00000000-0000-0000-0000-000000000000}';
const IN_USE = 0x746f6e59;
const SIG_V1 = 'WithoutFreeSpace';
const SIG_V2 = 'WithouFreSpacExt';

/** Writes of the recipes' `w1.hds`/`w2.hds`: 4 KiB at 0 and a whole cluster at 5 MiB. */
const W_WRITES: PatternWrite[] = [
  { offset: 0, length: 4096, byte: 0x11 },
  { offset: 5 * MiB, length: MiB, byte: 0x5a },
];
/** Those images (1 MiB clusters), made once by our CLI; tests work on copies. */
const written: Record<number, string> = {};

beforeAll(async () => {
  const why = await missingPrerequisites();
  if (why) throw new Error(`interop tests cannot run: ${why}`);
  const { dir, cleanup } = await makeScratchDir();
  for (const v of [1, 2]) {
    written[v] = path.join(dir, `w${v}.hds`);
    await create(written[v], v);
    await writePatterns(written[v], W_WRITES);
  }
  return cleanup;
});

interface Ctx {
  onTestFinished: (fn: () => Promise<void>) => void;
}

/** A temporary directory for the current test, removed when it finishes. */
async function scratch(ctx: Ctx): Promise<string> {
  const { dir, cleanup } = await makeScratchDir();
  ctx.onTestFinished(cleanup);
  return dir;
}

function expectCode(r: RunResult, code: number): void {
  expect(r.code, `${r.cmd}\n${r.stdout}\n${r.stderr}`).toBe(code);
}

/** The header fields both implementations must agree on (not CHS, in-use or flags). */
function layout(h: RawHeader) {
  return {
    type: h.type,
    clusterSectors: h.clusterSectors,
    batEntries: h.batEntries,
    sizeSectors: h.sizeSectors,
    dataOff: h.dataOff,
  };
}

/** CLI `image create` of a 64 MiB image. */
async function create(
  file: string,
  version: number,
  cluster = '1M',
  format = 'expanded',
): Promise<void> {
  const args = ['--size', '64M', '--cluster-size', cluster, '--version', `${version}`];
  expect(await cliJson(['image', 'create', file, ...args, '--format', format])).toEqual({
    imagePath: file,
    virtualSize: DISK,
  });
}

/** CLI `image export` (recipe hook IMPL_read_raw). */
async function exportTo(target: string, raw: string): Promise<void> {
  expect(await cliJson(['image', 'export', target, raw])).toEqual({ rawPath: raw });
}

/** A copy of the recipes' written image of `version` at `file` (recipe R3's w1/w2). */
async function writtenImage(file: string, version: number): Promise<PatternWrite[]> {
  await fsp.copyFile(written[version]!, file);
  return W_WRITES;
}

/** Recipe R4: ploop makes a v1 disk and a snapshot, QEMU writes into both levels. */
async function ploopChainWrittenByQemu(
  w: string,
): Promise<{ dir: string; dd: string; base: string; top: string }> {
  const dir = path.join(w, 'c');
  await fsp.mkdir(dir);
  const base = path.join(dir, 'root.hdd');
  ok(await ploop(['init', '-s', '64M', '-t', 'none', base]));
  await qemuIoWrite(base, ['write -P 0xaa 0 2M']);
  const dd = path.join(dir, 'DiskDescriptor.xml');
  ok(await ploop(['snapshot', dd]));
  const top = (await fsp.readdir(dir)).find((f) => f.startsWith('root.hdd.{'));
  expect(top, 'ploop snapshot created no delta').toBeDefined();
  const topPath = path.join(dir, top!);
  await qemuIoWrite(qemuChainSpec([base, topPath]), ['write -P 0xbb 1052672 4096']);
  return { dir, dd, base, top: topPath };
}

/** Delta files of a disk directory, base first, as ploop lists them. */
async function chainFiles(dd: string): Promise<string[]> {
  const list = await ploopSnapshotList(dd);
  const byGuid = new Map(list.map((s) => [s.guid, s]));
  const files: string[] = [];
  let cur = list.find((s) => s.current);
  while (cur) {
    files.unshift(path.join(path.dirname(dd), cur.file));
    cur = byGuid.get(cur.parent);
  }
  return files;
}

/** What QEMU reads from a disk directory's chain, flattened to `out`. */
async function qemuReadsDisk(dd: string, out: string): Promise<void> {
  await qemuToRaw(await chainFiles(dd), out);
}

async function descriptorSize(dd: string): Promise<{ diskSize: number; end: number }> {
  const xml = await fsp.readFile(dd, 'utf8');
  return {
    diskSize: Number(/<Disk_size>(\d+)<\/Disk_size>/.exec(xml)?.[1]),
    end: Number(/<End>(\d+)<\/End>/.exec(xml)?.[1]),
  };
}

describe.concurrent('R1: header of a new image', () => {
  it('agrees with ploop init and qemu-img create', async (ctx) => {
    const w = await scratch(ctx);
    await fsp.mkdir(path.join(w, 'p'));
    const theirs = path.join(w, 'p', 'root.hdd');
    ok(await ploop(['init', '-s', '1G', '-t', 'none', theirs]));
    ok(await qemuImg(['create', '-f', 'parallels', path.join(w, 'q.hds'), '1G']));
    for (const v of [1, 2]) {
      const args = ['--size', '1G', '--cluster-size', '1M', '--version', `${v}`];
      ok(await cli(['image', 'create', path.join(w, `i${v}.hds`), ...args]));
    }
    const p = await readRawHeader(theirs);
    const q = await readRawHeader(path.join(w, 'q.hds'));
    const i1 = await readRawHeader(path.join(w, 'i1.hds'));
    const i2 = await readRawHeader(path.join(w, 'i2.hds'));
    expect(layout(p)).toEqual({
      type: 2,
      clusterSectors: 2048,
      batEntries: 1024,
      sizeSectors: 2097152,
      dataOff: 2048,
    });
    for (const h of [q, i1, i2]) expect(layout(h)).toEqual(layout(p));
    expect([p.signature, i1.signature]).toEqual([SIG_V1, SIG_V1]);
    expect([q.signature, i2.signature]).toEqual([SIG_V2, SIG_V2]);
    for (const h of [i1, i2]) {
      // CHS as ploop computes it; clean; no extension; CIF_Empty as ploop sets it when empty.
      expect([h.heads, h.cylinders]).toEqual([p.heads, p.cylinders]);
      expect([h.inUse, h.extOff, h.flags]).toEqual([0, 0, 1]);
    }
    for (const f of ['i1.hds', 'i2.hds']) {
      expect((await fsp.stat(path.join(w, f))).size).toBe((await fsp.stat(theirs)).size);
    }
    for (const f of ['i1.hds', 'i2.hds']) {
      expectCode(await qemuImg(['check', path.join(w, f)]), 0);
      expectCode(await ploop(['check', '-f', '-c', path.join(w, f)]), 0);
    }
  });
});

describe.concurrent('R2: we read what QEMU and ploop wrote', () => {
  it.for([
    { size: DISK, cluster: '1M' },
    // QEMU does not round the size to whole clusters (ploop-format.md §1.2).
    { size: 67_000_000, cluster: '64k' },
  ])('QEMU image of $size bytes, $cluster clusters', async ({ size, cluster }, ctx) => {
    const w = await scratch(ctx);
    const src = path.join(w, 'src.hds');
    ok(
      await qemuImg(['create', '-f', 'parallels', '-o', `cluster_size=${cluster}`, src, `${size}`]),
    );
    await qemuIoWrite(src, [
      'write -P 0xab 0 4k',
      'write -P 0xcd 5M 1M',
      `write -P 0xef ${size - 512} 512`,
    ]);
    await qemuToRaw([src], path.join(w, 'exp.raw'));
    await exportTo(src, path.join(w, 'got.raw'));
    expect(await rawDifference(path.join(w, 'exp.raw'), path.join(w, 'got.raw'))).toBeNull();
  });

  it.for([
    { blocksize: 2048, format: 'expanded' },
    { blocksize: 2048, format: 'preallocated' },
    { blocksize: 256, format: 'expanded' },
    { blocksize: 131072, format: 'expanded' },
  ])('ploop init -b $blocksize -f $format, written by QEMU', async ({ blocksize, format }, ctx) => {
    const w = await scratch(ctx);
    const base = path.join(w, 'root.hdd');
    ok(await ploop(['init', '-s', '64M', '-b', `${blocksize}`, '-f', format, '-t', 'none', base]));
    await qemuIoWrite(base, ['write -P 0x41 100 200k', 'write -P 0x42 33M 1M']);
    await qemuToRaw([base], path.join(w, 'exp.raw'));
    await exportTo(path.join(w, 'DiskDescriptor.xml'), path.join(w, 'got.raw'));
    expect(await rawDifference(path.join(w, 'exp.raw'), path.join(w, 'got.raw'))).toBeNull();
  });
});

describe.concurrent('R3: QEMU and ploop accept what we write', () => {
  const writes: PatternWrite[] = [
    { offset: 0, length: 4096, byte: 0x11 },
    { offset: 5 * MiB + 1000, length: 100_000, byte: 0x5a },
    { offset: 5 * MiB + 50_000, length: 10, byte: 0x77 },
    { offset: DISK - 512, length: 512, byte: 0xef },
  ];
  const cases = [1, 2].flatMap((version) =>
    ['64K', '1M', '64M'].flatMap((cluster) =>
      ['expanded', 'preallocated'].map((format) => ({ version, cluster, format })),
    ),
  );

  it.for(cases)(
    'v$version, $cluster clusters, $format',
    async ({ version, cluster, format }, ctx) => {
      const w = await scratch(ctx);
      const file = path.join(w, 'w.hds');
      await create(file, version, cluster, format);
      await writePatterns(file, writes);

      const h = await readRawHeader(file);
      expect(h.signature).toBe(version === 1 ? SIG_V1 : SIG_V2);
      // Closed clean, no extension, CIF_Empty cleared once data exists.
      expect([h.inUse, h.extOff, h.flags]).toEqual([0, 0, 0]);

      expectCode(await qemuImg(['check', file]), 0);
      expect(await qemuPatternFailures(file, patternReads(DISK, writes))).toBe('');
      const expected = path.join(w, 'expected.raw');
      await writeRawFile(expected, DISK, writes);
      await qemuToRaw([file], path.join(w, 'qemu.raw'));
      expect(await rawDifference(expected, path.join(w, 'qemu.raw'))).toBeNull();
      await exportTo(file, path.join(w, 'ours.raw'));
      expect(await rawDifference(expected, path.join(w, 'ours.raw'))).toBeNull();

      const check = await ploop(['check', '-f', '-c', file]);
      if (format === 'preallocated' && check.code !== 0) {
        // ploop 1.15 calls partial writes into fallocated clusters "sparse" (its own images too).
        expect(check.stderr).toMatch(/is sparse/);
        expectCode(await ploop(['check', '-f', '-c', '-S', file]), 0);
        expectCode(await ploop(['check', '-f', '-c', file]), 0);
        expect(await imageDifference(file, expected)).toBeNull();
      } else {
        expectCode(check, 0);
      }
    },
  );

  it.for(['1M', '64K'])('image import with %s clusters', async (cluster, ctx) => {
    const w = await scratch(ctx);
    const raw = path.join(w, 'in.raw');
    await writeRawFile(raw, DISK, [
      { offset: 7 * MiB - 1000, length: 3000, byte: 0x21 },
      { offset: DISK - 512, length: 512, byte: 0x22 },
    ]);
    const file = path.join(w, 'imp.hds');
    const imported = await cliJson(['image', 'import', raw, file, '--cluster-size', cluster]);
    expect(imported).toEqual({ imagePath: file });
    expectCode(await qemuImg(['check', file]), 0);
    expectCode(await ploop(['check', '-f', '-c', file]), 0);
    expect(await imageDifference(file, raw)).toBeNull();
    await exportTo(file, path.join(w, 'ours.raw'));
    expect(await rawDifference(raw, path.join(w, 'ours.raw'))).toBeNull();
  });
});

describe.concurrent('R4–R6: chains shared with ploop', () => {
  it('R4: reads a chain ploop snapshotted and QEMU wrote', async (ctx) => {
    const w = await scratch(ctx);
    const c = await ploopChainWrittenByQemu(w);
    await qemuToRaw([c.base, c.top], path.join(w, 'exp.raw'));
    await exportTo(c.dd, path.join(w, 'got.raw'));
    expect(await rawDifference(path.join(w, 'exp.raw'), path.join(w, 'got.raw'))).toBeNull();
    const info = await cliJson<{
      deltas: { path: string }[];
      snapshots: { guid: string; current: boolean }[];
    }>(['image', 'info', c.dd]);
    expect(info.deltas.map((d) => d.path)).toEqual([c.base, c.top]);
    const theirs = await ploopSnapshotList(c.dd);
    expect(info.snapshots.map((s) => [s.guid, s.current])).toEqual(
      theirs.map((s) => [s.guid, s.current]),
    );
  });

  it('R5: merge gives the content ploop snapshot-merge gives', async (ctx) => {
    const w = await scratch(ctx);
    const c = await ploopChainWrittenByQemu(w);
    const exp = path.join(w, 'exp.raw');
    await qemuToRaw([c.base, c.top], exp);
    const c2 = path.join(w, 'c2');
    await fsp.cp(c.dir, c2, { recursive: true });
    expect(await cliJson(['image', 'merge', c.dd])).toEqual({ merged: true });
    ok(await ploop(['snapshot-merge', path.join(c2, 'DiskDescriptor.xml')]));
    const merged = path.join(c.dir, 'root.hdd');
    expect(await imageDifference(merged, exp)).toBeNull();
    const vsPloop = ['compare', '-f', 'parallels', '-F', 'parallels'];
    expectCode(await qemuImg([...vsPloop, merged, path.join(c2, 'root.hdd')]), 0);
    // Same descriptor outcome: the top GUID survives on the parent's file, the delta is gone.
    expect(await ploopSnapshotList(c.dd)).toEqual(
      await ploopSnapshotList(path.join(c2, 'DiskDescriptor.xml')),
    );
    expect((await fsp.readdir(c.dir)).sort()).toEqual((await fsp.readdir(c2)).sort());
    expectCode(await qemuImg(['check', merged]), 0);
    // -S: the clusters QEMU wrote may be "sparse" for ploop 1.15 (ploop-format.md §1.10).
    expectCode(await ploop(['check', '-f', '-c', '-S', merged]), 0);
    expectCode(await ploop(['check', '-f', '-c', merged]), 0);
  });

  it('R6: ploop consumes a snapshot we take', async (ctx) => {
    const w = await scratch(ctx);
    const c = await ploopChainWrittenByQemu(w);
    const { guid } = await cliJson<{ guid: string }>(['image', 'snapshot', c.dd]);
    const theirs = await ploopSnapshotList(c.dd);
    expect(theirs).toHaveLength(3);
    expect(theirs.find((s) => s.current)).toMatchObject({ guid: TOP_GUID, parent: guid });
    expect(theirs.find((s) => s.guid === guid)!.file).toBe(path.basename(c.top));
    const ours = await cliJson<{ guid: string; parent: string; current: boolean; file: string }[]>([
      'image',
      'snapshot-list',
      c.dd,
    ]);
    const norm = (l: { guid: string; parent: string; current: boolean; file: string }[]) =>
      l
        .map((s) => [s.guid, s.parent, s.current, path.basename(s.file)])
        .sort((a, b) => String(a[0]).localeCompare(String(b[0])));
    expect(norm(ours)).toEqual(norm(theirs));
    expectCode(await ploop(['check', c.dd]), 0);

    // Data we write into our new top reads the same through QEMU and after ploop's merge.
    await writePatterns(c.dd, [
      { offset: MiB + 2048, length: 8192, byte: 0xcc },
      { offset: 40 * MiB, length: 4096, byte: 0xdd },
    ]);
    const exp = path.join(w, 'exp.raw');
    await qemuReadsDisk(c.dd, exp);
    await exportTo(c.dd, path.join(w, 'ours.raw'));
    expect(await rawDifference(exp, path.join(w, 'ours.raw'))).toBeNull();
    ok(await ploop(['snapshot-merge', c.dd]));
    expect(await chainFiles(c.dd)).toHaveLength(2);
    await qemuReadsDisk(c.dd, path.join(w, 'merged.raw'));
    expect(await rawDifference(exp, path.join(w, 'merged.raw'))).toBeNull();
    expectCode(await ploop(['check', '-f', '-c', '-S', c.dd]), 0);
  });

  it('v2 disk of ours: snapshot listed and checked by ploop', async (ctx) => {
    const w = await scratch(ctx);
    const dir = path.join(w, 'd');
    const args = ['--size', '64M', '--cluster-size', '64K', '--version', '2'];
    const { descriptorPath: dd } = await cliJson<{ descriptorPath: string }>([
      'image',
      'create',
      `${dir}/`,
      ...args,
    ]);
    await writePatterns(dd, [{ offset: 12345, length: 300_000, byte: 0x61 }]);
    const { guid } = await cliJson<{ guid: string }>(['image', 'snapshot', dd]);
    await writePatterns(dd, [{ offset: 100_000, length: 70_000, byte: 0x62 }]);
    expect((await ploopSnapshotList(dd)).map((s) => [s.guid, s.parent, s.current])).toEqual([
      [guid, NONE_GUID, false],
      [TOP_GUID, guid, true],
    ]);
    expectCode(await ploop(['check', '-f', '-c', dd]), 0);
    await qemuReadsDisk(dd, path.join(w, 'exp.raw'));
    await exportTo(dd, path.join(w, 'ours.raw'));
    expect(await rawDifference(path.join(w, 'exp.raw'), path.join(w, 'ours.raw'))).toBeNull();
  });

  it('snapshot-delete matches ploop snapshot-delete', async (ctx) => {
    const w = await scratch(ctx);
    const dir = path.join(w, 's');
    await fsp.mkdir(dir);
    const dd = path.join(dir, 'DiskDescriptor.xml');
    ok(await ploop(['init', '-s', '64M', '-t', 'none', path.join(dir, 'root.hdd')]));
    await qemuIoWrite(path.join(dir, 'root.hdd'), ['write -P 0xaa 0 3M']);
    const a = (await cliJson<{ guid: string }>(['image', 'snapshot', dd])).guid;
    await writePatterns(dd, [
      { offset: MiB, length: 4096, byte: 0x22 },
      { offset: 10 * MiB, length: 4096, byte: 0x23 },
    ]);
    const b = (await cliJson<{ guid: string }>(['image', 'snapshot', dd])).guid;
    await writePatterns(dd, [
      { offset: MiB + 2048, length: 8192, byte: 0x33 },
      { offset: 20 * MiB, length: 4096, byte: 0x34 },
    ]);
    const full = path.join(w, 'full.raw');
    await qemuReadsDisk(dd, full);
    const dir2 = path.join(w, 's2');
    await fsp.cp(dir, dir2, { recursive: true });
    const dd2 = path.join(dir2, 'DiskDescriptor.xml');
    // Deleting A merges B's delta into the base file; deleting B then merges the top into it.
    for (const g of [a, b]) {
      const r = await cliJson(['image', 'snapshot-delete', dd, '--id', g]);
      expect(r).toEqual({ deferred: false });
      ok(await ploop(['snapshot-delete', '-u', g, dd2]));
      expect(await ploopSnapshotList(dd)).toEqual(await ploopSnapshotList(dd2));
      expect((await fsp.readdir(dir)).sort()).toEqual((await fsp.readdir(dir2)).sort());
      for (const [d, name] of [
        [dd, 'ours'],
        [dd2, 'theirs'],
      ] as const) {
        const out = path.join(w, `${name}-${g}.raw`);
        await qemuReadsDisk(d, out);
        expect(await rawDifference(full, out)).toBeNull();
      }
    }
    await exportTo(dd, path.join(w, 'ours.raw'));
    expect(await rawDifference(full, path.join(w, 'ours.raw'))).toBeNull();
    expectCode(await ploop(['check', '-f', '-c', '-S', dd]), 0);
    expectCode(await qemuImg(['check', path.join(dir, 'root.hdd')]), 0);
  });

  it('merge into a smaller parent grows it like ploop', async (ctx) => {
    const w = await scratch(ctx);
    const dir = path.join(w, 'g');
    const args = ['--size', '64M', '--cluster-size', '64K', '--version', '2'];
    const { descriptorPath: dd } = await cliJson<{ descriptorPath: string }>([
      'image',
      'create',
      `${dir}/`,
      ...args,
    ]);
    await writePatterns(dd, [{ offset: 12345, length: 300_000, byte: 0x61 }]);
    ok(await cli(['image', 'snapshot', dd]));
    ok(await cli(['image', 'grow', dd, '--size', '100M']));
    await writePatterns(dd, [
      { offset: 100_000, length: 70_000, byte: 0x62 },
      { offset: 90 * MiB, length: 70_000, byte: 0x63 },
    ]);
    const full = path.join(w, 'full.raw');
    await qemuReadsDisk(dd, full);
    expect((await fsp.stat(full)).size).toBe(100 * MiB);
    const dir2 = path.join(w, 'g2');
    await fsp.cp(dir, dir2, { recursive: true });
    ok(await cli(['image', 'merge', dd]));
    ok(await ploop(['snapshot-merge', path.join(dir2, 'DiskDescriptor.xml')]));
    const ours = path.join(dir, 'root.hds');
    const theirs = path.join(dir2, 'root.hds');
    expect(layout(await readRawHeader(ours))).toEqual(layout(await readRawHeader(theirs)));
    expect(await imageDifference(ours, full)).toBeNull();
    expectCode(await qemuImg(['compare', '-f', 'parallels', '-F', 'parallels', ours, theirs]), 0);
    expectCode(await qemuImg(['check', ours]), 0);
    expectCode(await ploop(['check', '-f', '-c', ours]), 0);
    // Compaction after the merge keeps the image valid for both tools.
    const compact = await cliJson<{ before: number; after: number }>(['image', 'compact', dd]);
    expect(compact.after).toBeLessThanOrEqual(compact.before);
    expect(await imageDifference(ours, full)).toBeNull();
    expectCode(await qemuImg(['check', ours]), 0);
    expectCode(await ploop(['check', '-f', '-c', ours]), 0);
    expect(await descriptorSize(dd)).toEqual(
      await descriptorSize(path.join(dir2, 'DiskDescriptor.xml')),
    );
  });
});

describe.concurrent('R7: an image left in use', () => {
  it.for([1, 2])('v%i: reported by check, fixed by check --repair', async (version, ctx) => {
    const w = await scratch(ctx);
    const file = path.join(w, 'd.hds');
    const writes = await writtenImage(file, version);
    await pokeU32(file, 44, IN_USE);

    const q = path.join(w, 'q.hds');
    await fsp.copyFile(file, q);
    expectCode(await qemuImg(['check', q]), 2);
    expectCode(await ploop(['check', q]), 37);

    const r = await cli(['image', 'check', file]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/not closed cleanly/);
    // A read-write open refuses the image until it is repaired.
    await expect(PloopImage.open(file)).rejects.toThrow(/not closed cleanly/);

    const fixed = await cliJson<{ clean: boolean }>(['image', 'check', file, '--repair']);
    expect(fixed.clean).toBe(true);
    expect((await readRawHeader(file)).inUse).toBe(0);
    expectCode(await qemuImg(['check', file]), 0);
    expectCode(await ploop(['check', file]), 0);
    expectCode(await ploop(['check', '-f', '-c', file]), 0);
    expect(await qemuPatternFailures(file, patternReads(DISK, writes))).toBe('');
  });
});

describe.concurrent('R8: corruption is detected; repair keeps the good clusters', () => {
  // In our 1 MiB images vc 0 lives in file cluster 1 and vc 5 in file cluster 2.
  const cases = [
    { version: 1, name: 'entry beyond EOF', index: 7, value: () => 0x10000 },
    { version: 1, name: 'duplicate entry', index: 9, value: (e0: number) => e0 },
    { version: 1, name: 'misaligned entry', index: 9, value: (e0: number) => e0 + 1 },
    { version: 1, name: 'entry inside the BAT', index: 9, value: () => 1 },
    { version: 2, name: 'entry beyond EOF', index: 7, value: () => 0x100 },
    { version: 2, name: 'duplicate entry', index: 9, value: (e0: number) => e0 },
  ];

  it.for(cases)('v$version: $name', async ({ version, name, index, value }, ctx) => {
    const w = await scratch(ctx);
    const file = path.join(w, 'bad.hds');
    const writes = await writtenImage(file, version);
    await pokeU32(file, 64 + 4 * index, value(await readBatEntry(file, 0)));

    const theirs = path.join(w, 'theirs.hds');
    await fsp.copyFile(file, theirs);
    expectCode(await ploop(['check', '-f', '-c', theirs]), 11);

    const r = await cli(['image', 'check', file, '--json']);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const report = JSON.parse(r.stdout) as {
      clean: boolean;
      images: { findings: { severity: string; message: string }[] }[];
    };
    expect(report.clean).toBe(false);
    const errors = report.images[0]!.findings.filter((f) => f.severity === 'error');
    expect(errors.map((f) => f.message)).toEqual([expect.stringContaining(`BAT entry ${index}`)]);

    const fixed = await cliJson<{ clean: boolean }>(['image', 'check', file, '--repair']);
    expect(fixed.clean).toBe(true);
    expectCode(await qemuImg(['check', file]), 0);
    expectCode(await ploop(['check', '-f', '-c', file]), 0);
    // A duplicate keeps reading what it pointed at (now a copy); other bad entries read zero.
    const after =
      name === 'duplicate entry'
        ? [...writes, { offset: index * MiB, length: 4096, byte: 0x11 }]
        : writes;
    expect(await qemuPatternFailures(file, patternReads(DISK, after))).toBe('');
  });
});

describe.concurrent('R9: grow', () => {
  it.for([1, 2])('v%i to 300G: same header as ploop grow', async (version, ctx) => {
    const w = await scratch(ctx);
    const src = path.join(w, 'w.hds');
    const writes = await writtenImage(src, version);
    const g1 = path.join(w, 'g1.hds');
    const g2 = path.join(w, 'g2.hds');
    await fsp.copyFile(src, g1);
    await fsp.copyFile(src, g2);
    const r = await cliJson<{ virtualSize: number }>(['image', 'grow', g1, '--size', '300G']);
    expect(r.virtualSize).toBe(300 * 1024 * MiB);
    ok(await ploop(['grow', '-s', '300G', g2]));
    const h1 = await readRawHeader(g1);
    expect(h1).toMatchObject({
      type: 2,
      heads: 16,
      cylinders: 1228800,
      clusterSectors: 2048,
      batEntries: 307200,
      sizeSectors: 629145600,
      inUse: 0,
      dataOff: 4096,
      flags: 0,
      extOff: 0,
    });
    // ploop grow sets CIF_Empty on an image with data (ploop-format.md §6.1): flags not compared.
    expect({ ...h1, flags: 0 }).toEqual({ ...(await readRawHeader(g2)), flags: 0 });
    expectCode(await qemuImg(['check', g1]), 0);
    expectCode(await ploop(['check', '-f', '-c', g1]), 0);
    expectCode(await qemuImg(['compare', '-f', 'parallels', '-F', 'parallels', g1, g2]), 0);
    expect(await qemuPatternFailures(g1, patternReads(DISK, writes))).toBe('');
  });

  it('64K clusters to 10G: several data clusters relocated', async (ctx) => {
    const w = await scratch(ctx);
    const src = path.join(w, 'k.hds');
    await create(src, 2, '64K');
    const writes = Array.from({ length: 12 }, (_, i) => ({
      offset: (5 - (i % 6)) * MiB + i * 70_000,
      length: 1000,
      byte: 0x40 + i,
    }));
    await writePatterns(src, writes);
    const g1 = path.join(w, 'g1.hds');
    const g2 = path.join(w, 'g2.hds');
    await fsp.copyFile(src, g1);
    await fsp.copyFile(src, g2);
    ok(await cli(['image', 'grow', g1, '--size', '10G']));
    ok(await ploop(['grow', '-s', '10G', g2]));
    const h1 = await readRawHeader(g1);
    expect(h1.dataOff).toBeGreaterThan((await readRawHeader(src)).dataOff);
    expect({ ...h1, flags: 0 }).toEqual({ ...(await readRawHeader(g2)), flags: 0 });
    expectCode(await qemuImg(['check', g1]), 0);
    expectCode(await ploop(['check', '-f', '-c', g1]), 0);
    expectCode(await qemuImg(['compare', '-f', 'parallels', '-F', 'parallels', g1, g2]), 0);
    expectCode(await qemuImg(['compare', '-f', 'parallels', '-F', 'parallels', src, g1]), 0);
  });

  it('a disk through its descriptor, like ploop grow on DiskDescriptor.xml', async (ctx) => {
    const w = await scratch(ctx);
    const dir = path.join(w, 'd');
    const { descriptorPath: dd } = await cliJson<{ descriptorPath: string }>([
      'image',
      'create',
      `${dir}/`,
      '--size',
      '64M',
      '--version',
      '1',
    ]);
    await writePatterns(dd, [{ offset: 3 * MiB, length: 5000, byte: 0x71 }]);
    const dir2 = path.join(w, 'd2');
    await fsp.cp(dir, dir2, { recursive: true });
    const dd2 = path.join(dir2, 'DiskDescriptor.xml');
    ok(await cli(['image', 'grow', dir, '--size', '1G']));
    ok(await ploop(['grow', '-s', '1G', dd2]));
    expect(await descriptorSize(dd)).toEqual({ diskSize: 2097152, end: 2097152 });
    expect(await descriptorSize(dd)).toEqual(await descriptorSize(dd2));
    const ours = path.join(dir, 'root.hds');
    const theirs = path.join(dir2, 'root.hds');
    expect({ ...(await readRawHeader(ours)), flags: 0 }).toEqual({
      ...(await readRawHeader(theirs)),
      flags: 0,
    });
    expectCode(await ploop(['check', '-f', '-c', dd]), 0);
    expectCode(await qemuImg(['check', ours]), 0);
    expectCode(await qemuImg(['compare', '-f', 'parallels', '-F', 'parallels', ours, theirs]), 0);
  });
});

describe.concurrent('R10: format extension', () => {
  it('QEMU still opens the image after our read-write use', async (ctx) => {
    const w = await scratch(ctx);
    const file = path.join(w, 'e.hds');
    const writes = await writtenImage(file, 2);
    await appendFormatExtension(file);
    // QEMU parses the extension on a read-only open (its check calls the cluster leaked).
    expectCode(await qemuImg(['info', file]), 0);
    const report = await cliJson<{ clean: boolean }>(['image', 'check', file]);
    expect(report.clean).toBe(true);
    await qemuToRaw([file], path.join(w, 'exp.raw'));
    await exportTo(file, path.join(w, 'ours.raw'));
    expect(await rawDifference(path.join(w, 'exp.raw'), path.join(w, 'ours.raw'))).toBeNull();

    // A read-write open (grow) either keeps the extension or drops it together with ext_off.
    ok(await cli(['image', 'grow', file, '--size', '128M']));
    const h = await readRawHeader(file);
    expect(h.inUse).toBe(0);
    if (h.extOff !== 0)
      expect(h.extOff * 512 + MiB).toBeLessThanOrEqual((await fsp.stat(file)).size);
    expectCode(await qemuImg(['info', file]), 0);
    expectCode(await qemuImg(['check', file]), 0);
    expectCode(await ploop(['check', '-f', '-c', file]), 0);
    expect(await qemuPatternFailures(file, patternReads(128 * MiB, writes))).toBe('');
  });
});

// Every command's --json output is parsed by the tests above (cliJson); here, the failure path.
describe.concurrent('CLI contract', () => {
  it('a failing command exits non-zero with a one-line reason on stderr', async (ctx) => {
    const w = await scratch(ctx);
    const good = path.join(w, 'good.hds');
    await fsp.copyFile(written[2]!, good);
    const junk = path.join(w, 'junk.bin');
    await fsp.writeFile(junk, Buffer.alloc(MiB, 0x5c));
    const bad = path.join(w, 'bad.hds');
    await fsp.copyFile(good, bad);
    await pokeU32(bad, 64 + 4 * 7, 0x100);
    const cases: [string[], RegExp][] = [
      [['image', 'info', path.join(w, 'missing.hds')], /no such file/],
      [['image', 'check', junk], /not a ploop image/],
      [['image', 'export', bad, path.join(w, 'x.raw')], /BAT entry 7/],
      [['image', 'grow', good, '--size', '1M'], /cannot shrink/],
      [['image', 'create', path.join(w, 'c.hds'), '--size', '1M', '--cluster-size', '3K'], /64K/],
      [['image', 'create', path.join(w, 'c.hds'), '--size', '1M', '--version', '3'], /version/],
      [['image', 'merge', path.join(w, 'nodisk')], /no such descriptor/],
    ];
    await Promise.all(
      cases.map(async ([args, why], i) => {
        // Alternate plain and --json: failures report the same way in both.
        const r = await cli(i % 2 ? [...args, '--json'] : args);
        expect(r.code, r.cmd).not.toBe(0);
        const lines = r.stderr.split('\n').filter(Boolean);
        expect(lines, `${r.cmd}: ${r.stderr}`).toHaveLength(1);
        expect(lines[0]).toMatch(/^ploop-csi: /);
        expect(lines[0]).toMatch(why);
        // Each path is named once.
        const paths = lines[0]!.match(/\/[^\s:,']+/g) ?? [];
        expect(new Set(paths).size, lines[0]).toBe(paths.length);
      }),
    );
  });
});
