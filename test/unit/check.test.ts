import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BAT_ENTRY_NONE,
  CIF_EMPTY,
  CLOSED_V21,
  Chain,
  CorruptImageError,
  HEADER_SIZE,
  IN_USE,
  NotFoundError,
  PloopImage,
  assertClean,
  checkImage,
  isDirty,
  repairImage,
} from '../../src/ploop/index.js';
import {
  K64,
  byteDiff,
  fileSize,
  makeTempDir,
  patchHeader,
  pattern,
  readBytes,
  readDisk,
  readEntry,
  readHeader,
  removeDir,
  writeBytes,
  writeEntry,
} from './helpers.js';

const CLUSTERS = 16;
const SIZE = CLUSTERS * K64;
/** Virtual clusters holding data in the fixture, at file clusters 1, 2, 3. */
const DATA_VCS = [0, 1, 2];

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir();
});
afterEach(() => removeDir(dir));

async function fixture(version: 1 | 2, name = `img${version}.hds`): Promise<string> {
  const file = path.join(dir, name);
  await PloopImage.create(file, { size: SIZE, clusterSize: K64, version });
  const img = await PloopImage.open(file);
  for (const vc of DATA_VCS) await img.allocate(vc, pattern(K64, 40 + vc));
  await img.close();
  return file;
}

/** Entry value for file cluster `c` in the given version. */
const entryFor = (version: 1 | 2, c: number) => (version === 1 ? c * 128 : c);

function model(extra: Record<number, Buffer> = {}): Buffer {
  const m = Buffer.alloc(SIZE);
  for (const vc of DATA_VCS) pattern(K64, 40 + vc).copy(m, vc * K64);
  for (const [vc, data] of Object.entries(extra)) data.copy(m, Number(vc) * K64);
  return m;
}

async function rawClusters(file: string): Promise<Buffer> {
  return readBytes(file, K64, 3 * K64);
}

/** Runs check, repair, check again; asserts the errors and the final content. */
async function checkRepair(file: string, error: RegExp, expected = model()): Promise<void> {
  const valid = await rawClusters(file);
  const before = await checkImage(file);
  expect(before.clean).toBe(false);
  const errors = before.findings.filter((f) => f.severity === 'error').map((f) => f.message);
  expect(errors.join('\n')).toMatch(error);
  expect(() => assertClean(before)).toThrow(CorruptImageError);
  // A check without repair writes nothing.
  expect(byteDiff(await rawClusters(file), valid)).toBe('');
  const fixed = await repairImage(file);
  expect(fixed.clean).toBe(true);
  expect(fixed.findings.some((f) => f.fixed)).toBe(true);
  const after = await checkImage(file);
  expect(after.findings.filter((f) => f.severity === 'error')).toEqual([]);
  expect(after.clean).toBe(true);
  const h = await readHeader(file);
  expect(h.inUse).toBe(0);
  expect((await fileSize(file)) % K64).toBe(0);
  // Clusters that were valid keep their bytes in place.
  expect(byteDiff(await rawClusters(file), valid)).toBe('');
  expect(byteDiff(await readDisk(file), expected)).toBe('');
  // And the image opens read-write again.
  await (await Chain.open(file)).close();
}

