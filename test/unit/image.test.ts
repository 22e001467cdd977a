import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BAT_ENTRY_NONE,
  CIF_EMPTY,
  CIF_FMT_CONVERT,
  CorruptImageError,
  HEADER_SIZE,
  IN_USE,
  InvalidArgumentError,
  IoError,
  NotFoundError,
  PloopImage,
  UnsupportedError,
  nodeFileSystem,
} from '../../src/ploop/index.js';
import {
  K64,
  M1,
  byteDiff,
  fileSize,
  makeTempDir,
  pattern,
  patchHeader,
  readBytes,
  readEntry,
  readHeader,
  removeDir,
  writeBytes,
  writeEntry,
} from './helpers.js';

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir();
});
afterEach(() => removeDir(dir));

const f = (name: string) => path.join(dir, name);

describe('create', () => {
  it('writes header and a zeroed BAT area, nothing else', async () => {
    const h = await PloopImage.create(f('a.hds'), { size: 10 * M1, clusterSize: K64 });
    expect(h!.batEntries).toBe(160);
    expect(h!.dataOff).toBe(128);
    expect(await fileSize(f('a.hds'))).toBe(K64);
    const onDisk = await readHeader(f('a.hds'));
    expect(onDisk).toEqual(h);
    expect(onDisk.flags).toBe(CIF_EMPTY);
    expect(onDisk.inUse).toBe(0);
    const bat = await readBytes(f('a.hds'), HEADER_SIZE, K64 - HEADER_SIZE);
    expect(bat.every((b) => b === 0)).toBe(true);
  });

  it('defaults to v2 with 1 MiB clusters', async () => {
    const h = await PloopImage.create(f('d.hds'), { size: 3 * M1 });
    expect(h!.version).toBe(2);
    expect(h!.clusterSectors).toBe(2048);
  });

  it('preallocated v1 maps identically in sectors', async () => {
    const h = await PloopImage.create(f('p1.hds'), {
      size: 4 * K64,
      clusterSize: K64,
      format: 'preallocated',
      version: 1,
    });
    expect(h!.dataOff).toBe(128);
    expect(await fileSize(f('p1.hds'))).toBe(5 * K64);
    for (let i = 0; i < 4; i++) expect(await readEntry(f('p1.hds'), i)).toBe(128 + 128 * i);
    const img = await PloopImage.open(f('p1.hds'), { readOnly: true });
    expect(img.map(3)).toBe(4 * K64);
    await img.close();
  });

  it('preallocated v2 maps identically in clusters', async () => {
    await PloopImage.create(f('p2.hds'), {
      size: 4 * K64,
      clusterSize: K64,
      format: 'preallocated',
      version: 2,
    });
    for (let i = 0; i < 4; i++) expect(await readEntry(f('p2.hds'), i)).toBe(1 + i);
  });

  it('raw is a plain file of the rounded virtual size', async () => {
    const h = await PloopImage.create(f('r.raw'), {
      size: K64 + 1,
      clusterSize: K64,
      format: 'raw',
    });
    expect(h).toBeNull();
    expect(await fileSize(f('r.raw'))).toBe(2 * K64);
  });

  it('never overwrites an existing file', async () => {
    await fsp.writeFile(f('x'), 'data');
    await expect(PloopImage.create(f('x'), { size: M1 })).rejects.toBeInstanceOf(IoError);
    expect(await fsp.readFile(f('x'), 'utf8')).toBe('data');
  });

  it('validates arguments before touching the file system', async () => {
    await expect(PloopImage.create(f('y'), { size: M1, clusterSize: 4096 })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(PloopImage.create(f('y'), { size: 0 })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(fsp.access(f('y'))).rejects.toThrow();
  });
});

describe('BAT units', () => {
  it.each([1, 2] as const)('v%d stores host offsets in the unit of its version', async (v) => {
    const file = f(`u${v}.hds`);
    await PloopImage.create(file, { size: 16 * K64, clusterSize: K64, version: v });
    const img = await PloopImage.open(file);
    const host0 = await img.allocate(3, pattern(K64, 3));
    const host1 = await img.allocate(5, pattern(K64, 5));
    await img.close();
    expect(host0).toBe(K64);
    expect(host1).toBe(2 * K64);
    // v1: sectors (first data cluster at sector 128), v2: clusters.
    expect(await readEntry(file, 3)).toBe(v === 1 ? 128 : 1);
    expect(await readEntry(file, 5)).toBe(v === 1 ? 256 : 2);
    expect(await readEntry(file, 4)).toBe(0);
    const ro = await PloopImage.open(file, { readOnly: true });
    expect(ro.map(3)).toBe(K64);
    expect(ro.map(5)).toBe(2 * K64);
    expect(ro.map(4)).toBe(-1);
    expect(ro.map(10_000)).toBe(-1);
    expect(byteDiff(await readBytes(file, K64, K64), pattern(K64, 3))).toBe('');
    await ro.close();
  });

  it('matches the ploop example: writes at 0, 5M, 3M in a v1 image', async () => {
    const file = f('q.hds');
    await PloopImage.create(file, { size: 64 * M1, clusterSize: M1, version: 1 });
    const img = await PloopImage.open(file);
    for (const vc of [0, 5, 3]) await img.allocate(vc, Buffer.alloc(M1, vc + 1));
    await img.close();
    expect(await readEntry(file, 0)).toBe(0x800);
    expect(await readEntry(file, 3)).toBe(0x1800);
    expect(await readEntry(file, 5)).toBe(0x1000);
  });
});

describe('open / close protocol', () => {
  const make = async (name = 'o.hds') => {
    await PloopImage.create(f(name), { size: 8 * K64, clusterSize: K64 });
    return f(name);
  };

  it('marks the image in use while open read-write and clean after close', async () => {
    const file = await make();
    const img = await PloopImage.open(file);
    expect((await readHeader(file)).inUse).toBe(IN_USE);
    await img.allocate(1, pattern(K64, 1));
    await img.close();
    const h = await readHeader(file);
    expect(h.inUse).toBe(0);
    expect(h.flags & CIF_EMPTY).toBe(0);
    expect(await fileSize(file)).toBe(2 * K64);
  });

  it('keeps CIF_Empty on an image without data', async () => {
    const file = await make();
    await (await PloopImage.open(file)).close();
    expect((await readHeader(file)).flags).toBe(CIF_EMPTY);
  });

  it('does not write anything on a read-only open', async () => {
    const file = await make();
    const before = await fsp.readFile(file);
    const img = await PloopImage.open(file, { readOnly: true });
    expect(() => img.reserveCluster()).toThrow(InvalidArgumentError);
    await img.close();
    expect(await fsp.readFile(file)).toEqual(before);
  });

  it('refuses a read-write open of an image left in use, allows read-only', async () => {
    const file = await make();
    await patchHeader(file, { inUse: IN_USE });
    await expect(PloopImage.open(file)).rejects.toBeInstanceOf(CorruptImageError);
    const ro = await PloopImage.open(file, { readOnly: true });
    expect(ro.header.inUse).toBe(IN_USE);
    await ro.close();
  });

  it('drops a format extension reference on a read-write open', async () => {
    const file = await make();
    await patchHeader(file, { extOff: 128 });
    const img = await PloopImage.open(file);
    expect((await readHeader(file)).extOff).toBe(0);
    await img.close();
    expect((await readHeader(file)).extOff).toBe(0);
  });

  it('refuses a pending format conversion', async () => {
    const file = await make();
    await patchHeader(file, { flags: CIF_FMT_CONVERT });
    await expect(PloopImage.open(file, { readOnly: true })).rejects.toBeInstanceOf(
      UnsupportedError,
    );
  });

  it('reports missing files and foreign files with typed errors', async () => {
    await expect(PloopImage.open(f('none'))).rejects.toBeInstanceOf(NotFoundError);
    await fsp.writeFile(f('text'), 'not an image at all, just text'.repeat(10));
    await expect(PloopImage.open(f('text'))).rejects.toBeInstanceOf(CorruptImageError);
    await fsp.writeFile(f('short'), 'Without');
    await expect(PloopImage.open(f('short'))).rejects.toBeInstanceOf(CorruptImageError);
  });

  it('flushes data before the BAT entries that point at it', async () => {
    const file = await make();
    const img = await PloopImage.open(file);
    await img.allocate(2, pattern(K64, 2));
    // Not yet flushed: the entry is still zero on disk.
    expect(await readEntry(file, 2)).toBe(0);
    await img.flush();
    expect(await readEntry(file, 2)).toBe(1);
    await img.abandon();
    // Abandoned: still marked in use.
    expect((await readHeader(file)).inUse).toBe(IN_USE);
  });

  it('truncates released tail clusters on close', async () => {
    const file = await make();
    const img = await PloopImage.open(file);
    await img.allocate(0, pattern(K64, 0));
    await img.allocate(1, pattern(K64, 1));
    await img.flush();
    img.setEntry(1, 0);
    await img.close();
    expect(await fileSize(file)).toBe(2 * K64);
    expect(await readEntry(file, 1)).toBe(0);
  });
});

describe('entry validation on open', () => {
  const withData = async (version: 1 | 2) => {
    const file = f(`e${version}.hds`);
    await PloopImage.create(file, { size: 8 * K64, clusterSize: K64, version });
    const img = await PloopImage.open(file);
    await img.allocate(0, pattern(K64, 10));
    await img.allocate(1, pattern(K64, 11));
    await img.close();
    return file;
  };

  it.each<[string, 1 | 2, number, string]>([
    ['beyond EOF', 2, 50, 'beyond eof'],
    ['in the BAT area', 1, 1, 'in bat area'],
    ['misaligned (v1)', 1, 129, 'misaligned'],
    ['duplicate', 2, 1, 'duplicate'],
    ['reserved', 2, BAT_ENTRY_NONE, 'reserved'],
  ])('rejects an entry %s', async (_n, version, value, kind) => {
    const file = await withData(version);
    await writeEntry(file, 5, value);
    await expect(PloopImage.open(file, { readOnly: true })).rejects.toThrow(kind);
    await expect(PloopImage.open(file)).rejects.toBeInstanceOf(CorruptImageError);
    // The failed open left nothing behind.
    expect((await readHeader(file)).inUse).toBe(0);
    const img = await PloopImage.openForRepair(file, nodeFileSystem, true);
    expect(img.entryProblems(await fileSize(file)).map((p) => p.index)).toEqual([5]);
    await img.abandon();
  });

  it('counts allocated clusters and the used end', async () => {
    const file = await withData(2);
    const img = await PloopImage.open(file, { readOnly: true });
    expect(img.allocatedClusters).toBe(2);
    expect(img.usedEnd()).toBe(3 * K64);
    expect(img.fileEnd).toBe(3 * K64);
    await img.close();
  });

  it('never writes the reserved value as a v1 entry', async () => {
    const file = f('r1.hds');
    await PloopImage.create(file, { size: 8 * K64, clusterSize: K64, version: 1 });
    // Data would start at sector 0xffffffff: the first cluster's entry would be the marker.
    await patchHeader(file, { dataOff: 0xffffffff });
    const img = await PloopImage.open(file);
    await expect(img.allocate(0, pattern(K64, 1))).rejects.toBeInstanceOf(UnsupportedError);
    await img.close();
    expect(await readEntry(file, 0)).toBe(0);
  });

  it('never allocates over a cluster an entry already uses', async () => {
    const file = await withData(2);
    // Leave a hole: map cluster 3 of the file while the file ends after cluster 3.
    await writeEntry(file, 4, 3);
    await writeBytes(file, 4 * K64 - 1, Buffer.alloc(1));
    const img = await PloopImage.open(file);
    expect(img.reserveCluster()).toBe(4 * K64);
    await img.close();
  });
});
