/** Conformance of the Controller service over a real socket: lifecycle and spec error codes. */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Harness,
  M,
  NODE,
  SnapshotOut,
  TOPOLOGY_KEY,
  VolumeOut,
  blockCap,
  createReq,
  createSnapshot,
  createVolume,
  lifecycle,
  listSnapshotIds,
  listVolumeIds,
  mountCap,
  startHarness,
} from './harness.js';

let h: Harness;

beforeAll(async () => {
  h = await startHarness();
});

afterAll(async () => {
  await h.close();
});

const UNKNOWN_VOLUME = 'pv-aaaaaaaaaaaaaaaaaaaaaaaaaa';
const UNKNOWN_SNAPSHOT = 'snap-aaaaaaaaaaaaaaaaaaaaaaaaaa';
const c = (method: string, req: object = {}) => h.code('Controller', method, req);

describe('controller lifecycle', () => {
  it('create → get → list → snapshot → list snapshots → restore → clone → delete, 3 times', async () => {
    for (let round = 0; round < 3; round++) await lifecycle(h, 'life');
    expect(await listVolumeIds(h)).toEqual([]);
  });

  it('reports exactly the capabilities it implements', async () => {
    const r = await h.call<{ capabilities: { rpc: { type: string } }[] }>(
      'Controller',
      'ControllerGetCapabilities',
    );
    expect(r.capabilities.map((x) => x.rpc.type).sort()).toEqual(
      [
        'CREATE_DELETE_VOLUME',
        'CREATE_DELETE_SNAPSHOT',
        'LIST_SNAPSHOTS',
        'GET_SNAPSHOT',
        'CLONE_VOLUME',
        'GET_CAPACITY',
        'LIST_VOLUMES',
        'GET_VOLUME',
        'SINGLE_NODE_MULTI_WRITER',
        'VOLUME_CONDITION',
      ].sort(),
    );
  });

  it('leaves publish, unpublish, expand and modify unimplemented', async () => {
    const vol = { volumeId: UNKNOWN_VOLUME, nodeId: NODE, volumeCapability: mountCap() };
    expect(await c('ControllerPublishVolume', vol)).toBe(status.UNIMPLEMENTED);
    expect(await c('ControllerUnpublishVolume', vol)).toBe(status.UNIMPLEMENTED);
    expect(
      await c('ControllerExpandVolume', {
        volumeId: UNKNOWN_VOLUME,
        capacityRange: { requiredBytes: M },
      }),
    ).toBe(status.UNIMPLEMENTED);
    expect(
      await c('ControllerModifyVolume', {
        volumeId: UNKNOWN_VOLUME,
        mutableParameters: { a: 'b' },
      }),
    ).toBe(status.UNIMPLEMENTED);
  });
});

