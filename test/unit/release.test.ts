/**
 * Clusters released by a discard are punched once their unmapping is durable, one hole per run
 * of adjacent clusters (each punch spawns fallocate), never over a cluster still referenced.
 */
import * as path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { Chain, PloopImage } from '../../src/ploop/index.js';
import { RecordingFileSystem } from '../support/recording-fs.js';
import { K64, makeTempDir, pattern, readDisk, removeDir } from './helpers.js';

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir();
});
afterEach(() => removeDir(dir));

it('punches one hole per run of adjacent released clusters', async () => {
  const file = path.join(dir, 'a.hds');
  await PloopImage.create(file, { size: 32 * K64, clusterSize: K64 });
  const data = pattern(32 * K64, 3);
  const c0 = await Chain.open(file);
  await c0.write(data, 0);
  await c0.close();

  const rec = new RecordingFileSystem();
  await rec.start(dir);
  const chain = await Chain.open(file, { fs: rec });
  // Two runs (clusters 2-9 and 20-23) and a single cluster (30).
  await chain.discard(2 * K64, 8 * K64);
  await chain.discard(20 * K64, 4 * K64);
  await chain.discard(30 * K64, K64);
  await chain.flush();
  await chain.close();

  const img = await PloopImage.open(file, { readOnly: true });
  const dataOff = img.dataOffBytes;
  await img.close();
  const punches = rec.log.filter((e) => e.kind === 'punchHole');
  expect(punches.map((p) => [(p.pos - dataOff) / K64, p.length / K64])).toEqual([
    [2, 8],
    [20, 4],
    [30, 1],
  ]);
  const expected = Buffer.from(data);
  for (const [first, n] of [
    [2, 8],
    [20, 4],
    [30, 1],
  ] as const)
    expected.fill(0, first * K64, (first + n) * K64);
  expect((await readDisk(file)).equals(expected)).toBe(true);
});