describe.each([1, 2] as const)('version %d', (version) => {
  it('a clean image has no findings', async () => {
    const file = await fixture(version);
    const r = await checkImage(file);
    expect(r.clean).toBe(true);
    expect(r.findings).toEqual([]);
    expect(r.allocatedClusters).toBe(3);
    expect(r.unreferencedClusters).toBe(0);
  });

  it('in-use flag', async () => {
    const file = await fixture(version);
    await patchHeader(file, { inUse: IN_USE });
    expect(await isDirty(file)).toBe(true);
    await checkRepair(file, /not closed cleanly/);
    expect(await isDirty(file)).toBe(false);
  });

  it('unknown in-use value', async () => {
    const file = await fixture(version);
    await patchHeader(file, { inUse: 0x12345678 });
    await checkRepair(file, /in-use value/);
  });

  it('entry beyond EOF', async () => {
    const file = await fixture(version);
    await writeEntry(file, 7, entryFor(version, 50));
    await checkRepair(file, /beyond the end/);
    expect(await readEntry(file, 7)).toBe(0);
  });

  it('entry far beyond EOF', async () => {
    const file = await fixture(version);
    await writeEntry(file, 7, version === 1 ? 0xfffff000 : 0xfffffff0);
    await checkRepair(file, /beyond the end/);
  });

  it('reserved entry 0xffffffff', async () => {
    const file = await fixture(version);
    await writeEntry(file, 8, BAT_ENTRY_NONE);
    await checkRepair(file, /reserved/);
  });

  it('duplicate entry is split by copying, both clusters keep their content', async () => {
    const file = await fixture(version);
    await writeEntry(file, 5, entryFor(version, 1));
    await checkRepair(file, /another entry uses/, model({ 5: pattern(K64, 40) }));
    const e0 = await readEntry(file, 0);
    const e5 = await readEntry(file, 5);
    expect(e0).toBe(entryFor(version, 1));
    expect(e5).not.toBe(e0);
    expect(e5).not.toBe(0);
  });

  it('file size that is not a cluster multiple', async () => {
    const file = await fixture(version);
    await writeBytes(file, 4 * K64, Buffer.alloc(1000, 7));
    await checkRepair(file, /not a whole number of clusters/);
    expect(await fileSize(file)).toBe(4 * K64);
  });

  it('a truncated last cluster', async () => {
    const file = await fixture(version);
    await fsp.truncate(file, 4 * K64 - 1000);
    const r = await checkImage(file);
    expect(r.clean).toBe(false);
    const fixed = await repairImage(file);
    expect(fixed.clean).toBe(true);
    expect((await checkImage(file)).clean).toBe(true);
    const exp = model();
    exp.fill(0, 3 * K64 - 1000, 3 * K64);
    expect(byteDiff(await readDisk(file), exp)).toBe('');
  });

  it('dangling format extension (ext_off at a data cluster)', async () => {
    const file = await fixture(version);
    await patchHeader(file, { extOff: 2 * 128 });
    await checkRepair(file, /format extension/);
    expect((await readHeader(file)).extOff).toBe(0);
  });

  it('dangling format extension (ext_off beyond EOF or inside the BAT)', async () => {
    for (const extOff of [1000 * 128, 1, 2 ** 40, Number.MAX_SAFE_INTEGER]) {
      const file = await fixture(version, `ext-${extOff}.hds`);
      await patchHeader(file, { extOff });
      await checkRepair(file, /format extension/);
      expect((await readHeader(file)).extOff).toBe(0);
    }
  });

  it('keeps a valid format extension on check, drops it on repair', async () => {
    const file = await fixture(version);
    const ext = Buffer.alloc(K64);
    ext.writeBigUInt64LE(0xab234cef23dcea87n, 0);
    await writeBytes(file, 4 * K64, ext);
    await patchHeader(file, { extOff: 4 * 128, inUse: CLOSED_V21 });
    const r = await checkImage(file);
    expect(r.clean).toBe(true);
    expect(r.findings.map((f) => f.message).join()).toMatch(/format extensions/);
    expect(r.unreferencedClusters).toBe(0);
    // Read-only use keeps it.
    expect(byteDiff(await readDisk(file), model())).toBe('');
    expect((await readHeader(file)).extOff).toBe(4 * 128);
    const fixed = await repairImage(file);
    expect(fixed.clean).toBe(true);
    const h = await readHeader(file);
    expect(h.extOff).toBe(0);
    expect(h.inUse).toBe(0);
    expect(byteDiff(await readDisk(file), model())).toBe('');
  });

  it('non-zero BAT padding after the last entry', async () => {
    const file = await fixture(version);
    await writeBytes(file, HEADER_SIZE + 4 * CLUSTERS + 8, Buffer.from([1, 2, 3, 4]));
    await checkRepair(file, /beyond the disk size/);
    const pad = await readBytes(file, HEADER_SIZE + 4 * CLUSTERS, K64 - HEADER_SIZE - 4 * CLUSTERS);
    expect(pad.every((b) => b === 0)).toBe(true);
  });

  it('everything at once', async () => {
    const file = await fixture(version);
    await patchHeader(file, { inUse: IN_USE, extOff: 3 * 128 });
    await writeEntry(file, 4, entryFor(version, 99));
    await writeEntry(file, 5, entryFor(version, 2));
    await writeEntry(file, 6, BAT_ENTRY_NONE);
    await writeEntry(file, 7, entryFor(version, 3));
    await writeBytes(file, 4 * K64, Buffer.alloc(10, 1));
    await checkRepair(
      file,
      /not closed cleanly/,
      model({ 5: pattern(K64, 41), 7: pattern(K64, 42) }),
    );
  });

  it('reports CIF_Empty on an image with data and fixes it', async () => {
    const file = await fixture(version);
    await patchHeader(file, { flags: CIF_EMPTY });
    const r = await checkImage(file);
    expect(r.clean).toBe(true);
    expect(r.findings.map((f) => f.message).join()).toMatch(/CIF_Empty/);
    await repairImage(file);
    expect((await readHeader(file)).flags & CIF_EMPTY).toBe(0);
  });

  it('counts unreferenced clusters and trims a leaked tail on repair', async () => {
    const file = await fixture(version);
    // Leak: a cluster inside (vc 1 unmapped) and two at the end.
    await writeEntry(file, 1, 0);
    await writeBytes(file, 6 * K64 - 1, Buffer.alloc(1));
    const r = await checkImage(file);
    expect(r.clean).toBe(true);
    expect(r.unreferencedClusters).toBe(3);
    await repairImage(file);
    expect(await fileSize(file)).toBe(4 * K64);
    const exp = model();
    exp.fill(0, K64, 2 * K64);
    expect(byteDiff(await readDisk(file), exp)).toBe('');
  });
});