describe('CreateVolume', () => {
  it('needs a name and capabilities', async () => {
    expect(await c('CreateVolume', { volumeCapabilities: [mountCap()] })).toBe(
      status.INVALID_ARGUMENT,
    );
    expect(await c('CreateVolume', { name: 'no-caps' })).toBe(status.INVALID_ARGUMENT);
    expect(await c('CreateVolume', { name: 'no-mode', volumeCapabilities: [{ mount: {} }] })).toBe(
      status.INVALID_ARGUMENT,
    );
    expect(
      await c('CreateVolume', {
        name: 'no-type',
        volumeCapabilities: [{ accessMode: { mode: 'SINGLE_NODE_WRITER' } }],
      }),
    ).toBe(status.INVALID_ARGUMENT);
  });

  it('serves every single-node access mode, mount and block', async () => {
    for (const mode of [
      'SINGLE_NODE_WRITER',
      'SINGLE_NODE_READER_ONLY',
      'SINGLE_NODE_SINGLE_WRITER',
      'SINGLE_NODE_MULTI_WRITER',
    ] as const) {
      const v = await createVolume(h, {
        name: `mode-${mode}`,
        volumeCapabilities: [mountCap(mode), blockCap(mode)],
        capacityRange: { requiredBytes: M },
      });
      expect(v.volumeContext).toEqual({ fsType: 'ext4' });
    }
    const block = await createVolume(h, {
      name: 'block-only',
      volumeCapabilities: [blockCap()],
      capacityRange: { requiredBytes: M },
    });
    expect(block.volumeContext).toEqual({});
  });

  it('refuses multi-node access modes and unsupported file systems', async () => {
    for (const mode of [
      'MULTI_NODE_READER_ONLY',
      'MULTI_NODE_SINGLE_WRITER',
      'MULTI_NODE_MULTI_WRITER',
    ] as const) {
      expect(
        await c('CreateVolume', { name: `multi-${mode}`, volumeCapabilities: [mountCap(mode)] }),
      ).toBe(status.INVALID_ARGUMENT);
    }
    expect(
      await c('CreateVolume', {
        name: 'btrfs',
        volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'btrfs')],
      }),
    ).toBe(status.INVALID_ARGUMENT);
    expect(
      await c('CreateVolume', {
        name: 'two-fs',
        volumeCapabilities: [
          mountCap('SINGLE_NODE_WRITER', 'ext4'),
          mountCap('SINGLE_NODE_WRITER', 'xfs'),
        ],
      }),
    ).toBe(status.INVALID_ARGUMENT);
    expect(
      await c('CreateVolume', { ...createReq('unknown-param'), parameters: { colour: 'red' } }),
    ).toBe(status.INVALID_ARGUMENT);
    expect(
      await c('CreateVolume', { ...createReq('mutable'), mutableParameters: { iops: '100' } }),
    ).toBe(status.INVALID_ARGUMENT);
    expect(await listVolumeIds(h)).not.toContain('x');
  });

  it('takes the file system from the capability, else the parameter, else ext4', async () => {
    const fromCap = await createVolume(h, {
      ...createReq('fs-cap', M),
      volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')],
      parameters: { fsType: 'ext4' },
    });
    expect(fromCap.volumeContext).toEqual({ fsType: 'xfs' });
    const fromParam = await createVolume(h, {
      ...createReq('fs-param', M),
      parameters: { fsType: 'xfs' },
    });
    expect(fromParam.volumeContext).toEqual({ fsType: 'xfs' });
    const sidecarKeys = await createVolume(h, {
      ...createReq('fs-default', M),
      parameters: {
        'csi.storage.k8s.io/pvc/name': 'data',
        'csi.storage.k8s.io/pvc/namespace': 'ns',
      },
    });
    expect(sidecarKeys.volumeContext).toEqual({ fsType: 'ext4' });
    // Restores and clones keep the source's file system, and refuse another one.
    const snap = await createSnapshot(h, 'fs-snap', fromParam.volumeId);
    for (const volumeContentSource of [
      { snapshot: { snapshotId: snap.snapshotId } },
      { volume: { volumeId: fromParam.volumeId } },
    ]) {
      const tag = Object.keys(volumeContentSource)[0];
      const kept = await createVolume(h, {
        ...createReq(`fs-keep-${tag}`, M),
        volumeContentSource,
      });
      expect(kept.volumeContext).toEqual({ fsType: 'xfs' });
      expect(
        await c('CreateVolume', {
          ...createReq(`fs-other-${tag}`, M),
          volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'ext4')],
          volumeContentSource,
        }),
      ).toBe(status.INVALID_ARGUMENT);
    }
    // Retries still answer the same once the source volume is gone.
    expect(await c('DeleteVolume', { volumeId: fromParam.volumeId })).toBe(status.OK);
    const again = await createVolume(h, {
      ...createReq('fs-keep-snapshot', M),
      volumeContentSource: { snapshot: { snapshotId: snap.snapshotId } },
    });
    expect(again.volumeContext).toEqual({ fsType: 'xfs' });
  });

  it('rounds capacity up to whole clusters and reports it exactly', async () => {
    const v = await createVolume(h, {
      name: 'round',
      volumeCapabilities: [mountCap()],
      capacityRange: { requiredBytes: 1.5 * M },
    });
    expect(v.capacityBytes).toBe(String(2 * M));
    const exact = await createVolume(h, createReq('exact', 7 * M));
    expect(exact.capacityBytes).toBe(String(7 * M));
    const dflt = await createVolume(h, { name: 'default-size', volumeCapabilities: [mountCap()] });
    expect(dflt.capacityBytes).toBe(String(1 << 30));
  });

  it('is idempotent by name and refuses incompatible repeats with ALREADY_EXISTS', async () => {
    const a = await createVolume(h, createReq('twice', 8 * M));
    expect((await createVolume(h, createReq('twice', 8 * M))).volumeId).toBe(a.volumeId);
    expect(await c('CreateVolume', createReq('twice', 16 * M))).toBe(status.ALREADY_EXISTS);
    expect(
      await c('CreateVolume', { ...createReq('twice', 8 * M), parameters: { clusterSize: '64K' } }),
    ).toBe(status.ALREADY_EXISTS);
    expect(
      await c('CreateVolume', {
        ...createReq('twice', 8 * M),
        volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')],
      }),
    ).toBe(status.ALREADY_EXISTS);
    const other = await createVolume(h, createReq('twice-other', 8 * M));
    expect(
      await c('CreateVolume', {
        ...createReq('twice', 8 * M),
        volumeContentSource: { volume: { volumeId: other.volumeId } },
      }),
    ).toBe(status.ALREADY_EXISTS);
  });

  it('answers NOT_FOUND for missing sources', async () => {
    for (const snapshotId of [UNKNOWN_SNAPSHOT, 'non-existing-snapshot-id']) {
      expect(
        await c('CreateVolume', {
          ...createReq('from-nothing'),
          volumeContentSource: { snapshot: { snapshotId } },
        }),
      ).toBe(status.NOT_FOUND);
    }
    for (const volumeId of [UNKNOWN_VOLUME, 'fake-vol-id-0123456789']) {
      expect(
        await c('CreateVolume', {
          ...createReq('from-nothing'),
          volumeContentSource: { volume: { volumeId } },
        }),
      ).toBe(status.NOT_FOUND);
    }
    expect(
      await c('CreateVolume', {
        ...createReq('from-empty'),
        volumeContentSource: { snapshot: { snapshotId: '' } },
      }),
    ).toBe(status.INVALID_ARGUMENT);
  });

  it('answers OUT_OF_RANGE and INVALID_ARGUMENT for capacity ranges it cannot honour', async () => {
    const req = (requiredBytes: number | string, limitBytes: number | string) => ({
      name: 'range',
      volumeCapabilities: [mountCap()],
      capacityRange: { requiredBytes, limitBytes },
    });
    expect(await c('CreateVolume', req(1.5 * M, 1.5 * M))).toBe(status.OUT_OF_RANGE);
    expect(await c('CreateVolume', req(4 * M, 2 * M))).toBe(status.INVALID_ARGUMENT);
    expect(await c('CreateVolume', req(-1, 0))).toBe(status.INVALID_ARGUMENT);
    // Above 2^53 no size is exact as a JavaScript number: refused, never rounded.
    expect(await c('CreateVolume', req('9007199254740993', 0))).toBe(status.OUT_OF_RANGE);
    expect(await c('CreateVolume', req('9223372036854775807', 0))).toBe(status.OUT_OF_RANGE);
    expect(await c('CreateVolume', req(M, '9007199254740993'))).toBe(status.OUT_OF_RANGE);
    // Smaller than the snapshot it restores.
    const src = await createVolume(h, createReq('range-src', 8 * M));
    const snap = await createSnapshot(h, 'range-snap', src.volumeId);
    expect(
      await c('CreateVolume', {
        ...req(4 * M, 4 * M),
        volumeContentSource: { snapshot: { snapshotId: snap.snapshotId } },
      }),
    ).toBe(status.OUT_OF_RANGE);
    expect(await listVolumeIds(h)).not.toContain('range');
  });

  it('answers RESOURCE_EXHAUSTED when the pool cannot hold the volume', async () => {
    expect(await c('CreateVolume', createReq('enormous', 2 ** 52))).toBe(status.RESOURCE_EXHAUSTED);
  });

  it('honours accessibility requirements', async () => {
    const here = { segments: { [TOPOLOGY_KEY]: NODE } };
    const there = { segments: { [TOPOLOGY_KEY]: 'node-2' } };
    expect(
      await c('CreateVolume', {
        ...createReq('topo-elsewhere', M),
        accessibilityRequirements: { requisite: [there], preferred: [there] },
      }),
    ).toBe(status.RESOURCE_EXHAUSTED);
    const v = await createVolume(h, {
      ...createReq('topo-here', M),
      accessibilityRequirements: { requisite: [there, here], preferred: [there, here] },
    });
    expect(v.accessibleTopology).toEqual([here]);
    // Preferred alone is a wish: this node is the only place the plugin can choose.
    const p = await createVolume(h, {
      ...createReq('topo-preferred', M),
      accessibilityRequirements: { preferred: [there] },
    });
    expect(p.accessibleTopology).toEqual([here]);
    // An existing volume cannot move to another node.
    expect(
      await c('CreateVolume', {
        ...createReq('topo-here', M),
        accessibilityRequirements: { requisite: [there] },
      }),
    ).toBe(status.ALREADY_EXISTS);
  });

  it('accepts 128-byte names and refuses hostile ones without touching anything outside the pool', async () => {
    const before = await fsp.readdir(h.root);
    const n128 = 'n'.repeat(120) + '-128-ok!';
    expect(Buffer.byteLength(n128)).toBe(128);
    const v = await createVolume(h, createReq(n128, M));
    expect(v.volumeId).toMatch(/^pv-[a-z2-7]{26}$/);
    expect((await createVolume(h, createReq(n128, M))).volumeId).toBe(v.volumeId);
    const s = await createSnapshot(h, 's'.repeat(128), v.volumeId);
    expect((await createSnapshot(h, 's'.repeat(128), v.volumeId)).snapshotId).toBe(s.snapshotId);

    const hostileNames = [
      'a\0b',
      '\u0007bell',
      'x'.repeat(129),
      'y'.repeat(10 * 1024),
      'é'.repeat(65),
    ];
    for (const name of hostileNames) {
      expect(await c('CreateVolume', createReq(name, M))).toBe(status.INVALID_ARGUMENT);
      expect(await c('CreateSnapshot', { name, sourceVolumeId: v.volumeId })).toBe(
        status.INVALID_ARGUMENT,
      );
    }
    const hostileIds = [
      '../../etc',
      '../../../../../../etc/passwd',
      '/etc',
      'pv-\0',
      'a/b',
      'i'.repeat(10 * 1024),
    ];
    for (const id of hostileIds) {
      expect(await c('DeleteVolume', { volumeId: id })).toBe(status.INVALID_ARGUMENT);
      expect(await c('ControllerGetVolume', { volumeId: id })).toBe(status.INVALID_ARGUMENT);
      expect(
        await c('ValidateVolumeCapabilities', { volumeId: id, volumeCapabilities: [mountCap()] }),
      ).toBe(status.INVALID_ARGUMENT);
      expect(await c('DeleteSnapshot', { snapshotId: id })).toBe(status.INVALID_ARGUMENT);
      expect(await c('GetSnapshot', { snapshotId: id })).toBe(status.INVALID_ARGUMENT);
      expect(await c('CreateSnapshot', { name: 'hostile-src', sourceVolumeId: id })).toBe(
        status.INVALID_ARGUMENT,
      );
      expect(
        await c('CreateVolume', {
          ...createReq('hostile-src', M),
          volumeContentSource: { volume: { volumeId: id } },
        }),
      ).toBe(status.INVALID_ARGUMENT);
      expect(
        await c('CreateVolume', {
          ...createReq('hostile-src', M),
          volumeContentSource: { snapshot: { snapshotId: id } },
        }),
      ).toBe(status.INVALID_ARGUMENT);
      expect(await c('ListSnapshots', { snapshotId: id })).toBe(status.INVALID_ARGUMENT);
    }
    // Path-like names are legal CSI names: they are hashed, never used as paths.
    const dots = await createVolume(h, createReq('../../etc', M));
    expect(dots.volumeId).toMatch(/^pv-[a-z2-7]{26}$/);
    const dotSnap = await createSnapshot(h, '../../../snapshots/x', dots.volumeId);
    expect(dotSnap.snapshotId).toMatch(/^snap-[a-z2-7]{26}$/);

    expect(await fsp.readdir(h.root)).toEqual(before);
    expect((await fsp.readdir(h.poolDir)).sort()).toEqual([
      '.staging',
      '.trash',
      'snapshots',
      'volumes',
    ]);
    for (const id of await fsp.readdir(path.join(h.poolDir, 'volumes'))) {
      expect(id).toMatch(/^pv-[a-z2-7]{26}$/);
    }
    for (const id of await fsp.readdir(path.join(h.poolDir, 'snapshots'))) {
      expect(id).toMatch(/^snap-[a-z2-7]{26}$/);
    }
    expect(await fsp.readdir(path.join(h.poolDir, '.staging'))).toEqual([]);
  });
});

