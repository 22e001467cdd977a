/**
 * The Node service over a real gRPC unix socket, with real mkfs, mounts, binds, statfs and file
 * system growth, on a host without ublk: a fake blockd serves every volume from a loop device
 * (fake-blockd.ts). The same lifecycle runs against the real blockd and ublk in the test VM
 * (test/vm/csi-node.sh).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsc, promises as fsp, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findMount, fsck, isBlockDevice } from '../../src/host/index.js';
import {
  Harness,
  M,
  NODE,
  TOPOLOGY_KEY,
  VolumeOut,
  createReq,
  createSnapshot,
  createVolume,
  startHarness,
} from '../csi/harness.js';
import { FakeBlockd } from './fake-blockd.js';
import { loopUnavailable, unmountBelow } from './loop.js';

type Mode =
  | 'SINGLE_NODE_WRITER'
  | 'SINGLE_NODE_SINGLE_WRITER'
  | 'SINGLE_NODE_MULTI_WRITER'
  | 'SINGLE_NODE_READER_ONLY'
  | 'MULTI_NODE_MULTI_WRITER';

const mountCap = (fsType = '', mode: Mode = 'SINGLE_NODE_WRITER', mountFlags: string[] = []) => ({
  mount: { fsType, mountFlags },
  accessMode: { mode },
});
const blockCap = (mode: Mode = 'SINGLE_NODE_WRITER') => ({ block: {}, accessMode: { mode } });

interface Usage {
  unit: string;
  total: string;
  available: string;
  used: string;
}
interface Stats {
  usage: Usage[];
  volumeCondition: { abnormal: boolean; message: string };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** CAP_SYS_RESOURCE is needed for online ext4 resize; some containers drop it. */
function canResizeExt4Online(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? ((BigInt(`0x${m[1]}`) >> 24n) & 1n) === 1n : false;
}

const skip = loopUnavailable();

