/** Block devices: is a path one, which device number it has, its size, whether it is in use. */
import { constants as fsc, promises as fsp } from 'node:fs';
import { HostError } from './errors.js';
import { run } from './exec.js';

export interface DeviceNumber {
  major: number;
  minor: number;
}

/** Splits a Linux dev_t (glibc's encoding, as stat(2) returns it) into major and minor. */
export function splitDev(dev: bigint): DeviceNumber {
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  return { major, minor };
}

export const formatDev = (d: DeviceNumber): string => `${d.major}:${d.minor}`;

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

/** True when `p` is (or, through symlinks, leads to) a block device node. */
export async function isBlockDevice(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isBlockDevice();
  } catch (err) {
    if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return false;
    throw err;
  }
}

/** The device number of the block device node `p`; NOT_FOUND / WRONG_TYPE otherwise. */
export async function deviceNumber(p: string): Promise<DeviceNumber> {
  let st;
  try {
    st = await fsp.stat(p, { bigint: true });
  } catch (err) {
    if (errno(err) === 'ENOENT') throw new HostError('NOT_FOUND', `${p} does not exist`);
    throw err;
  }
  if (!st.isBlockDevice()) throw new HostError('WRONG_TYPE', `${p} is not a block device`);
  return splitDev(st.rdev);
}

/**
 * The size in bytes of the block device `p`: from sysfs (no process to start), or from
 * `blockdev --getsize64` where sysfs is not mounted.
 */
export async function deviceSize(p: string): Promise<number> {
  const n = await deviceNumber(p);
  try {
    const sectors = (await fsp.readFile(`/sys/dev/block/${formatDev(n)}/size`, 'utf8')).trim();
    if (/^\d+$/.test(sectors)) return Number(sectors) * 512;
  } catch {
    // No sysfs here: ask the tool.
  }
  return blockdevSize(p);
}

/** `blockdev --getsize64 DEV`: the device's size in bytes. */
export async function blockdevSize(p: string): Promise<number> {
  const { stdout } = await run('blockdev', ['--getsize64', p], { timeoutMs: 30_000 });
  const v = stdout.trim();
  if (!/^\d+$/.test(v)) throw new HostError('FAILED', `blockdev --getsize64 ${p} printed "${v}"`);
  return Number(v);
}

/**
 * Whether something holds the device exclusively: a mounted file system (in any mount
 * namespace, including one detached lazily and still busy), a device-mapper or md member, …
 * An exclusive open fails with EBUSY exactly then; plain opens (a loop device over it, a process
 * doing I/O) do not count.
 */
export async function isHeldExclusively(p: string): Promise<boolean> {
  let fh;
  try {
    fh = await fsp.open(p, fsc.O_RDONLY | fsc.O_EXCL | fsc.O_NONBLOCK);
  } catch (err) {
    if (errno(err) === 'EBUSY') return true;
    if (errno(err) === 'ENOENT') throw new HostError('NOT_FOUND', `${p} does not exist`);
    throw err;
  }
  await fh.close();
  return false;
}

/** Waits until `p` is a block device node (devtmpfs creates nodes asynchronously). */
export async function waitForBlockDevice(p: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 10; ; delay = Math.min(delay * 2, 200)) {
    if (await isBlockDevice(p)) return;
    if (Date.now() >= deadline) {
      throw new HostError(
        'NOT_FOUND',
        `${p} did not appear as a block device within ${timeoutMs} ms`,
      );
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

/** Reads up to `length` bytes from the start of a device (or file). */
export async function readHead(p: string, length: number): Promise<Buffer> {
  const fh = await fsp.open(p, fsc.O_RDONLY);
  try {
    const buf = Buffer.alloc(length);
    let off = 0;
    while (off < length) {
      const { bytesRead } = await fh.read(buf, off, length - off, off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off);
  } finally {
    await fh.close();
  }
}
