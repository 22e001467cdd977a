import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  Chain,
  IN_USE,
  InvalidArgumentError,
  PloopImage,
  RawImage,
  createDisk,
  growDisk,
  isZero,
  listSnapshots,
  resolveTarget,
  snapshot,
} from '../../src/ploop/index.js';
import {
  K64,
  byteDiff,
  fileHash,
  fileSize,
  makeTempDir,
  patchHeader,
  pattern,
  readDisk,
  readEntry,
  readHeader,
  removeDir,
  writeDisk,
} from './helpers.js';

const CLUSTERS = 16;
const SIZE = CLUSTERS * K64;

let dir: string;
let dd: string;
beforeEach(async () => {
  dir = await makeTempDir();
  dd = (await createDisk(path.join(dir, 'disk'), { size: SIZE, clusterSize: K64 })).descriptorPath;
});
afterEach(() => removeDir(dir));

const base = () => path.join(dir, 'disk', 'root.hds');
async function topFile(): Promise<string> {
  return (await listSnapshots(dd)).find((s) => s.current)!.file;
}

/** The expected disk after applying writes to a zero buffer. */
function model(...writes: [number, Buffer][]): Buffer {
  const m = Buffer.alloc(SIZE);
  for (const [off, data] of writes) data.copy(m, off);
  return m;
}