describe('DeleteVolume', () => {
  it('needs an id and is OK for unknown ones', async () => {
    expect(await c('DeleteVolume', {})).toBe(status.INVALID_ARGUMENT);
    expect(await c('DeleteVolume', { volumeId: UNKNOWN_VOLUME })).toBe(status.OK);
    expect(await c('DeleteVolume', { volumeId: 'fake-vol-id' })).toBe(status.OK);
  });

  it('keeps snapshots usable after their volume is deleted', async () => {
    const v = await createVolume(h, createReq('del-src', 4 * M));
    const s = await createSnapshot(h, 'del-snap', v.volumeId);
    expect(await c('DeleteVolume', { volumeId: v.volumeId })).toBe(status.OK);
    expect(await listSnapshotIds(h, { sourceVolumeId: v.volumeId })).toEqual([s.snapshotId]);
    const r = await createVolume(h, {
      ...createReq('del-restore', 4 * M),
      volumeContentSource: { snapshot: { snapshotId: s.snapshotId } },
    });
    expect(r.capacityBytes).toBe(String(4 * M));
  });
});

describe('ControllerGetVolume and ValidateVolumeCapabilities', () => {
  let v: VolumeOut;
  beforeAll(async () => {
    v = await createVolume(h, createReq('validate', 4 * M));
  });

  it('gets a volume with its condition, NOT_FOUND for unknown ones', async () => {
    const r = await h.call<{
      volume: VolumeOut;
      status: { volumeCondition: { abnormal: boolean; message: string } };
    }>('Controller', 'ControllerGetVolume', { volumeId: v.volumeId });
    expect(r.volume.volumeId).toBe(v.volumeId);
    expect(r.status.volumeCondition.abnormal).toBe(false);
    expect(r.status.volumeCondition.message).not.toBe('');
    expect(await c('ControllerGetVolume', {})).toBe(status.INVALID_ARGUMENT);
    expect(await c('ControllerGetVolume', { volumeId: UNKNOWN_VOLUME })).toBe(status.NOT_FOUND);
  });

  it('reports an abnormal condition when a delta is missing', async () => {
    const broken = await createVolume(h, createReq('broken', M));
    await fsp.rm(path.join(h.poolDir, 'volumes', broken.volumeId, 'root.hds'));
    const r = await h.call<{ status: { volumeCondition: { abnormal: boolean; message: string } } }>(
      'Controller',
      'ControllerGetVolume',
      { volumeId: broken.volumeId },
    );
    expect(r.status.volumeCondition).toMatchObject({ abnormal: true });
    expect(r.status.volumeCondition.message).toMatch(/root\.hds/);
  });

  it('confirms supported capabilities and only those', async () => {
    const ok = await h.call<{
      confirmed: { volumeCapabilities: object[]; volumeContext: object } | null;
    }>('Controller', 'ValidateVolumeCapabilities', {
      volumeId: v.volumeId,
      volumeCapabilities: [mountCap(), blockCap('SINGLE_NODE_READER_ONLY')],
    });
    expect(ok.confirmed?.volumeCapabilities).toHaveLength(2);
    expect(ok.confirmed?.volumeContext).toEqual({ fsType: 'ext4' });
    for (const req of [
      { volumeCapabilities: [mountCap('MULTI_NODE_MULTI_WRITER')] },
      { volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')] },
      { volumeCapabilities: [mountCap()], volumeContext: { fsType: 'xfs' } },
      { volumeCapabilities: [mountCap()], parameters: { clusterSize: '64K' } },
    ]) {
      const r = await h.call<{ confirmed: object | null; message: string }>(
        'Controller',
        'ValidateVolumeCapabilities',
        { volumeId: v.volumeId, ...req },
      );
      expect(r.confirmed).toBeNull();
      expect(r.message).not.toBe('');
    }
  });

  it('needs an id and capabilities; NOT_FOUND for unknown volumes', async () => {
    expect(await c('ValidateVolumeCapabilities', { volumeCapabilities: [mountCap()] })).toBe(
      status.INVALID_ARGUMENT,
    );
    expect(await c('ValidateVolumeCapabilities', { volumeId: v.volumeId })).toBe(
      status.INVALID_ARGUMENT,
    );
    expect(
      await c('ValidateVolumeCapabilities', {
        volumeId: 'fake-vol-id-01234',
        volumeCapabilities: [mountCap()],
      }),
    ).toBe(status.NOT_FOUND);
  });
});

describe('ListVolumes and ListSnapshots', () => {
  let ids: string[];
  let snaps: string[];
  beforeAll(async () => {
    ids = [];
    snaps = [];
    for (let i = 0; i < 5; i++) {
      const v = await createVolume(h, createReq(`page-${i}`, M));
      ids.push(v.volumeId);
      snaps.push((await createSnapshot(h, `page-snap-${i}`, v.volumeId)).snapshotId);
    }
  });

  it('pages volumes with max_entries and next_token', async () => {
    const all = await listVolumeIds(h);
    expect(all.length).toBeGreaterThanOrEqual(5);
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const r = await h.call<{
        entries: { volume: VolumeOut; status: { volumeCondition: object } }[];
        nextToken: string;
      }>('Controller', 'ListVolumes', { maxEntries: 2, startingToken: token });
      expect(r.entries.length).toBeLessThanOrEqual(2);
      for (const e of r.entries)
        expect(e.status.volumeCondition).toMatchObject({ abnormal: expect.any(Boolean) });
      seen.push(...r.entries.map((e) => e.volume.volumeId));
      token = r.nextToken;
      pages++;
    } while (token);
    expect(pages).toBe(Math.ceil(all.length / 2));
    expect(seen).toEqual(all);
    expect(new Set(seen).size).toBe(seen.length);
  });

  it('pages snapshots, the rest in one call without max_entries', async () => {
    const total = (await listSnapshotIds(h)).length;
    const first = await h.call<{ entries: { snapshot: SnapshotOut }[]; nextToken: string }>(
      'Controller',
      'ListSnapshots',
      { maxEntries: 2 },
    );
    expect(first.entries).toHaveLength(2);
    expect(first.nextToken).not.toBe('');
    const rest = await h.call<{ entries: { snapshot: SnapshotOut }[]; nextToken: string }>(
      'Controller',
      'ListSnapshots',
      { startingToken: first.nextToken },
    );
    expect(rest.entries).toHaveLength(total - 2);
    expect(rest.nextToken).toBe('');
  });

  it('filters snapshots by id and by source volume; unknown filters give empty lists', async () => {
    expect(await listSnapshotIds(h, { snapshotId: snaps[2] })).toEqual([snaps[2]]);
    expect(await listSnapshotIds(h, { sourceVolumeId: ids[3] })).toEqual([snaps[3]]);
    expect(await listSnapshotIds(h, { snapshotId: snaps[2], sourceVolumeId: ids[3] })).toEqual([]);
    expect(await listSnapshotIds(h, { snapshotId: UNKNOWN_SNAPSHOT })).toEqual([]);
    expect(await listSnapshotIds(h, { snapshotId: 'reallyfakesnapshotid' })).toEqual([]);
    expect(await listSnapshotIds(h, { sourceVolumeId: 'fake-vol-id-0123456789' })).toEqual([]);
  });

  it('answers ABORTED for a starting token it did not issue', async () => {
    expect(await c('ListVolumes', { startingToken: 'invalid-token' })).toBe(status.ABORTED);
    expect(await c('ListSnapshots', { startingToken: 'invalid-token' })).toBe(status.ABORTED);
    expect(await c('ListVolumes', { startingToken: UNKNOWN_SNAPSHOT })).toBe(status.ABORTED);
    expect(await c('ListVolumes', { maxEntries: -1 })).toBe(status.INVALID_ARGUMENT);
  });
});

