import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  Chain,
  CorruptImageError,
  DESCRIPTOR_NAME,
  Descriptor,
  NONE_GUID,
  PloopError,
  TOP_GUID,
  chainGuids,
  checkImage,
  childrenOf,
  createDisk,
  isGuid,
  newGuid,
  nodeFileSystem,
  parseDescriptor,
  readDescriptor,
  resolveImagePath,
  serializeDescriptor,
  validateDescriptor,
  writeDescriptor,
} from '../../src/ploop/index.js';
import { K64, makeTempDir, removeDir } from './helpers.js';

/** The descriptor `ploop init -s 1G -t none a/root.hdd` wrote (ploop-format.md §2). */
const PLOOP_EXAMPLE = `<?xml version="1.0"?>
<Parallels_disk_image>
  <Disk_Parameters>
    <Disk_size>2097152</Disk_size>
    <Cylinders>2080</Cylinders>
    <Heads>16</Heads>
    <Sectors>63</Sectors>
    <Padding>0</Padding>
  </Disk_Parameters>
  <StorageData>
    <Storage>
      <Start>0</Start>
      <End>2097152</End>
      <Blocksize>2048</Blocksize>
      <Image>
        <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>
        <Type>Compressed</Type>
        <File>root.hdd</File>
      </Image>
    </Storage>
  </StorageData>
  <Snapshots>
    <TopGUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</TopGUID>
    <Shot>
      <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>
      <ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID>
    </Shot>
  </Snapshots>
</Parallels_disk_image>
`;

const A = '{11111111-1111-1111-1111-111111111111}';
const B = '{22222222-2222-2222-2222-222222222222}';
const C = '{33333333-3333-3333-3333-333333333333}';

/** base A ← B ← TOP */
function threeLevel(): Descriptor {
  return {
    sizeSectors: 2048,
    clusterSectors: 128,
    preallocated: false,
    images: [
      { guid: A, type: 'Compressed', file: 'root.hds' },
      { guid: B, type: 'Compressed', file: `root.hds.${C}` },
      {
        guid: TOP_GUID,
        type: 'Compressed',
        file: 'root.hds.{44444444-4444-4444-4444-444444444444}',
      },
    ],
    snapshots: [
      { guid: A, parent: NONE_GUID, temporary: false },
      { guid: B, parent: A, temporary: true },
      { guid: TOP_GUID, parent: B, temporary: false },
    ],
    topGuid: TOP_GUID,
  };
}

const F = '/x/DiskDescriptor.xml';

