import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Chain } from '../../src/ploop/index.js';
import {
  DEFAULT_CAPACITY,
  Pool,
  PoolError,
  VolumeSource,
  parseParameters,
} from '../../src/pool/index.js';

const M = 1 << 20;

let root: string;
let pool: Pool;

beforeEach(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-pool-'));
  pool = await Pool.open(path.join(root, 'pool'), { overProvisioning: 1000 });
});

afterEach(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});

function vol(
  name: string,
  requiredBytes = 4 * M,
  extra: { limitBytes?: number; parameters?: Record<string, string>; source?: VolumeSource } = {},
) {
  return pool.createVolume({
    name,
    requiredBytes,
    limitBytes: extra.limitBytes ?? 0,
    parameters: extra.parameters ?? {},
    source: extra.source ?? null,
  });
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof PoolError) return err.code;
    throw err;
  }
  return 'OK';
}

/** A recognisable 64 KiB block. */
function block(seed: number): Buffer {
  const b = Buffer.alloc(64 << 10);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + seed * 7 + 1) & 0xff;
  return b;
}

async function write(dd: string, offset: number, data: Buffer): Promise<void> {
  const c = await Chain.open(dd);
  try {
    await c.write(data, offset);
    await c.flush();
  } finally {
    await c.close();
  }
}

async function read(dd: string, offset: number, length: number): Promise<Buffer> {
  const c = await Chain.open(dd, { readOnly: true });
  try {
    const b = Buffer.alloc(length);
    await c.read(b, offset);
    return b;
  } finally {
    await c.close();
  }
}

describe('parameters', () => {
  it('defaults, parses and validates', () => {
    expect(parseParameters({}, M)).toEqual({ clusterSize: M, preallocate: false, fsType: null });
    expect(parseParameters({ clusterSize: '64K', preallocate: 'true', fsType: 'xfs' }, M)).toEqual({
      clusterSize: 64 << 10,
      preallocate: true,
      fsType: 'xfs',
    });
    // Keys the Kubernetes sidecars add are not ours and are ignored.
    expect(parseParameters({ 'csi.storage.k8s.io/pvc/name': 'x' }, M).clusterSize).toBe(M);
    const bads: Record<string, string>[] = [
      { clusterSize: '3K' },
      { clusterSize: 'huge' },
      { preallocate: 'yes' },
      { fsType: 'btrfs' },
      { colour: 'blue' },
    ];
    for (const bad of bads) {
      expect(() => parseParameters(bad, M)).toThrow(PoolError);
    }
  });

  it('are recorded with the volume', async () => {
    const v = await vol('p', 2 * M, { parameters: { clusterSize: '256K', fsType: 'ext4' } });
    expect(v.parameters).toEqual({ clusterSize: 256 << 10, preallocate: false, fsType: 'ext4' });
    expect((await pool.getVolume(v.id))?.parameters).toEqual(v.parameters);
  });
});

describe('capacity rounding', () => {
  it('rounds up to whole clusters within the limit', async () => {
    expect((await vol('a', 1)).capacityBytes).toBe(M);
    expect((await vol('b', 1.5 * M)).capacityBytes).toBe(2 * M);
    expect((await vol('c', 3 * M, { limitBytes: 3 * M })).capacityBytes).toBe(3 * M);
    expect((await vol('d', 0, { limitBytes: 10 * M })).capacityBytes).toBe(10 * M);
    expect((await vol('e', 0)).capacityBytes).toBe(DEFAULT_CAPACITY);
    expect((await vol('f', 100 << 10, { parameters: { clusterSize: '64K' } })).capacityBytes).toBe(
      128 << 10,
    );
  });

  it('refuses ranges it cannot honour', async () => {
    expect(await code(vol('a', 1.5 * M, { limitBytes: 1.5 * M }))).toBe('OUT_OF_RANGE');
    expect(await code(vol('b', 2 * M, { limitBytes: M }))).toBe('INVALID_ARGUMENT');
    expect(await code(vol('c', -1))).toBe('INVALID_ARGUMENT');
    expect(await pool.listVolumes()).toEqual([]);
  });

  it('refuses a volume larger than the pool can hold', async () => {
    const small = await Pool.open(path.join(root, 'small'), { overProvisioning: 1 });
    const cap = await small.capacity();
    const tooBig = small.createVolume({
      name: 'big',
      requiredBytes: cap.availableBytes + 64 * M,
      limitBytes: 0,
      parameters: {},
      source: null,
    });
    expect(await code(tooBig)).toBe('RESOURCE_EXHAUSTED');
  });

  it('counts provisioned sizes against the over-provisioning ratio', async () => {
    await vol('a', 4 * M);
    await vol('b', 8 * M);
    const c = await pool.capacity();
    expect(c.provisionedBytes).toBe(12 * M);
    expect(c.availableBytes).toBeLessThanOrEqual(c.totalBytes * 1000 - 12 * M);
    expect(c.availableBytes).toBeLessThanOrEqual(c.freeBytes * 1000);
  });
});

