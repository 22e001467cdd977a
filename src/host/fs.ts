/**
 * File systems on block devices: what a device holds, making a file system on a blank one (and
 * only on a blank one), growing a mounted one, checking one (for tests and repair tooling), and
 * freezing one for a consistent snapshot.
 */
import { HostError } from './errors.js';
import { readHead } from './device.js';
import { run } from './exec.js';

export const FS_TYPES = ['ext4', 'xfs'] as const;
export type FsType = (typeof FS_TYPES)[number];

export function isFsType(s: string): s is FsType {
  return (FS_TYPES as readonly string[]).includes(s);
}

export type Contents =
  /** No signature anywhere blkid looks, and the first MiB reads as zeros. */
  | { kind: 'blank' }
  | { kind: 'filesystem'; type: string; uuid: string | null }
  /** Anything else: a partition table, an LVM/RAID member, crypto, unrecognised data, … */
  | { kind: 'other'; description: string };

/** How much of the device start must read as zeros for it to count as blank. */
const BLANK_HEAD_BYTES = 1 << 20;

const MKFS_TIMEOUT_MS = 10 * 60_000;
const GROW_TIMEOUT_MS = 10 * 60_000;
const FSCK_TIMEOUT_MS = 30 * 60_000;
const PROBE_TIMEOUT_MS = 60_000;
const FREEZE_TIMEOUT_MS = 60_000;

/** Parses `blkid -o export` output (KEY=value lines; values may carry backslash escapes). */
export function parseBlkidExport(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    out[line.slice(0, eq)] = line.slice(eq + 1).replace(/\\(.)/g, '$1');
  }
  return out;
}

/** Describes what `blkid -p -o export` found, given its exit code and output. */
export function contentsFromBlkid(code: number, stdout: string): Contents | null {
  if (code === 2) return null; // nothing identified
  if (code === 8) return { kind: 'other', description: 'ambivalent signatures (several found)' };
  const tags = parseBlkidExport(stdout);
  if (tags.PTTYPE) return { kind: 'other', description: `a ${tags.PTTYPE} partition table` };
  if (tags.TYPE && (tags.USAGE === 'filesystem' || !tags.USAGE)) {
    return { kind: 'filesystem', type: tags.TYPE, uuid: tags.UUID || null };
  }
  if (tags.TYPE) return { kind: 'other', description: `${tags.TYPE} (${tags.USAGE})` };
  return { kind: 'other', description: 'an unidentified signature' };
}

/**
 * What the device holds. Low-level probing (`blkid -p`) bypasses the blkid cache and looks for
 * every kind of signature: file systems, partition tables, LVM, RAID, crypto. A device with none
 * still counts as holding data when its first MiB is not all zeros (data in a format blkid does
 * not know), so that nothing that was ever written is mistaken for a blank device.
 */
