import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  Chain,
  IoError,
  InvalidArgumentError,
  NotFoundError,
  PloopImage,
  checkImage,
  createDisk,
  exportRaw,
  flatten,
  importRaw,
  snapshot,
} from '../../src/ploop/index.js';
import {
  K64,
  byteDiff,
  fileSize,
  makeTempDir,
  pattern,
  readDisk,
  readHeader,
  removeDir,
} from './helpers.js';

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir();
});
afterEach(() => removeDir(dir));

const f = (name: string) => path.join(dir, name);

/** A raw disk of 20.5 clusters: data in clusters 1, 2 (partly), 7 and the partial tail. */
async function rawFixture(): Promise<Buffer> {
  const raw = Buffer.alloc(20 * K64 + K64 / 2);
  pattern(K64 + 100, 1).copy(raw, K64);
  pattern(10, 2).copy(raw, 7 * K64 + 5);
  pattern(100, 3).copy(raw, 20 * K64 + 10);
  await fsp.writeFile(f('in.raw'), raw);
  return raw;
}

describe('importRaw', () => {
  it.each([1, 2] as const)('stores only non-zero clusters (v%d)', async (version) => {
    const raw = await rawFixture();
    await importRaw(f('in.raw'), f('out.hds'), { clusterSize: K64, version });
    const h = await readHeader(f('out.hds'));
    expect(h.version).toBe(version);
    expect(h.batEntries).toBe(21);
    expect(h.inUse).toBe(0);
    const img = await PloopImage.open(f('out.hds'), { readOnly: true });
    expect(img.allocatedClusters).toBe(4);
    expect([0, 3, 19].map((vc) => img.map(vc))).toEqual([-1, -1, -1]);
    await img.close();
    expect(await fileSize(f('out.hds'))).toBe(5 * K64);
    const disk = await readDisk(f('out.hds'));
    expect(disk.length).toBe(21 * K64);
    expect(byteDiff(disk.subarray(0, raw.length), raw)).toBe('');
    expect(disk.subarray(raw.length).every((b) => b === 0)).toBe(true);
    expect((await checkImage(f('out.hds'))).clean).toBe(true);
  });

  it('rejects an empty source and never overwrites', async () => {
    await fsp.writeFile(f('empty.raw'), '');
    await expect(importRaw(f('empty.raw'), f('x.hds'))).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await rawFixture();
    await fsp.writeFile(f('exists.hds'), 'keep');
    await expect(
      importRaw(f('in.raw'), f('exists.hds'), { clusterSize: K64 }),
    ).rejects.toBeInstanceOf(IoError);
    expect(await fsp.readFile(f('exists.hds'), 'utf8')).toBe('keep');
    await expect(importRaw(f('missing.raw'), f('y.hds'))).rejects.toBeInstanceOf(NotFoundError);
  });

  it('reports progress', async () => {
    await rawFixture();
    const seen: [number, number][] = [];
    await importRaw(f('in.raw'), f('p.hds'), {
      clusterSize: K64,
      progress: (d, t) => seen.push([d, t]),
    });
    expect(seen.at(-1)).toEqual([21, 21]);
  });
});

describe('exportRaw and flatten', () => {
  async function chainFixture(version: 1 | 2): Promise<{ dd: string; expected: Buffer }> {
    const { descriptorPath: dd } = await createDisk(f('disk'), {
      size: 16 * K64,
      clusterSize: K64,
      version,
    });
    const expected = Buffer.alloc(16 * K64);
    const c0 = await Chain.open(dd);
    const a = pattern(3 * K64, 1);
    await c0.write(a, 0);
    await c0.close();
    a.copy(expected, 0);
    await snapshot(dd);
    const c1 = await Chain.open(dd);
    const b = pattern(K64, 2);
    await c1.write(b, K64 + K64 / 2);
    await c1.discard(0, K64);
    await c1.close();
    b.copy(expected, K64 + K64 / 2);
    expected.fill(0, 0, K64);
    return { dd, expected };
  }

  it.each([1, 2] as const)('exports a two-level chain to a sparse raw file (v%d)', async (v) => {
    const { dd, expected } = await chainFixture(v);
    await exportRaw(dd, f('out.raw'));
    const out = await fsp.readFile(f('out.raw'));
    expect(byteDiff(out, expected)).toBe('');
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
    const st = await fsp.stat(f('out.raw'));
    expect(st.blocks * 512).toBeLessThan(16 * K64);
    await expect(exportRaw(dd, f('out.raw'))).rejects.toBeInstanceOf(IoError);
  });

  it.each([1, 2] as const)('flattens a chain into one image (v%d)', async (v) => {
    const { dd, expected } = await chainFixture(v);
    await flatten(dd, f('flat.hds'));
    const h = await readHeader(f('flat.hds'));
    expect(h.version).toBe(v);
    expect(h.clusterSectors).toBe(128);
    expect(byteDiff(await readDisk(f('flat.hds')), expected)).toBe('');
    expect((await checkImage(f('flat.hds'))).clean).toBe(true);
    // The zero cluster mapped over lower data is copied too: 3 clusters + BAT.
    expect(await fileSize(f('flat.hds'))).toBe(4 * K64);
  });

  it('round-trips raw → image → raw', async () => {
    const raw = await rawFixture();
    await importRaw(f('in.raw'), f('rt.hds'), { clusterSize: K64 });
    await exportRaw(f('rt.hds'), f('rt.raw'));
    const back = await fsp.readFile(f('rt.raw'));
    expect(back.length).toBe(21 * K64);
    expect(byteDiff(back.subarray(0, raw.length), raw)).toBe('');
  });
});