describe('volumes', () => {
  it('are idempotent by name and refuse incompatible repeats', async () => {
    const a = await vol('same', 4 * M);
    expect(await vol('same', 4 * M)).toEqual(a);
    // Smaller requests are satisfied by the existing volume.
    expect((await vol('same', 2 * M)).id).toBe(a.id);
    expect(await code(vol('same', 8 * M))).toBe('ALREADY_EXISTS');
    expect(await code(vol('same', 4 * M, { limitBytes: 2 * M }))).toBe('INVALID_ARGUMENT');
    expect(await code(vol('same', 4 * M, { parameters: { fsType: 'xfs' } }))).toBe(
      'ALREADY_EXISTS',
    );
    expect(await code(vol('same', 4 * M, { source: { kind: 'volume', id: a.id } }))).toBe(
      'ALREADY_EXISTS',
    );
    expect((await pool.listVolumes()).map((v) => v.id)).toEqual([a.id]);
  });

  it('lists in id order and deletes idempotently', async () => {
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await vol(`v${i}`, M)).id);
    expect((await pool.listVolumes()).map((v) => v.id)).toEqual([...ids].sort());
    await pool.deleteVolume(ids[0]!);
    await pool.deleteVolume(ids[0]!);
    await pool.deleteVolume('pv-aaaaaaaaaaaaaaaaaaaaaaaaaa');
    await pool.deleteVolume('../../etc');
    expect(await pool.getVolume(ids[0]!)).toBeNull();
    expect(await pool.listVolumes()).toHaveLength(4);
    expect(await fsp.readdir(path.join(pool.root, '.trash'))).toEqual([]);
  });

  it('never resolves a malformed id to a path', async () => {
    expect(await pool.getVolume('../../etc/passwd')).toBeNull();
    expect(await pool.getSnapshot('../volumes')).toBeNull();
  });

  it('expands offline and records the new size', async () => {
    const v = await vol('grow', 4 * M);
    const g = await pool.expandVolume(v.id, 6 * M);
    expect(g.capacityBytes).toBe(6 * M);
    expect((await pool.getVolume(v.id))?.capacityBytes).toBe(6 * M);
    const c = await Chain.open(pool.volumeDescriptor(v.id), { readOnly: true });
    expect(c.virtualSize).toBe(6 * M);
    await c.close();
    expect(await code(pool.expandVolume('pv-aaaaaaaaaaaaaaaaaaaaaaaaaa', M))).toBe('NOT_FOUND');
  });
});

describe('crash recovery', () => {
  it('clears what an interrupted operation left in .staging and .trash', async () => {
    const v = await vol('keep', M);
    const staged = path.join(pool.root, '.staging', 'half-written');
    const trashed = path.join(pool.root, '.trash', 'pv-old-deleted');
    await fsp.mkdir(path.join(staged, 'sub'), { recursive: true });
    await fsp.writeFile(path.join(staged, 'sub', 'root.hds'), 'partial');
    await fsp.mkdir(trashed);
    await fsp.writeFile(path.join(trashed, 'volume.json'), '{}');
    const reopened = await Pool.open(pool.root);
    expect(await fsp.readdir(path.join(pool.root, '.staging'))).toEqual([]);
    expect(await fsp.readdir(path.join(pool.root, '.trash'))).toEqual([]);
    // Published objects are untouched.
    expect(await reopened.getVolume(v.id)).toEqual(v);
  });
});