describe.skipIf(skip !== null)(
  `Node service with loop devices standing in for ublk${skip ? ` (skipped: ${skip})` : ''}`,
  () => {
    let h: Harness;
    let fake: FakeBlockd;
    let work = '';

    beforeAll(async () => {
      work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-csi-node-'));
      await fsp.mkdir(path.join(work, 'fake'));
      fake = new FakeBlockd(path.join(work, 'fake'));
      h = await startHarness({ blockd: fake });
    });

    afterAll(async () => {
      unmountBelow(work);
      await fake?.close();
      await h?.close();
      await fsp.rm(work, { recursive: true, force: true });
    });

    /** The fake's devices of one volume. */
    const devicesOf = async (volumeId: string) =>
      (await fake.list()).filter((d) => d.target.includes(`/${volumeId}/`));

    const node = <T = Record<string, unknown>>(method: string, req: object) =>
      h.call<T>('Node', method, req);
    const code = (method: string, req: object) => h.code('Node', method, req);

    /** A staging directory, created as the CO does. */
    const stagingDir = async (tag: string): Promise<string> => {
      const p = path.join(work, 'staging', tag);
      await fsp.mkdir(p, { recursive: true });
      return p;
    };
    /** A publish target whose parent exists (the CO's part); the plugin creates the target. */
    const targetPath = async (tag: string): Promise<string> => {
      const dir = path.join(work, 'pods', tag);
      await fsp.mkdir(dir, { recursive: true });
      return path.join(dir, 'mount');
    };

    it('advertises the node service, online expansion and this node', async () => {
      const caps = await h.call<{ capabilities: { volumeExpansion?: { type: string } }[] }>(
        'Identity',
        'GetPluginCapabilities',
      );
      expect(caps.capabilities.some((c) => c.volumeExpansion?.type === 'ONLINE')).toBe(true);
      const nc = await node<{ capabilities: { rpc: { type: string } }[] }>(
        'NodeGetCapabilities',
        {},
      );
      expect(nc.capabilities.map((c) => c.rpc.type).sort()).toEqual([
        'EXPAND_VOLUME',
        'GET_VOLUME_STATS',
        'SINGLE_NODE_MULTI_WRITER',
        'STAGE_UNSTAGE_VOLUME',
        'VOLUME_CONDITION',
      ]);
      expect(await node('NodeGetInfo', {})).toEqual({
        nodeId: NODE,
        maxVolumesPerNode: '0',
        accessibleTopology: { segments: { [TOPOLOGY_KEY]: NODE } },
      });
    });

    it('Probe: FAILED_PRECONDITION while blockd is unreachable or ublk unusable', async () => {
      expect(await h.call('Identity', 'Probe')).toEqual({ ready: { value: true } });
      fake.probeAnswer = { available: false, reason: 'ublk_drv is not loaded' };
      expect(await h.code('Identity', 'Probe')).toBe(status.FAILED_PRECONDITION);
      fake.probeAnswer = 'connect ENOENT';
      expect(await h.code('Identity', 'Probe')).toBe(status.FAILED_PRECONDITION);
      fake.probeAnswer = { available: true };
      expect(await h.code('Identity', 'Probe')).toBe(status.OK);
    });

    it('checks every request field; unknown volumes are NOT_FOUND', async () => {
      const v = await createVolume(h, createReq('node-validation', 16 * M));
      const staging = await stagingDir('validation');
      const target = await targetPath('validation');
      const IA = status.INVALID_ARGUMENT;
      const fake = 'fake-vol-id-0001';
      const cap = mountCap();

      expect(await code('NodeStageVolume', {})).toBe(IA);
      expect(
        await code('NodeStageVolume', { stagingTargetPath: staging, volumeCapability: cap }),
      ).toBe(IA);
      expect(await code('NodeStageVolume', { volumeId: v.volumeId, volumeCapability: cap })).toBe(
        IA,
      );
      expect(
        await code('NodeStageVolume', { volumeId: v.volumeId, stagingTargetPath: staging }),
      ).toBe(IA);
      expect(
        await code('NodeStageVolume', {
          volumeId: v.volumeId,
          stagingTargetPath: 'relative/path',
          volumeCapability: cap,
        }),
      ).toBe(IA);
      expect(
        await code('NodeStageVolume', {
          volumeId: v.volumeId,
          stagingTargetPath: staging,
          volumeCapability: { mount: {} },
        }),
      ).toBe(IA);
      expect(
        await code('NodeStageVolume', {
          volumeId: fake,
          stagingTargetPath: staging,
          volumeCapability: cap,
        }),
      ).toBe(status.NOT_FOUND);
      // Capabilities beyond the volume's: FAILED_PRECONDITION.
      for (const bad of [mountCap('', 'MULTI_NODE_MULTI_WRITER'), mountCap('btrfs')]) {
        expect(
          await code('NodeStageVolume', {
            volumeId: v.volumeId,
            stagingTargetPath: staging,
            volumeCapability: bad,
          }),
        ).toBe(status.FAILED_PRECONDITION);
      }

      const pub = {
        volumeId: v.volumeId,
        stagingTargetPath: staging,
        targetPath: target,
        volumeCapability: cap,
      };
      expect(await code('NodePublishVolume', { ...pub, volumeId: '' })).toBe(IA);
      expect(await code('NodePublishVolume', { ...pub, targetPath: '' })).toBe(IA);
      expect(await code('NodePublishVolume', { ...pub, volumeCapability: null })).toBe(IA);
      expect(await code('NodePublishVolume', { ...pub, stagingTargetPath: '' })).toBe(
        status.FAILED_PRECONDITION,
      );
      expect(await code('NodePublishVolume', { ...pub, volumeId: fake })).toBe(status.NOT_FOUND);
      // Not staged: FAILED_PRECONDITION, and nothing is left at the target.
      expect(await code('NodePublishVolume', pub)).toBe(status.FAILED_PRECONDITION);
      await expect(fsp.lstat(target)).rejects.toMatchObject({ code: 'ENOENT' });

      expect(await code('NodeUnpublishVolume', { targetPath: target })).toBe(IA);
      expect(await code('NodeUnpublishVolume', { volumeId: v.volumeId })).toBe(IA);
      expect(await code('NodeUnpublishVolume', { volumeId: fake, targetPath: target })).toBe(
        status.NOT_FOUND,
      );
      expect(await code('NodeUnpublishVolume', { volumeId: v.volumeId, targetPath: target })).toBe(
        status.OK,
      );

      expect(await code('NodeUnstageVolume', { stagingTargetPath: staging })).toBe(IA);
      expect(await code('NodeUnstageVolume', { volumeId: v.volumeId })).toBe(IA);
      expect(await code('NodeUnstageVolume', { volumeId: fake, stagingTargetPath: staging })).toBe(
        status.NOT_FOUND,
      );
      expect(
        await code('NodeUnstageVolume', { volumeId: v.volumeId, stagingTargetPath: staging }),
      ).toBe(status.OK);

      expect(await code('NodeGetVolumeStats', { volumePath: staging })).toBe(IA);
      expect(await code('NodeGetVolumeStats', { volumeId: v.volumeId })).toBe(IA);
      expect(await code('NodeGetVolumeStats', { volumeId: fake, volumePath: staging })).toBe(
        status.NOT_FOUND,
      );
      expect(await code('NodeGetVolumeStats', { volumeId: v.volumeId, volumePath: staging })).toBe(
        status.NOT_FOUND,
      );

      expect(await code('NodeExpandVolume', { volumePath: staging })).toBe(IA);
      expect(await code('NodeExpandVolume', { volumeId: v.volumeId })).toBe(IA);
      expect(await code('NodeExpandVolume', { volumeId: fake, volumePath: staging })).toBe(
        status.NOT_FOUND,
      );
      await h.call('Controller', 'DeleteVolume', { volumeId: v.volumeId });
    });

    /** Stage, publish, data, stats, expand, snapshot, restore, unpublish, unstage, delete. */
    const lifecycle = async (kind: 'ext4' | 'xfs' | 'block') => {
      const size = kind === 'xfs' ? 320 * M : 64 * M;
      const cap = kind === 'block' ? blockCap() : mountCap(kind);
      const v = await createVolume(
        h,
        createReq(`node-${kind}`, size, { volumeCapabilities: [cap] }),
      );
      const staging = await stagingDir(kind);
      const target = await targetPath(kind);
      const stageReq = {
        volumeId: v.volumeId,
        stagingTargetPath: staging,
        volumeCapability: cap,
        volumeContext: v.volumeContext,
      };
      const pubReq = { ...stageReq, targetPath: target, readonly: false };

      // Stage twice (idempotent), and incompatibly (ALREADY_EXISTS).
      await node('NodeStageVolume', stageReq);
      await node('NodeStageVolume', stageReq);
      const other = kind === 'block' ? mountCap('ext4') : blockCap();
      expect(await code('NodeStageVolume', { ...stageReq, volumeCapability: other })).toBe(
        status.ALREADY_EXISTS,
      );
      if (kind !== 'block') {
        expect(
          await code('NodeStageVolume', {
            ...stageReq,
            volumeCapability: mountCap(kind, 'SINGLE_NODE_WRITER', ['noexec']),
          }),
        ).toBe(status.ALREADY_EXISTS);
        const m = await findMount(staging);
        expect(m?.fsType).toBe(kind);
        if (kind === 'xfs') expect(m?.superOptions).toContain('nouuid');
      }

      // Publish twice; the same target with other arguments is ALREADY_EXISTS.
      await node('NodePublishVolume', pubReq);
      await node('NodePublishVolume', pubReq);
      expect(await code('NodePublishVolume', { ...pubReq, readonly: true })).toBe(
        status.ALREADY_EXISTS,
      );
      if (kind === 'block') expect(await isBlockDevice(target)).toBe(true);
      else expect((await fsp.stat(target)).isDirectory()).toBe(true);

      // A second target: fine for SINGLE_NODE_WRITER? No: only MULTI_WRITER shares a volume.
      const second = await targetPath(`${kind}-2`);
      expect(
        await code('NodePublishVolume', {
          ...pubReq,
          targetPath: second,
          volumeCapability:
            kind === 'block'
              ? blockCap('SINGLE_NODE_SINGLE_WRITER')
              : mountCap(kind, 'SINGLE_NODE_SINGLE_WRITER'),
        }),
      ).toBe(status.FAILED_PRECONDITION);
      await expect(fsp.lstat(second)).rejects.toMatchObject({ code: 'ENOENT' });

      // Data.
      const data = randomBytes(2 * M);
      if (kind === 'block') {
        const fh = await fsp.open(target, fsc.O_RDWR);
        await fh.write(data, 0, data.length, 8 * M);
        await fh.sync();
        await fh.close();
      } else {
        await fsp.writeFile(path.join(target, 'before-snapshot'), data);
      }

      // Stats at the target and at the staging path; elsewhere NOT_FOUND.
      const stats = await node<Stats>('NodeGetVolumeStats', {
        volumeId: v.volumeId,
        volumePath: target,
        stagingTargetPath: staging,
      });
      expect(stats.volumeCondition.abnormal).toBe(false);
      const bytes = stats.usage.find((u) => u.unit === 'BYTES')!;
      if (kind === 'block') {
        expect(stats.usage).toHaveLength(1);
        expect(Number(bytes.total)).toBe(size);
      } else {
        // xfs keeps a 64 MiB log out of the total.
        expect(Number(bytes.total)).toBeGreaterThan(size * 0.7);
        expect(Number(bytes.total)).toBeLessThanOrEqual(size);
        expect(Number(bytes.used)).toBeGreaterThanOrEqual(2 * M);
        const inodes = stats.usage.find((u) => u.unit === 'INODES')!;
        expect(Number(inodes.used)).toBeGreaterThan(0);
      }
      await node('NodeGetVolumeStats', { volumeId: v.volumeId, volumePath: staging });
      expect(
        await code('NodeGetVolumeStats', {
          volumeId: v.volumeId,
          volumePath: path.join(work, 'some/path'),
        }),
      ).toBe(status.NOT_FOUND);

      // The plugin restarts: nothing changes for the CO.
      await h.restart();
      await node('NodeStageVolume', stageReq);
      await node('NodePublishVolume', pubReq);

      // Abnormal condition when the device is not live, or blockd cannot be asked.
      fake.state = 'quiesced';
      let s2 = await node<Stats>('NodeGetVolumeStats', {
        volumeId: v.volumeId,
        volumePath: target,
      });
      expect(s2.volumeCondition).toMatchObject({ abnormal: true, message: /quiesced/ });
      fake.state = 'live';
      fake.down = true;
      s2 = await node<Stats>('NodeGetVolumeStats', { volumeId: v.volumeId, volumePath: target });
      expect(s2.volumeCondition).toMatchObject({ abnormal: true, message: /blockd/ });
      expect(await code('NodeStageVolume', stageReq)).toBe(status.UNAVAILABLE);
      fake.down = false;

      // Expand online (ext4 needs CAP_SYS_RESOURCE for that).
      const bigger = size + 64 * M;
      const expandReq = {
        volumeId: v.volumeId,
        volumePath: target,
        stagingTargetPath: staging,
        capacityRange: { requiredBytes: bigger },
        volumeCapability: cap,
      };
      if (kind !== 'ext4' || canResizeExt4Online()) {
        const r = await node<{ capacityBytes: string }>('NodeExpandVolume', expandReq);
        expect(Number(r.capacityBytes)).toBe(bigger);
        expect(await node('NodeExpandVolume', expandReq)).toEqual(r); // idempotent
        const s3 = await node<Stats>('NodeGetVolumeStats', {
          volumeId: v.volumeId,
          volumePath: target,
        });
        const total = Number(s3.usage.find((u) => u.unit === 'BYTES')!.total);
        if (kind === 'block') expect(total).toBe(bigger);
        else expect(total).toBeGreaterThan(Number(bytes.total) + 48 * M);
        const got = await h.call<{ volume: VolumeOut }>('Controller', 'ControllerGetVolume', {
          volumeId: v.volumeId,
        });
        expect(Number(got.volume.capacityBytes)).toBe(bigger);
        expect(
          await code('NodeExpandVolume', {
            ...expandReq,
            capacityRange: { requiredBytes: bigger + 1, limitBytes: bigger + 1 },
          }),
        ).toBe(status.OUT_OF_RANGE);
      }

      // Snapshot online (the fake counts it), then more data that the snapshot must not see.
      // A mounted file system is frozen while the snapshot is cut: freezing it again fails.
      let frozen: boolean | null = null;
      fake.onSnapshot = () => {
        if (kind === 'block') return;
        try {
          execFileSync('fsfreeze', ['--freeze', staging], { stdio: 'ignore' });
          execFileSync('fsfreeze', ['--unfreeze', staging], { stdio: 'ignore' });
          frozen = false;
        } catch {
          frozen = true;
        }
      };
      const before = fake.snapshots.length;
      const snap = await createSnapshot(h, `node-${kind}-snap`, v.volumeId);
      fake.onSnapshot = null;
      expect(fake.snapshots.length).toBe(before + 1);
      expect(frozen).toBe(kind === 'block' ? null : true);
      const later = randomBytes(M);
      if (kind === 'block') {
        const fh = await fsp.open(target, fsc.O_RDWR);
        await fh.write(later, 0, later.length, 8 * M);
        await fh.close();
      } else {
        await fsp.writeFile(path.join(target, 'after-snapshot'), later);
      }

      // Restore into a new volume, stage and publish it beside the source, check the data.
      const restored = await createVolume(
        h,
        createReq(`node-${kind}-restored`, size + 64 * M, {
          volumeCapabilities: [cap],
          volumeContentSource: { snapshot: { snapshotId: snap.snapshotId } },
        }),
      );
      const rStaging = await stagingDir(`${kind}-restored`);
      const rTarget = await targetPath(`${kind}-restored`);
      await node('NodeStageVolume', {
        ...stageReq,
        volumeId: restored.volumeId,
        stagingTargetPath: rStaging,
      });
      await node('NodePublishVolume', {
        ...pubReq,
        volumeId: restored.volumeId,
        stagingTargetPath: rStaging,
        targetPath: rTarget,
        readonly: true,
      });
      if (kind === 'block') {
        const fh = await fsp.open(rTarget, fsc.O_RDONLY);
        const back = Buffer.alloc(data.length);
        await fh.read(back, 0, back.length, 8 * M);
        await fh.close();
        expect(sha(back)).toBe(sha(data));
      } else {
        expect(sha(await fsp.readFile(path.join(rTarget, 'before-snapshot')))).toBe(sha(data));
        await expect(fsp.stat(path.join(rTarget, 'after-snapshot'))).rejects.toMatchObject({
          code: 'ENOENT',
        });
        await expect(fsp.writeFile(path.join(rTarget, 'x'), 'x')).rejects.toMatchObject({
          code: 'EROFS',
        });
        // The restored file system was grown to the larger volume at stage time.
        if (kind === 'xfs' || canResizeExt4Online()) {
          const rs = await node<Stats>('NodeGetVolumeStats', {
            volumeId: restored.volumeId,
            volumePath: rTarget,
          });
          expect(Number(rs.usage.find((u) => u.unit === 'BYTES')!.total)).toBeGreaterThan(
            Number(bytes.total) + 48 * M,
          );
        }
      }

      // Unstage refuses while a publication remains.
      expect(
        await code('NodeUnstageVolume', { volumeId: v.volumeId, stagingTargetPath: staging }),
      ).toBe(status.FAILED_PRECONDITION);
      // DeleteVolume refuses a volume in use on the node, and removes nothing.
      expect(await h.code('Controller', 'DeleteVolume', { volumeId: v.volumeId })).toBe(
        status.FAILED_PRECONDITION,
      );
      await fsp.access(path.join(h.poolDir, 'volumes', v.volumeId, 'DiskDescriptor.xml'));

      // Tear down: twice each, the targets disappear, the devices are detached.
      for (const [id, t, st] of [
        [v.volumeId, target, staging],
        [restored.volumeId, rTarget, rStaging],
      ] as const) {
        await node('NodeUnpublishVolume', { volumeId: id, targetPath: t });
        await node('NodeUnpublishVolume', { volumeId: id, targetPath: t });
        await expect(fsp.lstat(t)).rejects.toMatchObject({ code: 'ENOENT' });
        await node('NodeUnstageVolume', { volumeId: id, stagingTargetPath: st });
        await node('NodeUnstageVolume', { volumeId: id, stagingTargetPath: st });
        expect(await findMount(st)).toBeNull();
        expect((await fsp.stat(st)).isDirectory()).toBe(true); // the CO's directory stays
      }
      expect(await devicesOf(v.volumeId)).toEqual([]);
      expect(await devicesOf(restored.volumeId)).toEqual([]);

      // The file system survived intact (checked through a fresh attach).
      if (kind !== 'block') {
        const dev = await fake.attach(
          path.join(h.poolDir, 'volumes', v.volumeId, 'DiskDescriptor.xml'),
        );
        const check = await fsck(dev.blockPath, kind);
        await fake.detach(dev.blockPath);
        expect(check.clean, check.output).toBe(true);
      }

      await h.call('Controller', 'DeleteVolume', { volumeId: restored.volumeId });
      await h.call('Controller', 'DeleteSnapshot', { snapshotId: snap.snapshotId });
      await h.call('Controller', 'DeleteVolume', { volumeId: v.volumeId });
    };

    it('ext4: full lifecycle', () => lifecycle('ext4'));
    it('xfs: full lifecycle', () => lifecycle('xfs'));
    it('block: full lifecycle', () => lifecycle('block'));

    it('SINGLE_NODE_MULTI_WRITER publishes at several targets; read-only targets stay read-only', async () => {
      const cap = mountCap('ext4', 'SINGLE_NODE_MULTI_WRITER');
      const v = await createVolume(
        h,
        createReq('node-multi', 32 * M, { volumeCapabilities: [cap] }),
      );
      const staging = await stagingDir('multi');
      const base = { volumeId: v.volumeId, stagingTargetPath: staging, volumeCapability: cap };
      await node('NodeStageVolume', base);
      const t1 = await targetPath('multi-1');
      const t2 = await targetPath('multi-2');
      await node('NodePublishVolume', { ...base, targetPath: t1, readonly: false });
      await node('NodePublishVolume', { ...base, targetPath: t2, readonly: true });
      await fsp.writeFile(path.join(t1, 'shared'), 'hello');
      expect(await fsp.readFile(path.join(t2, 'shared'), 'utf8')).toBe('hello');
      await expect(fsp.writeFile(path.join(t2, 'no'), 'x')).rejects.toMatchObject({
        code: 'EROFS',
      });
      for (const t of [t1, t2])
        await node('NodeUnpublishVolume', { volumeId: v.volumeId, targetPath: t });
      await node('NodeUnstageVolume', { volumeId: v.volumeId, stagingTargetPath: staging });
      await h.call('Controller', 'DeleteVolume', { volumeId: v.volumeId });
    });

    it('never formats a volume holding data; a file system of another type is refused', async () => {
      const v = await createVolume(
        h,
        createReq('node-data', 32 * M, { volumeCapabilities: [blockCap()] }),
      );
      const staging = await stagingDir('data');
      const base = { volumeId: v.volumeId, stagingTargetPath: staging };
      // Used raw: some bytes without any known signature.
      await node('NodeStageVolume', { ...base, volumeCapability: blockCap() });
      const dev = (await devicesOf(v.volumeId))[0]!.blockPath;
      const payload = randomBytes(4096);
      const fh = await fsp.open(dev, fsc.O_RDWR);
      await fh.write(payload, 0, payload.length, 64 * 1024);
      await fh.close();
      await node('NodeUnstageVolume', { ...base });
      // Staged as a file system now: refused, the data untouched, nothing left attached.
      expect(await code('NodeStageVolume', { ...base, volumeCapability: mountCap('ext4') })).toBe(
        status.FAILED_PRECONDITION,
      );
      expect(await findMount(staging)).toBeNull();
      expect(await devicesOf(v.volumeId)).toEqual([]);
      await node('NodeStageVolume', { ...base, volumeCapability: blockCap() });
      const dev2 = (await devicesOf(v.volumeId))[0]!.blockPath;
      const back = Buffer.alloc(4096);
      const fh2 = await fsp.open(dev2, fsc.O_RDONLY);
      await fh2.read(back, 0, 4096, 64 * 1024);
      await fh2.close();
      expect(back.equals(payload)).toBe(true);
      await node('NodeUnstageVolume', { ...base });

      // An ext4 volume asked to be staged as xfs.
      const e = await createVolume(
        h,
        createReq('node-fs-mismatch', 32 * M, { volumeCapabilities: [mountCap('ext4')] }),
      );
      const eBase = { volumeId: e.volumeId, stagingTargetPath: await stagingDir('mismatch') };
      await node('NodeStageVolume', { ...eBase, volumeCapability: mountCap('ext4') });
      await node('NodeUnstageVolume', eBase);
      expect(await code('NodeStageVolume', { ...eBase, volumeCapability: mountCap('xfs') })).toBe(
        status.FAILED_PRECONDITION,
      );
      // No fs type anywhere: the existing file system is used.
      await node('NodeStageVolume', { ...eBase, volumeCapability: mountCap('') });
      expect((await findMount(eBase.stagingTargetPath))?.fsType).toBe('ext4');
      await node('NodeUnstageVolume', eBase);
      for (const id of [v.volumeId, e.volumeId])
        await h.call('Controller', 'DeleteVolume', { volumeId: id });
    });

    it('expansion on a kernel without online resize: FAILED_PRECONDITION, finished at the next stage', async () => {
      const cap = mountCap('xfs');
      const v = await createVolume(
        h,
        createReq('node-offline-grow', 320 * M, { volumeCapabilities: [cap] }),
      );
      const staging = await stagingDir('offline-grow');
      const base = { volumeId: v.volumeId, stagingTargetPath: staging };
      await node('NodeStageVolume', { ...base, volumeCapability: cap });
      const before = await node<Stats>('NodeGetVolumeStats', {
        volumeId: v.volumeId,
        volumePath: staging,
      });
      fake.noOnlineGrow = true;
      try {
        const err = await node('NodeExpandVolume', {
          volumeId: v.volumeId,
          volumePath: staging,
          capacityRange: { requiredBytes: 512 * M },
        }).catch((e: { code: number; details: string }) => e);
        expect(err).toMatchObject({
          code: status.FAILED_PRECONDITION,
          details: /6\.16.*staged again/,
        });
      } finally {
        fake.noOnlineGrow = false;
      }
      const got = await h.call<{ volume: VolumeOut }>('Controller', 'ControllerGetVolume', {
        volumeId: v.volumeId,
      });
      expect(Number(got.volume.capacityBytes)).toBe(512 * M);
      await node('NodeUnstageVolume', base);
      await node('NodeStageVolume', { ...base, volumeCapability: cap });
      const after = await node<Stats>('NodeGetVolumeStats', {
        volumeId: v.volumeId,
        volumePath: staging,
      });
      const total = (s: Stats) => Number(s.usage.find((u) => u.unit === 'BYTES')!.total);
      expect(total(after)).toBeGreaterThan(total(before) + 150 * M);
      // And the retried expansion is now a success.
      const r = await node<{ capacityBytes: string }>('NodeExpandVolume', {
        volumeId: v.volumeId,
        volumePath: staging,
        capacityRange: { requiredBytes: 512 * M },
      });
      expect(Number(r.capacityBytes)).toBe(512 * M);
      await node('NodeUnstageVolume', base);
      await h.call('Controller', 'DeleteVolume', { volumeId: v.volumeId });
    });

    it('DeleteVolume: FAILED_PRECONDITION while staged or attached, OK once released', async () => {
      const cap = mountCap('ext4');
      const v = await createVolume(
        h,
        createReq('node-busy', 32 * M, { volumeCapabilities: [cap] }),
      );
      const dd = path.join(h.poolDir, 'volumes', v.volumeId, 'DiskDescriptor.xml');
      const staging = await stagingDir('busy');
      const base = { volumeId: v.volumeId, stagingTargetPath: staging, volumeCapability: cap };
      const del = () => h.code('Controller', 'DeleteVolume', { volumeId: v.volumeId });
      await node('NodeStageVolume', base);
      expect(await del()).toBe(status.FAILED_PRECONDITION);
      await node('NodeUnstageVolume', { volumeId: v.volumeId, stagingTargetPath: staging });
      // Attached by someone else than the node service (an operator's `device attach`).
      const dev = await fake.attach(dd);
      expect(await del()).toBe(status.FAILED_PRECONDITION);
      await fsp.access(dd);
      await fake.detach(dev.blockPath);
      expect(await del()).toBe(status.OK);
      await expect(fsp.access(dd)).rejects.toMatchObject({ code: 'ENOENT' });
      expect(await del()).toBe(status.OK);
    });

    it('a volume deleted while staged can still be unpublished and unstaged', async () => {
      const cap = mountCap('ext4');
      const v = await createVolume(
        h,
        createReq('node-orphan', 32 * M, { volumeCapabilities: [cap] }),
      );
      const staging = await stagingDir('orphan');
      const target = await targetPath('orphan');
      const base = { volumeId: v.volumeId, stagingTargetPath: staging, volumeCapability: cap };
      await node('NodeStageVolume', base);
      await node('NodePublishVolume', { ...base, targetPath: target });
      // The pool directory goes away under the node (an operator, a controller bug).
      execFileSync('rm', ['-rf', path.join(h.poolDir, 'volumes', v.volumeId)]);
      await node('NodeUnpublishVolume', { volumeId: v.volumeId, targetPath: target });
      await node('NodeUnstageVolume', { volumeId: v.volumeId, stagingTargetPath: staging });
      expect(await findMount(staging)).toBeNull();
      expect(await devicesOf(v.volumeId)).toEqual([]);
      expect(
        await code('NodeUnstageVolume', { volumeId: v.volumeId, stagingTargetPath: staging }),
      ).toBe(status.NOT_FOUND);
    });
  },
);