describe('parse and serialize', () => {
  it('reads the descriptor ploop writes', () => {
    const d = parseDescriptor(PLOOP_EXAMPLE, F);
    expect(d).toEqual({
      sizeSectors: 2097152,
      clusterSectors: 2048,
      preallocated: false,
      images: [{ guid: TOP_GUID, type: 'Compressed', file: 'root.hdd' }],
      snapshots: [{ guid: TOP_GUID, parent: NONE_GUID, temporary: false }],
      topGuid: TOP_GUID,
    });
  });

  it('accepts any root element name (ploop master writes Virtuozzo_disk_image)', () => {
    const xml = PLOOP_EXAMPLE.replace(/Parallels_disk_image/g, 'Virtuozzo_disk_image');
    expect(parseDescriptor(xml, F).topGuid).toBe(TOP_GUID);
  });

  it('round-trips', () => {
    const d = threeLevel();
    expect(parseDescriptor(serializeDescriptor(d), F)).toEqual(d);
    const pre = { ...threeLevel(), preallocated: true };
    expect(parseDescriptor(serializeDescriptor(pre), F)).toEqual(pre);
  });

  it('writes what ploop 1.15 needs: geometry, the top GUID, <Temporary/>', () => {
    const xml = serializeDescriptor({ ...threeLevel(), sizeSectors: 2097152 });
    expect(xml.startsWith('<?xml version="1.0"?>\n<Parallels_disk_image>')).toBe(true);
    expect(xml).toContain('<Disk_size>2097152</Disk_size>');
    expect(xml).toContain('<Cylinders>2080</Cylinders>');
    expect(xml).toContain('<Heads>16</Heads>');
    // Disk_size / (Cylinders × Heads), not the cluster size.
    expect(xml).toContain('<Sectors>63</Sectors>');
    expect(xml).toContain('<Padding>0</Padding>');
    expect(xml).toContain('<End>2097152</End>');
    expect(xml).toContain(`<TopGUID>${TOP_GUID}</TopGUID>`);
    expect(xml.match(/<Temporary\/>/g)).toHaveLength(1);
  });

  it('reads the Temporary marker in either form', () => {
    const xml = serializeDescriptor(threeLevel());
    const open = xml.replace('<Temporary/>', '<Temporary></Temporary>');
    expect(parseDescriptor(open, F).snapshots.map((s) => s.temporary)).toEqual([
      false,
      true,
      false,
    ]);
    const none = xml.replace('<Temporary/>', '');
    expect(parseDescriptor(none, F).snapshots.every((s) => !s.temporary)).toBe(true);
  });

  it('normalizes GUIDs to lower case', () => {
    const xml = PLOOP_EXAMPLE.replace(/5fbaabe3-6958-40ff-92a7-860e329aab41/g, (g) =>
      g.toUpperCase(),
    );
    expect(parseDescriptor(xml, F).topGuid).toBe(TOP_GUID);
  });

  it('has the constant top GUID', () => {
    expect(TOP_GUID).toBe('{5fbaabe3-6958-40ff-92a7-860e329aab41}');
    expect(isGuid(TOP_GUID)).toBe(true);
    expect(isGuid(newGuid())).toBe(true);
    expect(newGuid()).not.toBe(newGuid());
  });

  it('orders the chain base first', () => {
    const d = threeLevel();
    expect(chainGuids(d, F)).toEqual([A, B, TOP_GUID]);
    expect(chainGuids(d, F, B)).toEqual([A, B]);
    expect(childrenOf(d, A).map((s) => s.guid)).toEqual([B]);
  });
});