describe('misaligned and BAT-area entries (v1)', () => {
  it('misaligned entry', async () => {
    const file = await fixture(1);
    // Half a cluster into file cluster 2: overlaps the clusters of vc 1 and vc 2.
    await writeEntry(file, 9, 2 * 128 + 64);
    await checkRepair(file, /not cluster aligned/);
    expect(await readEntry(file, 9)).toBe(0);
  });

  it('entry one sector off', async () => {
    const file = await fixture(1);
    await writeEntry(file, 9, 128 + 1);
    await checkRepair(file, /not cluster aligned/);
  });

  it('entry pointing into the header and BAT', async () => {
    const file = await fixture(1);
    await writeEntry(file, 9, 1);
    await checkRepair(file, /header\/BAT area/);
    const h = await readHeader(file);
    expect(h.batEntries).toBe(CLUSTERS);
    for (const vc of DATA_VCS) expect(await readEntry(file, vc)).toBe((vc + 1) * 128);
  });

  it('entry at sector 0', async () => {
    const file = await fixture(1);
    await writeEntry(file, 10, 0x80000000 / 512);
    await writeEntry(file, 11, 0);
    await checkRepair(file, /beyond the end/);
  });
});

describe('reporting', () => {
  it('reports a foreign file instead of throwing', async () => {
    const file = path.join(dir, 'foreign');
    await fsp.writeFile(file, Buffer.alloc(K64, 0x41));
    const r = await checkImage(file);
    expect(r.clean).toBe(false);
    expect(r.findings[0]!.message).toMatch(/not a ploop image/);
    const rr = await checkImage(file, { repair: true });
    expect(rr.clean).toBe(false);
  });

  it('reports a broken header', async () => {
    const file = await fixture(2);
    await patchHeader(file, { clusterSectors: 3 });
    const r = await checkImage(file);
    expect(r.clean).toBe(false);
    expect(r.findings[0]!.message).toMatch(/cluster size/);
  });

  it('handles a data offset far beyond the file without allocating it', async () => {
    const file = await fixture(2);
    await patchHeader(file, { dataOff: 0x7fff0000 });
    const rss = process.memoryUsage().rss;
    const r = await checkImage(file);
    expect(r.clean).toBe(false);
    expect(r.findings.map((f) => f.message).join()).toMatch(/header\/BAT area/);
    const fixed = await repairImage(file);
    expect(fixed.clean).toBe(true);
    expect(process.memoryUsage().rss - rss).toBeLessThan(256 << 20);
    expect(await fileSize(file)).toBeLessThanOrEqual(4 * K64);
  });

  it('throws NotFoundError for a missing file', async () => {
    await expect(checkImage(path.join(dir, 'nope'))).rejects.toBeInstanceOf(NotFoundError);
  });

  it('counts space released by discard as unreferenced', async () => {
    const file = await fixture(2);
    const chain = await Chain.open(file);
    await chain.discard(K64, K64);
    await chain.close();
    const r = await checkImage(file);
    expect(r.clean).toBe(true);
    expect(r.allocatedClusters).toBe(2);
    expect(r.unreferencedClusters).toBe(1);
  });
});

describe('repair on open', () => {
  it('a dirty image with damage is repaired by a read-write chain open', async () => {
    const file = await fixture(2);
    await patchHeader(file, { inUse: IN_USE });
    await writeEntry(file, 7, 500);
    await expect(Chain.open(file, { readOnly: true })).rejects.toBeInstanceOf(CorruptImageError);
    const chain = await Chain.open(file);
    await chain.close();
    expect(await readEntry(file, 7)).toBe(0);
    expect(byteDiff(await readDisk(file), model())).toBe('');
  });

  it('damage in a clean image is reported, not repaired silently', async () => {
    const file = await fixture(2);
    await writeEntry(file, 7, 500);
    await expect(Chain.open(file)).rejects.toThrow(/run check --repair/);
    expect(await readEntry(file, 7)).toBe(500);
  });
});
