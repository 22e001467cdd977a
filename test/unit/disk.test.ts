import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BASE_IMAGE_NAME,
  BusyError,
  CIF_EMPTY,
  Chain,
  DESCRIPTOR_NAME,
  Descriptor,
  IN_USE,
  InvalidArgumentError,
  NONE_GUID,
  NotFoundError,
  TOP_GUID,
  acquireLock,
  checkImage,
  createDisk,
  deleteSnapshot,
  descriptorPathFor,
  growDisk,
  isGuid,
  listSnapshots,
  lockPath,
  mergeTop,
  nodeFileSystem,
  readDescriptor,
  snapshot,
  switchSnapshot,
  writeDescriptor,
} from '../../src/ploop/index.js';
import {
  K64,
  byteDiff,
  makeTempDir,
  patchHeader,
  pattern,
  readDisk,
  readHeader,
  removeDir,
} from './helpers.js';

const SIZE = 16 * K64;

let dir: string;
let disk: string;
let dd: string;
beforeEach(async () => {
  dir = await makeTempDir();
  disk = path.join(dir, 'disk');
  dd = (await createDisk(disk, { size: SIZE, clusterSize: K64 })).descriptorPath;
});
afterEach(() => removeDir(dir));

const desc = (): Promise<Descriptor> => readDescriptor(nodeFileSystem, dd);
const fileOf = (d: Descriptor, guid: string) => d.images.find((i) => i.guid === guid)?.file;
const parentOf = (d: Descriptor, guid: string) => d.snapshots.find((s) => s.guid === guid)?.parent;

async function write(offset: number, data: Buffer): Promise<void> {
  const chain = await Chain.open(dd);
  try {
    await chain.write(data, offset);
  } finally {
    await chain.close();
  }
}

async function exists(file: string): Promise<boolean> {
  return fsp.access(path.join(disk, file)).then(
    () => true,
    () => false,
  );
}

async function files(): Promise<string[]> {
  return (await fsp.readdir(disk)).filter((n) => !n.endsWith('.lck')).sort();
}