describe('validation', () => {
  const rejects = (d: Descriptor, re: RegExp) => {
    expect(() => validateDescriptor(d, F)).toThrow(CorruptImageError);
    expect(() => validateDescriptor(d, F)).toThrow(re);
    expect(() => parseDescriptor(serializeDescriptor(d), F)).toThrow(CorruptImageError);
  };

  it('rejects a parent cycle on the top chain', () => {
    const d = threeLevel();
    d.snapshots[0]!.parent = TOP_GUID;
    rejects(d, /cycle/);
  });

  it('rejects a snapshot that is its own parent', () => {
    const d = threeLevel();
    d.snapshots[1]!.parent = B;
    rejects(d, /cycle/);
  });

  it('rejects a cycle off the top chain', () => {
    // TOP → A → root, and B ↔ C loop on their own: not a tree.
    const d = threeLevel();
    d.images.push({ guid: C, type: 'Compressed', file: 'c.hds' });
    d.snapshots[1]!.parent = C;
    d.snapshots.push({ guid: C, parent: B, temporary: false });
    d.snapshots[2]!.parent = A;
    rejects(d, /cycle/);
  });

  it('rejects a missing parent', () => {
    const d = threeLevel();
    d.snapshots[1]!.parent = C;
    rejects(d, /unknown parent/);
  });

  it('rejects bad GUIDs', () => {
    const d = threeLevel();
    d.images[0]!.guid = '{not-a-guid}';
    d.snapshots[0]!.guid = '{not-a-guid}';
    d.snapshots[1]!.parent = '{not-a-guid}';
    rejects(d, /invalid GUID/);
    const e = threeLevel();
    e.snapshots[0]!.parent = '11111111-1111-1111-1111-111111111111';
    rejects(e, /unknown parent/);
  });

  it('rejects a TopGUID naming no image', () => {
    const d = threeLevel();
    d.topGuid = C;
    rejects(d, /TopGUID/);
  });

  it('rejects images without their snapshot and duplicate GUIDs', () => {
    const d = threeLevel();
    d.snapshots.pop();
    rejects(d, /differ/);
    const e = threeLevel();
    e.images[1]!.guid = A;
    e.snapshots[1]!.guid = A;
    rejects(e, /duplicate/);
  });

  it('rejects two Shots with one GUID', () => {
    // Image B has no Shot of its own; the count still matches.
    const d = threeLevel();
    d.snapshots[1] = { guid: A, parent: NONE_GUID, temporary: false };
    d.snapshots[2]!.parent = A;
    rejects(d, /snapshot/);
  });

  it('rejects two images sharing one file', () => {
    const d = threeLevel();
    d.images[2]!.file = './root.hds';
    rejects(d, /same file/);
    const e = threeLevel();
    e.images[2]!.file = '/x/root.hds';
    rejects(e, /same file/);
  });

  it.each([0, 3, 2 ** 18, 2 ** 40])('rejects Blocksize %d', (bs) => {
    rejects({ ...threeLevel(), clusterSectors: bs }, /Blocksize/);
  });

  it('rejects an empty chain and an empty file name', () => {
    rejects({ ...threeLevel(), images: [], snapshots: [] }, /no images/);
    const d = threeLevel();
    d.images[0]!.file = '';
    expect(() => validateDescriptor(d, F)).toThrow(CorruptImageError);
  });

  it.each<[string, string]>([
    ['not XML', 'hello'],
    ['empty', ''],
    ['truncated', PLOOP_EXAMPLE.slice(0, 300)],
    ['no storage', PLOOP_EXAMPLE.replace(/<StorageData>[\s\S]*<\/StorageData>/, '')],
    [
      'two storages',
      PLOOP_EXAMPLE.replace(/(<Storage>[\s\S]*<\/Storage>)/, '$1$1').replace(
        /<\/Storage>\s*<Storage>[\s\S]*?<GUID>/,
        '</Storage><Storage><Blocksize>2048</Blocksize><Image><GUID>',
      ),
    ],
    ['unknown type', PLOOP_EXAMPLE.replace('Compressed', 'Zstd')],
    ['non-numeric size', PLOOP_EXAMPLE.replace('<Disk_size>2097152', '<Disk_size>2G')],
    ['huge size', PLOOP_EXAMPLE.replace('<Disk_size>2097152', '<Disk_size>99999999999999999999')],
    ['negative size', PLOOP_EXAMPLE.replace('<Disk_size>2097152', '<Disk_size>-1')],
    ['nested GUID', PLOOP_EXAMPLE.replace(/<TopGUID>.*<\/TopGUID>/, '<TopGUID><a/></TopGUID>')],
    [
      'two parameter blocks',
      PLOOP_EXAMPLE.replace(/(<Disk_Parameters>[\s\S]*?<\/Disk_Parameters>)/, '$1$1'),
    ],
  ])('rejects %s with CorruptImageError', (_n, xml) => {
    expect(() => parseDescriptor(xml, F)).toThrow(CorruptImageError);
  });
});

describe('image paths', () => {
  it('resolves relative paths against the descriptor directory', () => {
    expect(resolveImagePath('/d/e/DiskDescriptor.xml', 'root.hds')).toBe('/d/e/root.hds');
    expect(resolveImagePath('/d/e/DiskDescriptor.xml', './sub/../root.hds')).toBe('/d/e/root.hds');
    expect(resolveImagePath('/d/e/DiskDescriptor.xml', 'sub/x.hds')).toBe('/d/e/sub/x.hds');
  });

  it('accepts absolute paths inside the descriptor directory', () => {
    expect(resolveImagePath('/d/e/DiskDescriptor.xml', '/d/e/root.hds')).toBe('/d/e/root.hds');
  });

  it.each([
    '../root.hds',
    '../../etc/passwd',
    'sub/../../x',
    '/etc/passwd',
    '/d/ef/root.hds',
    '..',
    '.',
    '/d/e',
  ])('refuses %s', (file) => {
    expect(() => resolveImagePath('/d/e/DiskDescriptor.xml', file)).toThrow(CorruptImageError);
  });

  it('refuses the descriptor itself as an image', () => {
    expect(() => resolveImagePath('/d/e/DiskDescriptor.xml', 'DiskDescriptor.xml')).toThrow(
      CorruptImageError,
    );
  });

  it('rejects escaping relative paths when parsing', () => {
    const xml = PLOOP_EXAMPLE.replace('<File>root.hdd', '<File>../../etc/passwd');
    expect(() => parseDescriptor(xml, F)).toThrow(CorruptImageError);
  });
});