describe('snapshots', () => {
  let v: VolumeOut;
  beforeAll(async () => {
    v = await createVolume(h, createReq('snap-src', 4 * M));
  });

  it('CreateSnapshot: required fields, idempotency, ALREADY_EXISTS, NOT_FOUND', async () => {
    expect(await c('CreateSnapshot', { sourceVolumeId: 'testId' })).toBe(status.INVALID_ARGUMENT);
    expect(await c('CreateSnapshot', { name: 'name' })).toBe(status.INVALID_ARGUMENT);
    const s = await createSnapshot(h, 'snap-1', v.volumeId);
    expect(await createSnapshot(h, 'snap-1', v.volumeId)).toEqual(s);
    const other = await createVolume(h, createReq('snap-other', 4 * M));
    expect(await c('CreateSnapshot', { name: 'snap-1', sourceVolumeId: other.volumeId })).toBe(
      status.ALREADY_EXISTS,
    );
    expect(await c('CreateSnapshot', { name: 'snap-2', sourceVolumeId: UNKNOWN_VOLUME })).toBe(
      status.NOT_FOUND,
    );
    expect(
      await c('CreateSnapshot', {
        name: 'snap-3',
        sourceVolumeId: v.volumeId,
        parameters: { x: 'y' },
      }),
    ).toBe(status.INVALID_ARGUMENT);
    expect(
      await c('CreateSnapshot', {
        name: 'snap-4',
        sourceVolumeId: v.volumeId,
        parameters: { 'csi.storage.k8s.io/volumesnapshot/name': 'x' },
      }),
    ).toBe(status.OK);
  });

  it('GetSnapshot and DeleteSnapshot', async () => {
    const s = await createSnapshot(h, 'snap-get', v.volumeId);
    const got = await h.call<{ snapshot: SnapshotOut }>('Controller', 'GetSnapshot', {
      snapshotId: s.snapshotId,
    });
    expect(got.snapshot).toEqual(s);
    expect(await c('GetSnapshot', {})).toBe(status.INVALID_ARGUMENT);
    expect(await c('GetSnapshot', { snapshotId: UNKNOWN_SNAPSHOT })).toBe(status.NOT_FOUND);
    expect(await c('DeleteSnapshot', {})).toBe(status.INVALID_ARGUMENT);
    expect(await c('DeleteSnapshot', { snapshotId: 'reallyfakesnapshotid' })).toBe(status.OK);
    expect(await c('DeleteSnapshot', { snapshotId: s.snapshotId })).toBe(status.OK);
    expect(await c('DeleteSnapshot', { snapshotId: s.snapshotId })).toBe(status.OK);
    expect(await c('GetSnapshot', { snapshotId: s.snapshotId })).toBe(status.NOT_FOUND);
  });
});

