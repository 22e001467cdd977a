import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CorruptImageError,
  IN_USE,
  NotFoundError,
  PloopImage,
  TOP_GUID,
  createDisk,
  info,
  snapshot,
} from '../../src/ploop/index.js';
import {
  K64,
  makeTempDir,
  patchHeader,
  pattern,
  removeDir,
  writeDisk,
  writeEntry,
} from './helpers.js';

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir();
});
afterEach(() => removeDir(dir));

describe('info', () => {
  it('describes a single image', async () => {
    const file = path.join(dir, 'a.hds');
    await PloopImage.create(file, { size: 16 * K64, clusterSize: K64, version: 1 });
    await writeDisk(file, K64, pattern(2 * K64, 1));
    const i = await info(file);
    expect(i.kind).toBe('image');
    expect(i.virtualSize).toBe(16 * K64);
    expect(i.clusterSize).toBe(K64);
    expect(i.snapshots).toEqual([]);
    expect(i.deltas).toHaveLength(1);
    expect(i.deltas[0]).toMatchObject({
      path: file,
      format: 'ploop',
      version: 1,
      allocatedClusters: 2,
      fileSize: 3 * K64,
      dirty: false,
      dataOffset: K64,
    });
  });

  it('describes a disk: deltas base first, snapshots, the dirty flag', async () => {
    const disk = path.join(dir, 'disk');
    await createDisk(disk, { size: 16 * K64, clusterSize: K64 });
    await writeDisk(disk, 0, pattern(K64, 1));
    const g = await snapshot(path.join(disk, 'DiskDescriptor.xml'));
    const before = await info(disk);
    const top = before.deltas[1]!.path;
    await patchHeader(top, { inUse: IN_USE });
    const i = await info(disk);
    expect(i.kind).toBe('descriptor');
    expect(i.deltas.map((d) => path.basename(d.path))).toEqual(['root.hds', path.basename(top)]);
    expect(i.deltas.map((d) => d.allocatedClusters)).toEqual([1, 0]);
    expect(i.deltas.map((d) => d.dirty)).toEqual([false, true]);
    expect(i.snapshots).toEqual([
      {
        guid: g,
        parent: '{00000000-0000-0000-0000-000000000000}',
        current: false,
        file: path.join(disk, 'root.hds'),
      },
      { guid: TOP_GUID, parent: g, current: true, file: top },
    ]);
  });

  it('describes a raw base', async () => {
    const disk = path.join(dir, 'raw');
    await createDisk(disk, { size: 16 * K64, clusterSize: K64, format: 'raw' });
    const i = await info(disk);
    expect(i.deltas[0]).toMatchObject({ format: 'raw', version: null, virtualSize: 16 * K64 });
  });

  it('reports where data starts for a v1 image with data_off 0', async () => {
    const file = path.join(dir, 'z.hds');
    await PloopImage.create(file, { size: 16 * K64, clusterSize: K64, version: 1 });
    await patchHeader(file, { dataOff: 0 });
    const i = await info(file);
    // Right after the BAT, rounded up to a sector.
    expect(i.deltas[0]!.dataOffset).toBe(512);
  });

  it('fails with typed errors', async () => {
    await expect(info(path.join(dir, 'none.hds'))).rejects.toBeInstanceOf(NotFoundError);
    const file = path.join(dir, 'bad.hds');
    await PloopImage.create(file, { size: 16 * K64, clusterSize: K64 });
    await writeEntry(file, 0, 77);
    await expect(info(file)).rejects.toBeInstanceOf(CorruptImageError);
  });
});