describe('on disk', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await makeTempDir();
  });
  afterEach(() => removeDir(dir));

  it('stores atomically and reads back', async () => {
    const dd = path.join(dir, DESCRIPTOR_NAME);
    await writeDescriptor(nodeFileSystem, dd, threeLevel());
    expect(await readDescriptor(nodeFileSystem, dd)).toEqual(threeLevel());
    expect(await fsp.readdir(dir)).toEqual([DESCRIPTOR_NAME]);
    // A stale temporary file from an interrupted store is replaced.
    await fsp.writeFile(`${dd}.tmp`, 'garbage');
    await writeDescriptor(nodeFileSystem, dd, { ...threeLevel(), sizeSectors: 4096 });
    expect((await readDescriptor(nodeFileSystem, dd)).sizeSectors).toBe(4096);
    expect(await fsp.readdir(dir)).toEqual([DESCRIPTOR_NAME]);
  });

  it('refuses to store an invalid descriptor', async () => {
    const dd = path.join(dir, DESCRIPTOR_NAME);
    await expect(
      writeDescriptor(nodeFileSystem, dd, { ...threeLevel(), topGuid: C }),
    ).rejects.toThrow(CorruptImageError);
    await expect(fsp.access(dd)).rejects.toThrow();
  });

  it('never opens a file outside the descriptor directory', async () => {
    const disk = path.join(dir, 'disk');
    const { descriptorPath } = await createDisk(disk, { size: 1 << 20, clusterSize: K64 });
    // A raw file next to the disk directory that a traversal would open read-write.
    const victim = path.join(dir, 'victim.raw');
    await fsp.writeFile(victim, Buffer.alloc(1 << 20, 0x5a));
    const before = await fsp.stat(victim);
    const xml = (await fsp.readFile(descriptorPath, 'utf8'))
      .replace('<File>root.hds</File>', '<File>../victim.raw</File>')
      .replace('<Type>Compressed</Type>', '<Type>Plain</Type>');
    await fsp.writeFile(descriptorPath, xml);
    await expect(Chain.open(descriptorPath)).rejects.toThrow(CorruptImageError);
    await expect(Chain.open(disk, { readOnly: true })).rejects.toThrow(CorruptImageError);
    await fsp.writeFile(
      descriptorPath,
      xml.replace('<File>../victim.raw</File>', `<File>${victim}</File>`),
    );
    await expect(Chain.open(descriptorPath)).rejects.toThrow(CorruptImageError);
    const after = await fsp.stat(victim);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect((await fsp.readFile(victim)).every((b) => b === 0x5a)).toBe(true);
  });

  it('reports an image path naming a directory with a typed error', async () => {
    const disk = path.join(dir, 'disk');
    const { descriptorPath } = await createDisk(disk, { size: 1 << 20, clusterSize: K64 });
    await fsp.mkdir(path.join(disk, 'sub'));
    const xml = await fsp.readFile(descriptorPath, 'utf8');
    await fsp.writeFile(descriptorPath, xml.replace('<File>root.hds</File>', '<File>sub</File>'));
    await expect(Chain.open(descriptorPath, { readOnly: true })).rejects.toBeInstanceOf(PloopError);
    await expect(Chain.open(descriptorPath)).rejects.toBeInstanceOf(PloopError);
    await expect(checkImage(path.join(disk, 'sub'))).rejects.toBeInstanceOf(PloopError);
  });

  it('resolves a relative path in a descriptor opened through a relative path', async () => {
    const disk = path.join(dir, 'disk');
    await createDisk(disk, { size: 1 << 20, clusterSize: K64 });
    const cwd = process.cwd();
    try {
      process.chdir(dir);
      const chain = await Chain.open('disk', { readOnly: true });
      expect(chain.deltas[0]!.path).toBe(path.join(disk, 'root.hds'));
      await chain.close();
    } finally {
      process.chdir(cwd);
    }
  });
});