describe('single delta', () => {
  it('reads zeros from an empty image', async () => {
    expect(isZero(await readDisk(dd))).toBe(true);
  });

  it('writes and reads back across cluster boundaries', async () => {
    const data = pattern(3 * K64 + 1000, 1);
    await writeDisk(dd, K64 - 500, data);
    expect(byteDiff(await readDisk(dd), model([K64 - 500, data]))).toBe('');
    // Clusters 0..4 touched: five whole clusters allocated.
    expect(await fileSize(base())).toBe(6 * K64);
  });

  it('allocates whole clusters for partial writes', async () => {
    await writeDisk(dd, 5 * K64 + 100, pattern(10, 2));
    expect(await fileSize(base())).toBe(2 * K64);
    const img = await PloopImage.open(base(), { readOnly: true });
    expect(img.allocatedClusters).toBe(1);
    await img.close();
    expect(byteDiff(await readDisk(dd), model([5 * K64 + 100, pattern(10, 2)]))).toBe('');
  });

  it('allocates nothing for zero writes to unmapped clusters', async () => {
    const chain = await Chain.open(dd);
    await chain.write(Buffer.alloc(K64), 2 * K64);
    await chain.write(Buffer.alloc(100), 7 * K64 + 5);
    await chain.write(Buffer.alloc(3 * K64), 9 * K64 + 17);
    await chain.close();
    expect(await fileSize(base())).toBe(K64);
    expect(await readEntry(base(), 2)).toBe(0);
  });

  it('writes zeros into an allocated cluster', async () => {
    await writeDisk(dd, 0, pattern(K64, 3));
    await writeDisk(dd, 10, Buffer.alloc(20));
    const exp = pattern(K64, 3);
    exp.fill(0, 10, 30);
    expect(byteDiff(await readDisk(dd), model([0, exp]))).toBe('');
  });

  it('discard releases whole clusters and keeps partial edges', async () => {
    const data = pattern(4 * K64, 4);
    await writeDisk(dd, 0, data);
    const chain = await Chain.open(dd);
    await chain.discard(K64 / 2, 2 * K64);
    await chain.close();
    // Only cluster 1 lies wholly inside the range.
    expect(await readEntry(base(), 1)).toBe(0);
    expect(await readEntry(base(), 0)).not.toBe(0);
    expect(await readEntry(base(), 2)).not.toBe(0);
    const exp = Buffer.from(data);
    exp.fill(0, K64, 2 * K64);
    expect(byteDiff(await readDisk(dd), model([0, exp]))).toBe('');
    // Released storage is given back (hole punched).
    const st = await fsp.stat(base());
    expect(st.blocks * 512).toBeLessThanOrEqual(4 * K64);
  });

  it('writeZeroes zeroes exact bytes and unmaps whole clusters', async () => {
    const data = pattern(4 * K64, 5);
    await writeDisk(dd, 0, data);
    const chain = await Chain.open(dd);
    await chain.writeZeroes(100, 2 * K64);
    await chain.close();
    const exp = Buffer.from(data);
    exp.fill(0, 100, 100 + 2 * K64);
    expect(byteDiff(await readDisk(dd), model([0, exp]))).toBe('');
    expect(await readEntry(base(), 1)).toBe(0);
  });

  it('writeZeroes with noUnmap keeps clusters allocated', async () => {
    await writeDisk(dd, 0, pattern(2 * K64, 6));
    const chain = await Chain.open(dd);
    await chain.writeZeroes(0, 3 * K64, { noUnmap: true });
    await chain.close();
    for (const vc of [0, 1, 2]) expect(await readEntry(base(), vc)).not.toBe(0);
    expect(isZero(await readDisk(dd))).toBe(true);
  });

  it('writeZeroes inside one cluster', async () => {
    await writeDisk(dd, 0, pattern(K64, 7));
    const chain = await Chain.open(dd);
    await chain.writeZeroes(10, 10);
    await chain.close();
    const exp = pattern(K64, 7);
    exp.fill(0, 10, 20);
    expect(byteDiff(await readDisk(dd), model([0, exp]))).toBe('');
  });

  it('serializes concurrent writes to one new cluster', async () => {
    const chain = await Chain.open(dd);
    const parts = Array.from({ length: 8 }, (_, i) => pattern(1000, 100 + i));
    await Promise.all(parts.map((p, i) => chain.write(p, 3 * K64 + i * 4096)));
    await chain.close();
    expect(await fileSize(base())).toBe(2 * K64);
    expect(
      byteDiff(
        await readDisk(dd),
        model(...parts.map((p, i): [number, Buffer] => [3 * K64 + i * 4096, p])),
      ),
    ).toBe('');
  });

  it('rejects out-of-range and read-only access with InvalidArgumentError', async () => {
    const ro = await Chain.open(dd, { readOnly: true });
    await expect(ro.write(Buffer.alloc(1), 0)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(ro.discard(0, K64)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(ro.read(Buffer.alloc(2), SIZE - 1)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(ro.read(Buffer.alloc(1), -1)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(ro.read(Buffer.alloc(1), 0.5)).rejects.toBeInstanceOf(InvalidArgumentError);
    await ro.close();
  });

  it('opens an image file directly and a directory holding a descriptor', async () => {
    await writeDisk(base(), 0, pattern(10, 8));
    expect((await readDisk(path.join(dir, 'disk'))).subarray(0, 10)).toEqual(pattern(10, 8));
    expect(await resolveTarget(path.join(dir, 'disk'))).toEqual({ kind: 'descriptor', path: dd });
    expect(await resolveTarget(base())).toEqual({ kind: 'image', path: base() });
  });
});

describe('two deltas', () => {
  const baseData = pattern(4 * K64, 10);

  beforeEach(async () => {
    await writeDisk(dd, 0, baseData);
    await snapshot(dd);
  });

  it('reads fall through to the lower delta', async () => {
    expect(byteDiff(await readDisk(dd), model([0, baseData]))).toBe('');
    const top = await topFile();
    expect(await fileSize(top)).toBe(K64);
    const chain = await Chain.open(dd, { readOnly: true });
    expect(chain.deltas).toHaveLength(2);
    expect(chain.locate(1)!.delta.path).toBe(base());
    expect(chain.locate(9)).toBeNull();
    await chain.close();
  });

  it('copies the whole cluster from below on a partial write (COW)', async () => {
    const baseBefore = await fileHash(base());
    const data = pattern(100, 11);
    await writeDisk(dd, K64 + 1000, data);
    const top = await topFile();
    expect(await fileSize(top)).toBe(2 * K64);
    expect(await readEntry(top, 1)).toBe(1);
    const exp = Buffer.from(baseData);
    data.copy(exp, K64 + 1000);
    expect(byteDiff(await readDisk(dd), model([0, exp]))).toBe('');
    // The cluster in the top is complete on its own.
    const topOnly = await Chain.open(top, { readOnly: true });
    const c = Buffer.alloc(K64);
    await topOnly.read(c, K64);
    await topOnly.close();
    expect(byteDiff(c, exp.subarray(K64, 2 * K64))).toBe('');
    expect(await fileHash(base())).toBe(baseBefore);
  });

  it('a zero write over lower data allocates (COW) and reads zeros there', async () => {
    await writeDisk(dd, 2 * K64 + 10, Buffer.alloc(10));
    const exp = Buffer.from(baseData);
    exp.fill(0, 2 * K64 + 10, 2 * K64 + 20);
    expect(byteDiff(await readDisk(dd), model([0, exp]))).toBe('');
    expect(await readEntry(await topFile(), 2)).not.toBe(0);
  });

  it('a zero write to a cluster nobody maps allocates nothing', async () => {
    await writeDisk(dd, 8 * K64, Buffer.alloc(K64 + 7));
    expect(await fileSize(await topFile())).toBe(K64);
  });

  it('discard over lower data maps zeros in the top, never a zero entry', async () => {
    const baseBefore = await fileHash(base());
    const chain = await Chain.open(dd);
    await chain.discard(K64, 2 * K64);
    await chain.close();
    const top = await topFile();
    expect(await readEntry(top, 1)).not.toBe(0);
    expect(await readEntry(top, 2)).not.toBe(0);
    const exp = Buffer.from(baseData);
    exp.fill(0, K64, 3 * K64);
    expect(byteDiff(await readDisk(dd), model([0, exp]))).toBe('');
    expect(await fileHash(base())).toBe(baseBefore);
  });

  it('discard of a cluster mapped in the top and below keeps the mapping', async () => {
    await writeDisk(dd, 0, pattern(K64, 12));
    const top = await topFile();
    const entry = await readEntry(top, 0);
    expect(entry).not.toBe(0);
    const chain = await Chain.open(dd);
    await chain.discard(0, K64);
    await chain.close();
    expect(await readEntry(top, 0)).toBe(entry);
    expect(isZero((await readDisk(dd)).subarray(0, K64))).toBe(true);
  });

  it('discard of a cluster only the top maps releases it', async () => {
    await writeDisk(dd, 9 * K64, pattern(K64, 13));
    const top = await topFile();
    expect(await readEntry(top, 9)).not.toBe(0);
    const chain = await Chain.open(dd);
    await chain.discard(9 * K64, K64);
    await chain.close();
    expect(await readEntry(top, 9)).toBe(0);
    expect(byteDiff(await readDisk(dd), model([0, baseData]))).toBe('');
  });

  it('discard over nothing allocates nothing', async () => {
    const chain = await Chain.open(dd);
    await chain.discard(8 * K64, 8 * K64);
    await chain.close();
    expect(await fileSize(await topFile())).toBe(K64);
  });

  it('opens lower deltas read-only and marks only the top in use', async () => {
    const chain = await Chain.open(dd);
    expect((await readHeader(await topFile())).inUse).toBe(IN_USE);
    expect((await readHeader(base())).inUse).toBe(0);
    expect((chain.deltas[0] as PloopImage).readOnly).toBe(true);
    await chain.close();
    expect((await readHeader(await topFile())).inUse).toBe(0);
  });

  it('reads past a smaller lower delta as zeros after a grow', async () => {
    await growDisk(dd, 2 * SIZE);
    const chain = await Chain.open(dd);
    expect(chain.virtualSize).toBe(2 * SIZE);
    const data = pattern(K64, 14);
    await chain.write(data, SIZE + 100);
    await chain.flush();
    const all = Buffer.alloc(2 * SIZE);
    await chain.read(all, 0);
    await chain.close();
    const exp = Buffer.alloc(2 * SIZE);
    baseData.copy(exp, 0);
    data.copy(exp, SIZE + 100);
    expect(byteDiff(all, exp)).toBe('');
  });

  it('repairs a top left in use when opening read-write, not when read-only', async () => {
    const top = await topFile();
    await patchHeader(top, { inUse: IN_USE });
    const ro = await Chain.open(dd, { readOnly: true });
    await ro.close();
    expect((await readHeader(top)).inUse).toBe(IN_USE);
    const rw = await Chain.open(dd);
    await rw.close();
    expect((await readHeader(top)).inUse).toBe(0);
    await patchHeader(top, { inUse: IN_USE });
    await expect(Chain.open(dd, { repair: false })).rejects.toThrow(/not closed cleanly/);
  });

  it('refuses chains that mix cluster sizes', async () => {
    const top = await topFile();
    await patchHeader(top, { clusterSectors: 256, batEntries: 8, sizeSectors: 2048, dataOff: 256 });
    await expect(Chain.open(dd, { readOnly: true })).rejects.toThrow(/clusters/);
  });

  it('refuses chains that mix versions', async () => {
    await patchHeader(await topFile(), { version: 1 });
    await expect(Chain.open(dd, { readOnly: true })).rejects.toThrow(/mixes version/);
  });
});

describe('raw base', () => {
  it('reads the raw file and copies on write into the ploop top', async () => {
    const rdir = path.join(dir, 'raw');
    const rdd = (await createDisk(rdir, { size: SIZE, clusterSize: K64, format: 'raw' }))
      .descriptorPath;
    const data = pattern(2 * K64, 20);
    await writeDisk(rdd, K64, data);
    const chain0 = await Chain.open(rdd, { readOnly: true });
    expect(chain0.deltas[0]).toBeInstanceOf(RawImage);
    await chain0.close();
    const rawFile = path.join(rdir, 'root.hds');
    expect(byteDiff((await fsp.readFile(rawFile)).subarray(K64, 3 * K64), data)).toBe('');
    await snapshot(rdd);
    const raw = await fileHash(rawFile);
    await writeDisk(rdd, K64 + 5, pattern(5, 21));
    expect(await fileHash(rawFile)).toBe(raw);
    const exp = model([K64, data], [K64 + 5, pattern(5, 21)]);
    expect(byteDiff(await readDisk(rdd), exp)).toBe('');
    const chain = await Chain.open(rdd);
    expect(chain.deltas.map((d) => d.constructor.name)).toEqual(['RawImage', 'PloopImage']);
    await chain.discard(K64, K64);
    await chain.close();
    exp.fill(0, K64, 2 * K64);
    expect(byteDiff(await readDisk(rdd), exp)).toBe('');
    expect(await fileHash(rawFile)).toBe(raw);
  });
});