describe('snapshots and clones', () => {
  it('snapshots idempotently and checks the source', async () => {
    const v = await vol('src', 4 * M);
    const w = await vol('other', 4 * M);
    const s = await pool.createSnapshot({ name: 'snap', sourceVolumeId: v.id });
    expect(s.sizeBytes).toBe(4 * M);
    expect(s.sourceVolumeId).toBe(v.id);
    expect(Date.parse(s.createdAt)).toBeGreaterThan(0);
    expect(await pool.createSnapshot({ name: 'snap', sourceVolumeId: v.id })).toEqual(s);
    expect(await code(pool.createSnapshot({ name: 'snap', sourceVolumeId: w.id }))).toBe(
      'ALREADY_EXISTS',
    );
    expect(
      await code(
        pool.createSnapshot({ name: 'nosrc', sourceVolumeId: 'pv-aaaaaaaaaaaaaaaaaaaaaaaaaa' }),
      ),
    ).toBe('NOT_FOUND');
    expect((await pool.listSnapshots()).map((x) => x.id)).toEqual([s.id]);
    await pool.deleteSnapshot(s.id);
    await pool.deleteSnapshot(s.id);
    await pool.deleteSnapshot('snap-../../x');
    expect(await pool.listSnapshots()).toEqual([]);
  });

  it('a restored volume keeps its data after the snapshot and the source are deleted', async () => {
    const v = await vol('src', 4 * M);
    const dd = pool.volumeDescriptor(v.id);
    await write(dd, 0, block(1));
    await write(dd, 3 * M, block(2));
    const s = await pool.createSnapshot({ name: 'snap', sourceVolumeId: v.id });
    // Written after the snapshot: must not show in the restore.
    await write(dd, 0, block(9));

    const r = await vol('restored', 4 * M, { source: { kind: 'snapshot', id: s.id } });
    expect(r.source).toEqual({ kind: 'snapshot', id: s.id });
    await pool.deleteSnapshot(s.id);
    await pool.deleteVolume(v.id);
    const rdd = pool.volumeDescriptor(r.id);
    expect((await read(rdd, 0, 64 << 10)).equals(block(1))).toBe(true);
    expect((await read(rdd, 3 * M, 64 << 10)).equals(block(2))).toBe(true);
    expect((await read(rdd, M, 64 << 10)).equals(Buffer.alloc(64 << 10))).toBe(true);
    // The restore stays writable and independent.
    await write(rdd, M, block(3));
    expect((await read(rdd, M, 64 << 10)).equals(block(3))).toBe(true);
    // Its creation is idempotent even now that its source is gone.
    expect((await vol('restored', 4 * M, { source: { kind: 'snapshot', id: s.id } })).id).toBe(
      r.id,
    );
    expect(await code(vol('restored-2', 4 * M, { source: { kind: 'snapshot', id: s.id } }))).toBe(
      'NOT_FOUND',
    );
  });

  it('a clone has the source data at the time of cloning, and the two diverge', async () => {
    const v = await vol('src', 4 * M);
    const dd = pool.volumeDescriptor(v.id);
    await write(dd, 64 << 10, block(1));
    const c = await vol('clone', 8 * M, { source: { kind: 'volume', id: v.id } });
    expect(c.capacityBytes).toBe(8 * M);
    const cdd = pool.volumeDescriptor(c.id);
    await write(dd, 64 << 10, block(2));
    await write(cdd, 2 * M, block(3));
    expect((await read(cdd, 64 << 10, 64 << 10)).equals(block(1))).toBe(true);
    expect((await read(dd, 64 << 10, 64 << 10)).equals(block(2))).toBe(true);
    expect((await read(dd, 2 * M, 64 << 10)).equals(Buffer.alloc(64 << 10))).toBe(true);
    expect((await read(cdd, 2 * M, 64 << 10)).equals(block(3))).toBe(true);
    await pool.deleteVolume(v.id);
    expect((await read(cdd, 64 << 10, 64 << 10)).equals(block(1))).toBe(true);
  });

  it('refuses a clone smaller than its source or with another cluster size', async () => {
    const v = await vol('src', 4 * M);
    expect(
      await code(vol('small', 2 * M, { limitBytes: 2 * M, source: { kind: 'volume', id: v.id } })),
    ).toBe('OUT_OF_RANGE');
    expect(
      await code(
        vol('cs', 4 * M, {
          parameters: { clusterSize: '64K' },
          source: { kind: 'volume', id: v.id },
        }),
      ),
    ).toBe('INVALID_ARGUMENT');
    expect(
      await code(
        vol('gone', 4 * M, { source: { kind: 'volume', id: 'pv-aaaaaaaaaaaaaaaaaaaaaaaaaa' } }),
      ),
    ).toBe('NOT_FOUND');
    // A smaller request without a limit gets the source's size.
    expect((await vol('fit', M, { source: { kind: 'volume', id: v.id } })).capacityBytes).toBe(
      4 * M,
    );
  });
});
