/** Concurrent requests: ABORTED for a second operation on the same object, parallel creates. */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offlineFreezer } from '../../src/pool/index.js';
import {
  Harness,
  M,
  createReq,
  createSnapshot,
  createVolume,
  listVolumeIds,
  startHarness,
} from './harness.js';

/** A freezer that waits for `open()` before doing its work, so a request stays in flight. */
function gate() {
  let release!: () => void;
  let entered!: () => void;
  let opened = new Promise<void>((r) => (release = r));
  let inside = new Promise<void>((r) => (entered = r));
  return {
    freezer: async (id: string, dd: string) => {
      entered();
      await opened;
      return offlineFreezer(id, dd);
    },
    /** Resolves once a request is held in the freezer. */
    held: () => inside,
    open: () => release(),
    reset() {
      opened = new Promise<void>((r) => (release = r));
      inside = new Promise<void>((r) => (entered = r));
    },
  };
}

const g = gate();
let h: Harness;

beforeAll(async () => {
  h = await startHarness({ freezer: g.freezer });
});

afterAll(async () => {
  g.open();
  await h.close();
});

const c = (method: string, req: object) => h.code('Controller', method, req);

describe('operations in flight', () => {
  it('a second operation on a volume being snapshotted is ABORTED', async () => {
    g.reset();
    const v = await createVolume(h, createReq('busy-src', 4 * M));
    const first = createSnapshot(h, 'busy-snap', v.volumeId);
    await g.held();
    expect(await c('DeleteVolume', { volumeId: v.volumeId })).toBe(status.ABORTED);
    expect(await c('CreateSnapshot', { name: 'busy-snap', sourceVolumeId: v.volumeId })).toBe(
      status.ABORTED,
    );
    expect(await c('CreateSnapshot', { name: 'other-snap', sourceVolumeId: v.volumeId })).toBe(
      status.ABORTED,
    );
    expect(
      await c('CreateVolume', {
        ...createReq('busy-clone', 4 * M),
        volumeContentSource: { volume: { volumeId: v.volumeId } },
      }),
    ).toBe(status.ABORTED);
    // Reads and unrelated work go on.
    expect(await c('ControllerGetVolume', { volumeId: v.volumeId })).toBe(status.OK);
    expect(await c('CreateVolume', createReq('unrelated', M))).toBe(status.OK);
    g.open();
    const s = await first;
    expect(s.readyToUse).toBe(true);
    // Once it is done, everything that was refused succeeds.
    expect((await createSnapshot(h, 'busy-snap', v.volumeId)).snapshotId).toBe(s.snapshotId);
    expect(await c('DeleteVolume', { volumeId: v.volumeId })).toBe(status.OK);
  });

  it('a second CreateVolume with the same name while the first is running is ABORTED', async () => {
    g.reset();
    const src = await createVolume(h, createReq('clone-src', 4 * M));
    const req = {
      ...createReq('same-name', 4 * M),
      volumeContentSource: { volume: { volumeId: src.volumeId } },
    };
    const first = createVolume(h, req);
    await g.held();
    expect(await c('CreateVolume', req)).toBe(status.ABORTED);
    expect(await c('CreateVolume', createReq('same-name', 4 * M))).toBe(status.ABORTED);
    g.open();
    const v = await first;
    expect((await createVolume(h, req)).volumeId).toBe(v.volumeId);
  });

  it('a snapshot being restored can be restored again at the same time', async () => {
    g.reset();
    g.open();
    const src = await createVolume(h, createReq('multi-src', 4 * M));
    const s = await createSnapshot(h, 'multi-snap', src.volumeId);
    const restores = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        createVolume(h, {
          ...createReq(`multi-restore-${i}`, 4 * M),
          volumeContentSource: { snapshot: { snapshotId: s.snapshotId } },
        }),
      ),
    );
    expect(new Set(restores.map((r) => r.volumeId)).size).toBe(4);
  });
});

describe('parallel provisioning', () => {
  it('100 parallel CreateVolume calls with distinct names all succeed with distinct ids', async () => {
    const before = new Set(await listVolumeIds(h));
    const names = Array.from({ length: 100 }, (_, i) => `parallel-${i}`);
    const vols = await Promise.all(names.map((n) => createVolume(h, createReq(n, M))));
    const ids = vols.map((v) => v.volumeId);
    expect(new Set(ids).size).toBe(100);
    for (const v of vols) expect(v.capacityBytes).toBe(String(M));
    const after = await listVolumeIds(h);
    expect(after.filter((id) => !before.has(id)).sort()).toEqual([...ids].sort());
    // And again: every one of them is found, none created twice.
    const again = await Promise.all(names.map((n) => createVolume(h, createReq(n, M))));
    expect(again.map((v) => v.volumeId)).toEqual(ids);
    expect((await listVolumeIds(h)).length).toBe(after.length);
  });
});