describe('createDisk', () => {
  it('creates a descriptor and root.hds with the top GUID', async () => {
    const d = await desc();
    expect(d.topGuid).toBe(TOP_GUID);
    expect(d.images).toEqual([{ guid: TOP_GUID, type: 'Compressed', file: BASE_IMAGE_NAME }]);
    expect(d.snapshots).toEqual([{ guid: TOP_GUID, parent: NONE_GUID, temporary: false }]);
    expect(d.sizeSectors).toBe(SIZE / 512);
    expect(d.clusterSectors).toBe(128);
    expect(await files()).toEqual([DESCRIPTOR_NAME, BASE_IMAGE_NAME]);
    expect(descriptorPathFor(disk)).toBe(dd);
    expect(descriptorPathFor(dd)).toBe(dd);
  });

  it('refuses to overwrite a disk', async () => {
    await expect(createDisk(disk, { size: SIZE })).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('creates raw and preallocated disks', async () => {
    const raw = await createDisk(path.join(dir, 'raw'), { size: SIZE, format: 'raw' });
    expect((await readDescriptor(nodeFileSystem, raw.descriptorPath)).images[0]!.type).toBe(
      'Plain',
    );
    const pre = await createDisk(path.join(dir, 'pre', DESCRIPTOR_NAME), {
      size: SIZE,
      clusterSize: K64,
      format: 'preallocated',
    });
    expect((await readDescriptor(nodeFileSystem, pre.descriptorPath)).preallocated).toBe(true);
  });
});

describe('snapshot', () => {
  it('renames the old top, makes a new empty top with the top GUID', async () => {
    await write(0, pattern(K64, 1));
    const g = await snapshot(dd);
    expect(isGuid(g)).toBe(true);
    expect(g).not.toBe(TOP_GUID);
    const d = await desc();
    expect(d.topGuid).toBe(TOP_GUID);
    // The snapshot GUID names the frozen old top (root.hds); the top moved to a new file.
    expect(fileOf(d, g)).toBe(BASE_IMAGE_NAME);
    const topName = fileOf(d, TOP_GUID)!;
    expect(topName).toMatch(/^root\.hds\.\{[0-9a-f-]{36}\}$/);
    expect(parentOf(d, TOP_GUID)).toBe(g);
    expect(parentOf(d, g)).toBe(NONE_GUID);
    const top = await readHeader(path.join(disk, topName));
    const base = await readHeader(path.join(disk, BASE_IMAGE_NAME));
    expect(top.flags).toBe(CIF_EMPTY);
    expect(top.inUse).toBe(0);
    expect([top.version, top.clusterSectors, top.sizeSectors]).toEqual([
      base.version,
      base.clusterSectors,
      base.sizeSectors,
    ]);
    const disk0 = await readDisk(dd);
    expect(byteDiff(disk0.subarray(0, K64), pattern(K64, 1))).toBe('');
  });

  it('chains parents through several snapshots', async () => {
    const g1 = await snapshot(dd);
    const g2 = await snapshot(dd);
    const g3 = await snapshot(dd);
    const d = await desc();
    expect(parentOf(d, TOP_GUID)).toBe(g3);
    expect(parentOf(d, g3)).toBe(g2);
    expect(parentOf(d, g2)).toBe(g1);
    expect(parentOf(d, g1)).toBe(NONE_GUID);
    const list = await listSnapshots(dd);
    expect(list.map((s) => s.current)).toEqual([false, false, false, true]);
    expect(list.every((s) => path.isAbsolute(s.file))).toBe(true);
    const chain = await Chain.open(dd, { readOnly: true });
    expect(chain.deltas.map((x) => path.basename(x.path))).toEqual(
      [g1, g2, g3, TOP_GUID].map((g) => fileOf(d, g)),
    );
    await chain.close();
  });

  it('keeps the version of the disk', async () => {
    const v1 = (
      await createDisk(path.join(dir, 'v1'), { size: SIZE, clusterSize: K64, version: 1 })
    ).descriptorPath;
    await snapshot(v1);
    const d = await readDescriptor(nodeFileSystem, v1);
    const top = path.join(dir, 'v1', fileOf(d, TOP_GUID)!);
    expect((await readHeader(top)).version).toBe(1);
  });

  it('repairs a top left in use before freezing it', async () => {
    await write(0, pattern(K64, 1));
    await patchHeader(path.join(disk, BASE_IMAGE_NAME), { inUse: IN_USE });
    await snapshot(dd);
    expect((await readHeader(path.join(disk, BASE_IMAGE_NAME))).inUse).toBe(0);
  });

  it('waits for the descriptor lock and fails with BusyError on timeout', async () => {
    const lock = await acquireLock(lockPath(dd));
    try {
      await expect(snapshot(dd, { lockTimeoutMs: 200 })).rejects.toBeInstanceOf(BusyError);
    } finally {
      await lock.release();
    }
    expect((await desc()).images).toHaveLength(1);
  });
});

describe('deleteSnapshot', () => {
  /** base(S1) ← S2 ← TOP, each level writing its own cluster. */
  async function threeLevels() {
    await write(0, pattern(K64, 1));
    const s1 = await snapshot(dd);
    await write(K64, pattern(K64, 2));
    const s2 = await snapshot(dd);
    await write(2 * K64, pattern(K64, 3));
    await write(0, pattern(100, 4));
    const expected = Buffer.alloc(SIZE);
    pattern(K64, 1).copy(expected, 0);
    pattern(K64, 2).copy(expected, K64);
    pattern(K64, 3).copy(expected, 2 * K64);
    pattern(100, 4).copy(expected, 0);
    return { s1, s2, expected, before: await desc() };
  }

  it('merges the only child into the snapshot: the child GUID survives on the parent file', async () => {
    const { s2, expected, before } = await threeLevels();
    const s2File = fileOf(before, s2)!;
    const topFile = fileOf(before, TOP_GUID)!;
    expect(await deleteSnapshot(dd, s2)).toEqual({ deferred: false });
    const d = await desc();
    expect(d.images.map((i) => i.guid)).not.toContain(s2);
    expect(fileOf(d, TOP_GUID)).toBe(s2File);
    expect(await exists(s2File)).toBe(true);
    expect(await exists(topFile)).toBe(false);
    expect(d.snapshots).toHaveLength(2);
    expect(d.snapshots.some((s) => s.temporary)).toBe(false);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
    for (const s of await listSnapshots(dd)) expect((await checkImage(s.file)).clean).toBe(true);
  });

  it('deletes the base by merging its child into it', async () => {
    const { s1, s2, expected, before } = await threeLevels();
    const s2File = fileOf(before, s2)!;
    await deleteSnapshot(dd, s1);
    const d = await desc();
    expect(fileOf(d, s2)).toBe(BASE_IMAGE_NAME);
    expect(parentOf(d, s2)).toBe(NONE_GUID);
    expect(await exists(s2File)).toBe(false);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
  });

  it('refuses the top, unknown and malformed GUIDs', async () => {
    await snapshot(dd);
    await expect(deleteSnapshot(dd, TOP_GUID)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      deleteSnapshot(dd, '{11111111-1111-1111-1111-111111111111}'),
    ).rejects.toBeInstanceOf(NotFoundError);
    await expect(deleteSnapshot(dd, 'nope')).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('accepts GUIDs in upper case', async () => {
    const g = await snapshot(dd);
    await deleteSnapshot(dd, g.toUpperCase());
    expect((await desc()).images).toHaveLength(1);
  });

  it('defers a snapshot with two children and merges it once one is gone', async () => {
    await write(0, pattern(K64, 1));
    const s1 = await snapshot(dd);
    await write(K64, pattern(K64, 2));
    const s2 = await snapshot(dd);
    await write(2 * K64, pattern(K64, 3));
    // Branch: a new top on s1; s1 now has two children (s2 and the new top).
    await switchSnapshot(dd, s1);
    await write(3 * K64, pattern(K64, 4));
    const d0 = await desc();
    expect(d0.snapshots.filter((s) => s.parent === s1)).toHaveLength(2);
    expect(await deleteSnapshot(dd, s1)).toEqual({ deferred: true });
    const d1 = await desc();
    expect(d1.snapshots.find((s) => s.guid === s1)!.temporary).toBe(true);
    expect(d1.images).toHaveLength(3);
    const expected = Buffer.alloc(SIZE);
    pattern(K64, 1).copy(expected, 0);
    pattern(K64, 4).copy(expected, 3 * K64);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
    // Dropping the other branch leaves s1 with one child: the next operation merges it.
    const s2File = fileOf(d1, s2)!;
    const topFile = fileOf(d1, TOP_GUID)!;
    await deleteSnapshot(dd, s2);
    expect(await exists(s2File)).toBe(false);
    const d2 = await desc();
    expect(d2.images.map((i) => i.guid)).toEqual([s1, TOP_GUID]);
    expect(d2.snapshots.find((s) => s.guid === s1)!.temporary).toBe(true);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
    const s3 = await snapshot(dd);
    const d3 = await desc();
    expect(d3.images.map((i) => i.guid).sort()).toEqual([s3, TOP_GUID].sort());
    expect(fileOf(d3, s3)).toBe(BASE_IMAGE_NAME);
    expect(parentOf(d3, s3)).toBe(NONE_GUID);
    expect(d3.snapshots.some((s) => s.temporary)).toBe(false);
    expect(await exists(topFile)).toBe(false);
    expect(await files()).toEqual([DESCRIPTOR_NAME, BASE_IMAGE_NAME, fileOf(d3, TOP_GUID)!].sort());
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
  });

  it('finishes an interrupted merge (Temporary with one child) on the next operation', async () => {
    await write(0, pattern(K64, 1));
    const s1 = await snapshot(dd);
    await write(K64, pattern(K64, 2));
    const d = await desc();
    d.snapshots.find((s) => s.guid === s1)!.temporary = true;
    await writeDescriptor(nodeFileSystem, dd, d);
    const s2 = await snapshot(dd);
    const after = await desc();
    expect(after.images.map((i) => i.guid).sort()).toEqual([s2, TOP_GUID].sort());
    expect(fileOf(after, s2)).toBe(BASE_IMAGE_NAME);
    const expected = Buffer.alloc(SIZE);
    pattern(K64, 1).copy(expected, 0);
    pattern(K64, 2).copy(expected, K64);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
  });
});

describe('mergeTop', () => {
  it('merges the top into its parent; the top GUID moves to the parent file', async () => {
    await write(0, pattern(2 * K64, 1));
    const g = await snapshot(dd);
    await write(K64, pattern(2 * K64, 2));
    const before = await desc();
    const topFile = fileOf(before, TOP_GUID)!;
    await mergeTop(dd);
    const d = await desc();
    expect(d.images).toEqual([{ guid: TOP_GUID, type: 'Compressed', file: BASE_IMAGE_NAME }]);
    expect(d.snapshots).toEqual([{ guid: TOP_GUID, parent: NONE_GUID, temporary: false }]);
    expect(d.images.some((i) => i.guid === g)).toBe(false);
    expect(await exists(topFile)).toBe(false);
    const expected = Buffer.alloc(SIZE);
    pattern(2 * K64, 1).copy(expected, 0);
    pattern(2 * K64, 2).copy(expected, K64);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
    expect((await checkImage(path.join(disk, BASE_IMAGE_NAME))).clean).toBe(true);
  });

  it('grows the parent when the top is larger', async () => {
    await write(0, pattern(K64, 1));
    await snapshot(dd);
    await growDisk(dd, 2 * SIZE);
    await write(SIZE + K64, pattern(K64, 2));
    await mergeTop(dd);
    expect((await readHeader(path.join(disk, BASE_IMAGE_NAME))).batEntries).toBe(32);
    const expected = Buffer.alloc(2 * SIZE);
    pattern(K64, 1).copy(expected, 0);
    pattern(K64, 2).copy(expected, SIZE + K64);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
  });

  it('keeps parent clusters past its size field, which the chain shows', async () => {
    await write(0, pattern(SIZE, 5));
    await snapshot(dd);
    await growDisk(dd, 2 * SIZE);
    // The parent's header claims 3.5 clusters; its BAT (16 entries) still maps all of them.
    await patchHeader(path.join(disk, BASE_IMAGE_NAME), { sizeSectors: 3 * 128 + 64 });
    const before = await readDisk(dd);
    expect(byteDiff(before.subarray(0, SIZE), pattern(SIZE, 5))).toBe('');
    await mergeTop(dd);
    expect(byteDiff(await readDisk(dd), before)).toBe('');
  });

  it('refuses a disk without snapshots', async () => {
    await expect(mergeTop(dd)).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('merges into a raw base', async () => {
    const raw = (
      await createDisk(path.join(dir, 'raw'), { size: SIZE, clusterSize: K64, format: 'raw' })
    ).descriptorPath;
    await snapshot(raw);
    const chain = await Chain.open(raw);
    await chain.write(pattern(K64, 9), 5 * K64);
    await chain.close();
    await mergeTop(raw);
    const d = await readDescriptor(nodeFileSystem, raw);
    expect(d.images).toEqual([{ guid: TOP_GUID, type: 'Plain', file: BASE_IMAGE_NAME }]);
    const content = await fsp.readFile(path.join(dir, 'raw', BASE_IMAGE_NAME));
    expect(byteDiff(content.subarray(5 * K64, 6 * K64), pattern(K64, 9))).toBe('');
  });
});

describe('switchSnapshot', () => {
  it('discards the current top and starts an empty one over the snapshot', async () => {
    await write(0, pattern(K64, 1));
    const s1 = await snapshot(dd);
    await write(K64, pattern(K64, 2));
    const before = await desc();
    const oldTop = fileOf(before, TOP_GUID)!;
    await switchSnapshot(dd, s1);
    const d = await desc();
    expect(parentOf(d, TOP_GUID)).toBe(s1);
    expect(fileOf(d, TOP_GUID)).not.toBe(oldTop);
    expect(await exists(oldTop)).toBe(false);
    const expected = Buffer.alloc(SIZE);
    pattern(K64, 1).copy(expected, 0);
    expect(byteDiff(await readDisk(dd), expected)).toBe('');
    const top = await readHeader(path.join(disk, fileOf(d, TOP_GUID)!));
    expect(top.flags).toBe(CIF_EMPTY);
  });

  it('switches to an older snapshot of a longer chain', async () => {
    await write(0, pattern(K64, 1));
    const s1 = await snapshot(dd);
    await write(0, pattern(K64, 2));
    const s2 = await snapshot(dd);
    await switchSnapshot(dd, s1);
    const d = await desc();
    // s2 stays, now a leaf that can be deleted.
    expect(d.images.map((i) => i.guid).sort()).toEqual([s1, s2, TOP_GUID].sort());
    const disk0 = await readDisk(dd);
    expect(byteDiff(disk0.subarray(0, K64), pattern(K64, 1))).toBe('');
    const s2File = fileOf(d, s2)!;
    await deleteSnapshot(dd, s2);
    expect(await exists(s2File)).toBe(false);
    expect((await desc()).images).toHaveLength(2);
  });

  it('refuses the current top and unknown snapshots', async () => {
    await snapshot(dd);
    await expect(switchSnapshot(dd, TOP_GUID)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      switchSnapshot(dd, '{11111111-1111-1111-1111-111111111111}'),
    ).rejects.toBeInstanceOf(NotFoundError);
  });
});

describe('operations on a missing disk', () => {
  it('fail with NotFoundError', async () => {
    const none = path.join(dir, 'none', DESCRIPTOR_NAME);
    await expect(snapshot(none)).rejects.toBeInstanceOf(NotFoundError);
    await expect(mergeTop(none)).rejects.toBeInstanceOf(NotFoundError);
    await expect(listSnapshots(none)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('leave no lock file in a directory without a descriptor', async () => {
    const empty = path.join(dir, 'empty');
    await fsp.mkdir(empty);
    const dd = path.join(empty, DESCRIPTOR_NAME);
    await expect(snapshot(dd)).rejects.toBeInstanceOf(NotFoundError);
    await expect(mergeTop(dd)).rejects.toBeInstanceOf(NotFoundError);
    expect(await fsp.readdir(empty)).toEqual([]);
  });
});
