import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  Chain,
  PloopImage,
  checkImage,
  compactImage,
  createDisk,
  listSnapshots,
  snapshot,
} from '../../src/ploop/index.js';
import {
  K64,
  byteDiff,
  fileSize,
  makeTempDir,
  pattern,
  readDisk,
  readEntry,
  removeDir,
  writeBytes,
} from './helpers.js';

const CLUSTERS = 32;
const SIZE = CLUSTERS * K64;

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir();
});
afterEach(() => removeDir(dir));

async function compact(file: string) {
  const chain = await Chain.open(file);
  try {
    return await compactImage(chain.top as PloopImage);
  } finally {
    await chain.close();
  }
}

describe.each([1, 2] as const)('version %d', (version) => {
  it('shrinks the file after discard and keeps the content', async () => {
    const file = path.join(dir, 'c.hds');
    await PloopImage.create(file, { size: SIZE, clusterSize: K64, version });
    const chain = await Chain.open(file);
    // Twelve clusters written in a scrambled order, then every other one of the first eight
    // discarded: holes in the middle of the file, data at its end.
    const order = [5, 0, 11, 3, 8, 1, 10, 2, 9, 4, 7, 6];
    for (const vc of order) await chain.write(pattern(K64, 80 + vc), vc * K64);
    await chain.flush();
    for (const vc of [5, 0, 11, 3]) await chain.discard(vc * K64, K64);
    await chain.close();
    const expected = Buffer.alloc(SIZE);
    for (const vc of order)
      if (![5, 0, 11, 3].includes(vc)) pattern(K64, 80 + vc).copy(expected, vc * K64);
    expect(byteDiff(await readDisk(file), expected)).toBe('');
    const before = await fileSize(file);
    expect(before).toBe(13 * K64);
    const r1 = await checkImage(file);
    expect(r1.unreferencedClusters).toBe(4);

    const r = await compact(file);
    expect(r.before).toBe(before);
    expect(r.after).toBe(9 * K64);
    expect(r.moved).toBeGreaterThan(0);
    expect(await fileSize(file)).toBe(9 * K64);
    expect(byteDiff(await readDisk(file), expected)).toBe('');
    const r2 = await checkImage(file);
    expect(r2.clean).toBe(true);
    expect(r2.findings).toEqual([]);
    expect(r2.unreferencedClusters).toBe(0);
    expect(r2.allocatedClusters).toBe(8);
  });

  it('reclaims leaked clusters inside the file', async () => {
    const file = path.join(dir, 'l.hds');
    await PloopImage.create(file, { size: SIZE, clusterSize: K64, version });
    const img = await PloopImage.open(file);
    for (const vc of [0, 1, 2, 3]) await img.allocate(vc, pattern(K64, vc));
    await img.close();
    // Leak: unmap vc 1 behind the library's back, leaving its cluster in the middle.
    await writeBytes(file, 64 + 4, Buffer.alloc(4));
    const expected = Buffer.alloc(SIZE);
    for (const vc of [0, 2, 3]) pattern(K64, vc).copy(expected, vc * K64);
    const r = await compact(file);
    expect(r.moved).toBe(1);
    expect(r.after).toBe(4 * K64);
    expect(byteDiff(await readDisk(file), expected)).toBe('');
    expect(await readEntry(file, 3)).toBe(version === 1 ? 2 * 128 : 2);
    expect((await checkImage(file)).clean).toBe(true);
  });

  it('does nothing to a dense image', async () => {
    const file = path.join(dir, 'd.hds');
    await PloopImage.create(file, { size: SIZE, clusterSize: K64, version });
    const chain = await Chain.open(file);
    await chain.write(pattern(3 * K64, 1), 0);
    await chain.close();
    const r = await compact(file);
    expect(r).toEqual({ before: 4 * K64, after: 4 * K64, moved: 0 });
  });

  it('compacts an empty image to its BAT', async () => {
    const file = path.join(dir, 'e.hds');
    await PloopImage.create(file, { size: SIZE, clusterSize: K64, version });
    const r = await compact(file);
    expect(r.after).toBe(K64);
  });
});

it('compacts only the top of a chain, which maps zeros over lower data', async () => {
  const { descriptorPath: dd } = await createDisk(path.join(dir, 'disk'), {
    size: SIZE,
    clusterSize: K64,
  });
  const c0 = await Chain.open(dd);
  await c0.write(pattern(4 * K64, 1), 0);
  await c0.close();
  await snapshot(dd);
  const c1 = await Chain.open(dd);
  await c1.write(pattern(4 * K64, 2), 8 * K64);
  await c1.flush();
  await c1.discard(8 * K64, 2 * K64);
  await c1.discard(0, K64);
  await c1.close();
  const expected = Buffer.alloc(SIZE);
  pattern(4 * K64, 1).copy(expected, 0);
  pattern(4 * K64, 2).copy(expected, 8 * K64);
  expected.fill(0, 8 * K64, 10 * K64);
  expected.fill(0, 0, K64);
  expect(byteDiff(await readDisk(dd), expected)).toBe('');
  const top = (await listSnapshots(dd)).find((s) => s.current)!.file;
  const chain = await Chain.open(dd);
  const r = await compactImage(chain.top as PloopImage);
  await chain.close();
  // Two data clusters and the zero cluster over vc 0 remain.
  expect(r.after).toBe(4 * K64);
  expect(await fileSize(top)).toBe(4 * K64);
  expect(byteDiff(await readDisk(dd), expected)).toBe('');
});