describe('GetCapacity', () => {
  it('reports the pool, zero for another node or unsupported capabilities', async () => {
    type Cap = { availableCapacity: string; maximumVolumeSize: { value: string } | null };
    const all = await h.call<Cap>('Controller', 'GetCapacity');
    expect(Number(all.availableCapacity)).toBeGreaterThan(0);
    expect(all.maximumVolumeSize?.value).toBe(all.availableCapacity);
    const here = await h.call<Cap>('Controller', 'GetCapacity', {
      accessibleTopology: { segments: { [TOPOLOGY_KEY]: NODE } },
      volumeCapabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')],
      parameters: { clusterSize: '1M' },
    });
    expect(Number(here.availableCapacity)).toBeGreaterThan(0);
    const there = await h.call<Cap>('Controller', 'GetCapacity', {
      accessibleTopology: { segments: { [TOPOLOGY_KEY]: 'node-2' } },
    });
    expect(there.availableCapacity).toBe('0');
    const multi = await h.call<Cap>('Controller', 'GetCapacity', {
      volumeCapabilities: [mountCap('MULTI_NODE_MULTI_WRITER')],
    });
    expect(multi.availableCapacity).toBe('0');
    expect(await c('GetCapacity', { parameters: { colour: 'red' } })).toBe(status.INVALID_ARGUMENT);
  });

  it('shrinks as volumes are provisioned', async () => {
    // Free space of the shared file system also moves with other tests' files (amplified by the
    // harness's over-provisioning ratio): a few attempts, one of which must see the drop.
    const available = async () =>
      Number(
        (await h.call<{ availableCapacity: string }>('Controller', 'GetCapacity'))
          .availableCapacity,
      );
    let seen = false;
    for (let attempt = 0; attempt < 3 && !seen; attempt++) {
      const before = await available();
      await createVolume(h, createReq(`capacity-eater-${attempt}`, 64 * M));
      seen = (await available()) <= before - 64 * M;
    }
    expect(seen).toBe(true);
  });
});
