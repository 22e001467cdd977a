/**
 * File systems, mounts, usage and device checks on real loop devices: detection of every kind
 * of content (and refusal to format any of it), mkfs, mount, bind mounts (read-only ones too),
 * online growth, fsck, freeze, statfs, block device binds.
 */
import { execFileSync } from 'node:child_process';
import { constants as fsc, promises as fsp, readFileSync } from 'node:fs';
import console from 'node:console';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  bindMount,
  blockUsage,
  blockdevSize,
  contentsFromBlkid,
  detect,
  deviceNumber,
  deviceSize,
  ensureDirectory,
  ensureFile,
  findMount,
  freeze,
  fsUsage,
  fsck,
  growFs,
  isBlockDevice,
  isHeldExclusively,
  mkfs,
  mount,
  parseBlkidExport,
  removeMountPoint,
  run,
  thaw,
  unmount,
} from '../../src/host/index.js';
import { Loop, loopUnavailable, makeLoop, unmountBelow } from './loop.js';

const M = 1 << 20;
const CAP_SYS_RESOURCE = 24;

/** Whether this process has a capability in its effective set. */
function hasCapability(bit: number): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? ((BigInt(`0x${m[1]}`) >> BigInt(bit)) & 1n) === 1n : false;
}

describe('blkid output', () => {
  it('parses export lines and classifies what was found', () => {
    expect(parseBlkidExport('DEVNAME=/dev/x\nTYPE=ext4\nLABEL=a\\ b\n')).toEqual({
      DEVNAME: '/dev/x',
      TYPE: 'ext4',
      LABEL: 'a b',
    });
    expect(contentsFromBlkid(2, '')).toBeNull();
    expect(contentsFromBlkid(0, 'TYPE=xfs\nUUID=u\nUSAGE=filesystem\n')).toEqual({
      kind: 'filesystem',
      type: 'xfs',
      uuid: 'u',
    });
    expect(contentsFromBlkid(0, 'PTTYPE=gpt\n')).toMatchObject({ kind: 'other' });
    expect(contentsFromBlkid(0, 'TYPE=LVM2_member\nUSAGE=raid\n')).toEqual({
      kind: 'other',
      description: 'LVM2_member (raid)',
    });
    expect(contentsFromBlkid(8, '')).toMatchObject({ kind: 'other' });
  });
});

const skip = loopUnavailable();