export async function detect(device: string): Promise<Contents> {
  // blkid answers "nothing found" for a device it cannot open: read it first.
  let head: Buffer;
  try {
    head = await readHead(device, BLANK_HEAD_BYTES);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new HostError('NOT_FOUND', `${device} does not exist`);
    throw new HostError('FAILED', `cannot read ${device}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const r = await run('blkid', ['-p', '-o', 'export', device], {
    okCodes: [0, 2, 8],
    timeoutMs: PROBE_TIMEOUT_MS,
  });
  const found = contentsFromBlkid(r.code, r.stdout);
  if (found) return found;
  if (head.some((b) => b !== 0)) {
    return {
      kind: 'other',
      description: 'data in no recognised format (the first MiB is not zero)',
    };
  }
  return { kind: 'blank' };
}

/**
 * Makes a file system on `device`, which must be blank (checked here again: a device with any
 * signature or data is never formatted, whatever the caller believed).
 *
 * ext4: `mkfs.ext4 -m 0 -b 4096 -E nodiscard,lazy_itable_init=1`
 *   -m 0       no blocks reserved for root: a volume belongs to its workload;
 *   -b 4096    4 KiB blocks even on small volumes (mke2fs picks 1 KiB below 512 MiB), aligned
 *              with the image's clusters and fine for later growth;
 *   nodiscard  the device of a new image is already unallocated: discarding it all is wasted
 *              work (and would walk every cluster of a large thin volume);
 *   lazy_itable_init=1  inode tables are zeroed in the background after the first mount,
 *              not by mkfs; a new image reads as zeros anyway, so this mostly saves time.
 *   No -F: nothing here needs forcing, and mke2fs keeps refusing a device that is mounted or
 *   in use. (Note that mke2fs does not stop at an existing file system when stdin is not a
 *   terminal: `detect` is the only guard for ext4.)
 * xfs: `mkfs.xfs -K` (no discard at mkfs time; no -f, so mkfs.xfs also refuses an existing
 *   signature by itself).
 */
export async function mkfs(device: string, fsType: string): Promise<void> {
  if (!isFsType(fsType)) {
    throw new HostError('INVALID_ARGUMENT', `cannot make a ${fsType} file system (ext4 or xfs)`);
  }
  const c = await detect(device);
  if (c.kind !== 'blank') {
    const what = c.kind === 'filesystem' ? `a ${c.type} file system` : c.description;
    throw new HostError('HAS_DATA', `${device} already holds ${what}; it is not formatted`);
  }
  if (fsType === 'ext4') {
    await run(
      'mkfs.ext4',
      ['-q', '-m', '0', '-b', '4096', '-E', 'nodiscard,lazy_itable_init=1', device],
      { timeoutMs: MKFS_TIMEOUT_MS },
    );
  } else {
    await run('mkfs.xfs', ['-q', '-K', device], { timeoutMs: MKFS_TIMEOUT_MS });
  }
}

/**
 * Grows the file system on `device`, mounted at `mountpoint`, to fill the device: `resize2fs
 * DEV` for ext4 (online when mounted), `xfs_growfs MOUNTPOINT` for xfs (which only grows
 * mounted file systems). Growing to the current size is a no-op.
 */
export async function growFs(device: string, fsType: string, mountpoint: string): Promise<void> {
  if (fsType === 'ext4') {
    await run('resize2fs', [device], { timeoutMs: GROW_TIMEOUT_MS });
  } else if (fsType === 'xfs') {
    await run('xfs_growfs', [mountpoint], { timeoutMs: GROW_TIMEOUT_MS });
  } else {
    throw new HostError('INVALID_ARGUMENT', `cannot grow a ${fsType} file system`);
  }
}

export interface FsckResult {
  clean: boolean;
  output: string;
}

/**
 * Checks, without changing anything, the unmounted file system on `device`: `e2fsck -f -n`
 * (exit 0 clean, 4 or 12 errors found) or `xfs_repair -n` (exit 0 clean, 1 corruption).
 */
export async function fsck(device: string, fsType: string): Promise<FsckResult> {
  let r;
  if (fsType === 'ext4') {
    // 4: errors left uncorrected; 12: errors, and the check gave up (e.g. no root directory).
    r = await run('e2fsck', ['-f', '-n', device], {
      okCodes: [0, 4, 12],
      timeoutMs: FSCK_TIMEOUT_MS,
    });
  } else if (fsType === 'xfs') {
    r = await run('xfs_repair', ['-n', device], { okCodes: [0, 1], timeoutMs: FSCK_TIMEOUT_MS });
  } else {
    throw new HostError('INVALID_ARGUMENT', `cannot check a ${fsType} file system`);
  }
  return { clean: r.code === 0, output: `${r.stdout}${r.stderr}` };
}

/**
 * Freezes the file system mounted at `mountpoint` (new writes wait, dirty data and the journal
 * reach the device) until `thaw`. Used around an online snapshot so that the frozen delta holds
 * a clean file system instead of a crash-consistent one.
 */
export async function freeze(mountpoint: string): Promise<void> {
  await run('fsfreeze', ['--freeze', mountpoint], { timeoutMs: FREEZE_TIMEOUT_MS });
}

export async function thaw(mountpoint: string): Promise<void> {
  await run('fsfreeze', ['--unfreeze', mountpoint], { timeoutMs: FREEZE_TIMEOUT_MS });
}
