import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ioScheduler,
  setIoScheduler,
  validSchedulerName,
} from '../../src/blockdev/io-scheduler.js';

// A directory laid out like /sys/block: the kernel's file is replaced by a plain one, so only
// the path and the parsing are under test here; the VM suite checks the real disk.
describe('I/O scheduler of a ublk disk', () => {
  let sysfs: string;
  beforeEach(async () => {
    sysfs = await fsp.mkdtemp(path.join(os.tmpdir(), 'sched-'));
    await fsp.mkdir(path.join(sysfs, 'ublkb3', 'queue'), { recursive: true });
    await fsp.writeFile(path.join(sysfs, 'ublkb3', 'queue', 'scheduler'), 'none [mq-deadline]\n');
  });
  afterEach(() => fsp.rm(sysfs, { recursive: true, force: true }));

  it('reads the bracketed entry and writes the sysfs file of the disk', async () => {
    expect(await ioScheduler('/dev/ublkb3', sysfs)).toBe('mq-deadline');
    const file = await setIoScheduler('/dev/ublkb3', 'none', sysfs);
    expect(file).toBe(path.join(sysfs, 'ublkb3', 'queue', 'scheduler'));
    expect(await fsp.readFile(file, 'utf8')).toBe('none');
  });

  it('refuses names that are not scheduler names', async () => {
    for (const bad of ['', '../../x', 'none\nmq-deadline', 'a b', 'x'.repeat(33)]) {
      expect(validSchedulerName(bad)).toBe(false);
      await expect(setIoScheduler('/dev/ublkb3', bad, sysfs)).rejects.toThrow(RangeError);
    }
    expect(await ioScheduler('/dev/ublkb3', sysfs)).toBe('mq-deadline');
    for (const good of ['none', 'mq-deadline', 'bfq', 'kyber'])
      expect(validSchedulerName(good)).toBe(true);
  });

  it('fails on a disk that does not exist', async () => {
    await expect(setIoScheduler('/dev/ublkb9', 'none', sysfs)).rejects.toThrow(/ENOENT/);
  });
});