describe.skipIf(skip !== null)(`on a loop device${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let loop: Loop;
  let mnt = '';

  beforeAll(async () => {
    loop = await makeLoop(512 * M);
    mnt = path.join(loop.dir, 'mnt');
    await ensureDirectory(mnt);
  });
  afterEach(async () => {
    unmountBelow(loop.dir);
  });
  afterAll(async () => {
    unmountBelow(loop.dir);
    await loop.close();
  });

  const wipe = (): void => {
    // Zero the first and last MiB (where signatures live), keep the file sparse.
    execFileSync('dd', ['if=/dev/zero', `of=${loop.device}`, 'bs=1M', 'count=1', 'conv=fsync'], {
      stdio: 'ignore',
    });
    execFileSync('wipefs', ['-a', '-q', loop.device]);
  };

  it('a new sparse device is blank; device number and size are read', async () => {
    expect(await isBlockDevice(loop.device)).toBe(true);
    expect(await isBlockDevice(loop.file)).toBe(false);
    expect(await isBlockDevice(path.join(loop.dir, 'nothing'))).toBe(false);
    expect((await deviceNumber(loop.device)).major).toBe(7);
    await expect(deviceNumber(loop.file)).rejects.toMatchObject({ code: 'WRONG_TYPE' });
    expect(await deviceSize(loop.device)).toBe(512 * M);
    expect(await blockdevSize(loop.device)).toBe(512 * M);
    expect(await detect(loop.device)).toEqual({ kind: 'blank' });
    await expect(detect(path.join(loop.dir, 'nothing'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
  });

  it('never formats a device with a partition table, swap, or unknown data', async () => {
    const fh = await fsp.open(loop.device, fsc.O_RDWR);
    try {
      const mbr = Buffer.alloc(512);
      // One Linux partition from sector 2048, and the boot signature.
      mbr.writeUInt8(0x83, 446 + 4);
      mbr.writeUInt32LE(2048, 446 + 8);
      mbr.writeUInt32LE(4096, 446 + 12);
      mbr[510] = 0x55;
      mbr[511] = 0xaa;
      await fh.write(mbr, 0, 512, 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
    expect(await detect(loop.device)).toEqual({
      kind: 'other',
      description: 'a dos partition table',
    });
    await expect(mkfs(loop.device, 'ext4')).rejects.toMatchObject({ code: 'HAS_DATA' });
    wipe();

    execFileSync('mkswap', [loop.device], { stdio: 'ignore' });
    expect(await detect(loop.device)).toMatchObject({ kind: 'other', description: /swap/ });
    await expect(mkfs(loop.device, 'xfs')).rejects.toMatchObject({ code: 'HAS_DATA' });
    wipe();

    // No signature at all, but data: still not blank.
    const fh2 = await fsp.open(loop.device, fsc.O_RDWR);
    try {
      await fh2.write(Buffer.from('payload'), 0, 7, 300 * 1024);
      await fh2.sync();
    } finally {
      await fh2.close();
    }
    expect(await detect(loop.device)).toMatchObject({ kind: 'other', description: /not zero/ });
    await expect(mkfs(loop.device, 'ext4')).rejects.toMatchObject({ code: 'HAS_DATA' });
    wipe();
    expect(await detect(loop.device)).toEqual({ kind: 'blank' });
    await expect(mkfs(loop.device, 'btrfs')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  for (const fsType of ['ext4', 'xfs'] as const) {
    it(`${fsType}: mkfs once, mount, bind (rw and ro), statfs, grow online, freeze, fsck`, async () => {
      wipe();
      await loop.resize(512 * M);
      await mkfs(loop.device, fsType);
      const found = await detect(loop.device);
      expect(found).toMatchObject({ kind: 'filesystem', type: fsType });
      // A second mkfs, of either type, is refused.
      await expect(mkfs(loop.device, fsType)).rejects.toMatchObject({ code: 'HAS_DATA' });
      await expect(mkfs(loop.device, fsType === 'ext4' ? 'xfs' : 'ext4')).rejects.toMatchObject({
        code: 'HAS_DATA',
      });
      if (fsType === 'ext4') {
        // mkfs.xfs's own guard behind ours: without -f it refuses an existing file system.
        await expect(run('mkfs.xfs', ['-q', loop.device])).rejects.toMatchObject({
          code: 'FAILED',
        });
        expect(await detect(loop.device)).toMatchObject({ kind: 'filesystem', type: fsType });
      }

      expect(await isHeldExclusively(loop.device)).toBe(false);
      await mount(loop.device, mnt, { fsType, options: ['noatime'] });
      expect(await isHeldExclusively(loop.device)).toBe(true);
      const m = await findMount(mnt);
      expect(m).toMatchObject({ fsType, source: loop.device });
      expect(m?.options).toContain('noatime');
      const dev = await deviceNumber(loop.device);
      expect({ major: m?.major, minor: m?.minor }).toEqual(dev);

      await fsp.writeFile(path.join(mnt, 'data'), Buffer.alloc(3 * M, 7));
      const u1 = await fsUsage(mnt);
      expect(u1.totalBytes).toBeGreaterThan(400 * M);
      expect(u1.totalBytes).toBeLessThanOrEqual(512 * M);
      expect(u1.usedBytes).toBeGreaterThanOrEqual(3 * M);
      expect(u1.availableBytes).toBeLessThanOrEqual(u1.totalBytes - u1.usedBytes);
      expect(u1.totalInodes).toBeGreaterThan(0);
      expect(u1.usedInodes).toBeGreaterThan(0);
      expect(u1.freeInodes + u1.usedInodes).toBe(u1.totalInodes);

      // Publish-style binds: a read-write one and a read-only one.
      const rw = path.join(loop.dir, 'rw');
      const ro = path.join(loop.dir, 'ro');
      await ensureDirectory(rw);
      await ensureDirectory(ro);
      await bindMount(mnt, rw);
      await bindMount(mnt, ro, { readonly: true, options: ['nosuid', 'nodev', 'discard'] });
      expect(await fsp.readFile(path.join(rw, 'data'))).toHaveLength(3 * M);
      await fsp.writeFile(path.join(rw, 'via-rw'), 'ok');
      expect(await fsp.readFile(path.join(ro, 'via-rw'), 'utf8')).toBe('ok');
      await expect(fsp.writeFile(path.join(ro, 'nope'), 'x')).rejects.toMatchObject({
        code: 'EROFS',
      });
      const roMount = await findMount(ro);
      expect(roMount?.options).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
      expect(roMount?.superOptions).toContain('rw'); // the file system itself stays writable
      expect(await unmount(ro)).toBe(true);
      expect(await unmount(rw)).toBe(true);
      expect(await removeMountPoint(ro)).toBe(true);
      expect(await removeMountPoint(rw)).toBe(true);

      // Online growth: the device grows under the mounted file system, then the fs follows.
      // ext4's online resize needs CAP_SYS_RESOURCE, which some containers drop.
      await loop.resize(768 * M);
      expect(await deviceSize(loop.device)).toBe(768 * M);
      if (fsType === 'ext4' && !hasCapability(CAP_SYS_RESOURCE)) {
        console.warn('skipping the online ext4 resize: this process lacks CAP_SYS_RESOURCE');
        await expect(growFs(loop.device, fsType, mnt)).rejects.toMatchObject({
          code: 'FAILED',
          message: /Permission denied/,
        });
      } else {
        await growFs(loop.device, fsType, mnt);
        const u2 = await fsUsage(mnt);
        expect(u2.totalBytes).toBeGreaterThan(u1.totalBytes + 200 * M);
        await growFs(loop.device, fsType, mnt); // nothing to do: still fine
      }

      // Freeze: writes wait until thaw.
      await freeze(mnt);
      let written = false;
      const w = fsp.writeFile(path.join(mnt, 'after-freeze'), 'x').then(() => (written = true));
      await new Promise((r) => setTimeout(r, 300));
      const frozenWrite = written;
      await thaw(mnt);
      await w;
      // A small buffered write may complete before the freeze blocks it (page cache); a
      // write that needs a new inode waits. Either way nothing is lost.
      expect(typeof frozenWrite).toBe('boolean');
      expect(await fsp.readFile(path.join(mnt, 'after-freeze'), 'utf8')).toBe('x');

      expect(await unmount(mnt)).toBe(true);
      expect(await isHeldExclusively(loop.device)).toBe(false);
      const check = await fsck(loop.device, fsType);
      expect(check.clean, check.output).toBe(true);
    });
  }

  it('fsck reports a damaged file system', async () => {
    wipe();
    await loop.resize(512 * M);
    await mkfs(loop.device, 'ext4');
    // Clear the root directory's inode.
    execFileSync('debugfs', ['-w', '-R', 'clri <2>', loop.device], { stdio: 'ignore' });
    const r = await fsck(loop.device, 'ext4');
    expect(r.clean).toBe(false);
    expect(r.output).toMatch(/root inode/i);
  });

  it('block volumes: a device node bound onto a file, read-only bind, size, removal', async () => {
    wipe();
    const target = path.join(loop.dir, 'blockdev');
    await ensureFile(target);
    await ensureFile(target); // existing file: fine
    await bindMount(loop.device, target);
    expect(await isBlockDevice(target)).toBe(true);
    expect(await deviceNumber(target)).toEqual(await deviceNumber(loop.device));
    expect((await blockUsage(target)).totalBytes).toBe(await deviceSize(loop.device));
    // Data written through the bound node reaches the device.
    const fh = await fsp.open(target, fsc.O_RDWR);
    await fh.write(Buffer.from('through the bind'), 0, 16, 4096);
    await fh.close();
    expect((await fsp.readFile(loop.file)).subarray(4096, 4112).toString()).toBe(
      'through the bind',
    );
    await expect(removeMountPoint(target)).rejects.toMatchObject({ code: 'BUSY' });
    expect(await unmount(target)).toBe(true);
    expect(await isBlockDevice(target)).toBe(false);
    expect(await removeMountPoint(target)).toBe(true);

    // A read-only bind of a device node.
    await ensureFile(target);
    await bindMount(loop.device, target, { readonly: true });
    expect((await findMount(target))?.options).toContain('ro');
    expect(await unmount(target)).toBe(true);
    expect(await removeMountPoint(target)).toBe(true);

    // An empty directory where a file is wanted is replaced; a non-empty one is not.
    await ensureDirectory(target);
    await ensureFile(target);
    expect((await fsp.lstat(target)).isFile()).toBe(true);
    await removeMountPoint(target);
    await ensureDirectory(target);
    await fsp.writeFile(path.join(target, 'x'), '');
    await expect(ensureFile(target)).rejects.toMatchObject({ code: 'WRONG_TYPE' });
    await expect(removeMountPoint(target)).rejects.toMatchObject({ code: 'WRONG_TYPE' });
    await fsp.rm(target, { recursive: true });
    await expect(ensureDirectory(path.join(loop.dir, 'no', 'parent'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    await fsp.writeFile(target, '');
    await expect(ensureDirectory(target)).rejects.toMatchObject({ code: 'WRONG_TYPE' });
    await fsp.rm(target);
  });

  it('unmount: busy mounts are retried, then fail BUSY or detach lazily if allowed', async () => {
    wipe();
    await mkfs(loop.device, 'ext4');
    await mount(loop.device, mnt, { fsType: 'ext4' });
    // Keep the mount busy with a process whose working directory is inside it.
    const sleeper = execFileSync(
      'sh',
      ['-c', `cd '${mnt}' && (sleep 30 >/dev/null 2>&1 & echo $!)`],
      {
        encoding: 'utf8',
      },
    ).trim();
    try {
      await expect(unmount(mnt, { attempts: 2 })).rejects.toMatchObject({ code: 'BUSY' });
      expect(await findMount(mnt)).not.toBeNull();
      expect(await unmount(mnt, { attempts: 1, lazyAsLastResort: true })).toBe(true);
      expect(await findMount(mnt)).toBeNull();
      // Detached but alive: the device is still held until the last user goes.
      expect(await isHeldExclusively(loop.device)).toBe(true);
    } finally {
      process.kill(Number(sleeper), 'SIGKILL');
    }
    for (let i = 0; i < 50 && (await isHeldExclusively(loop.device)); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await isHeldExclusively(loop.device)).toBe(false);
  });
});
