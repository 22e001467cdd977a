/**
 * Mounts: mounting a device, bind mounts (read-only ones need a remount), unmounting, and
 * finding what is mounted where by parsing /proc/self/mountinfo; plus creating and removing
 * the mount points the plugin owns (a publish target: a directory for a file system, a file for
 * a raw block device).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { HostError } from './errors.js';
import { run } from './exec.js';

export interface MountInfo {
  id: number;
  parentId: number;
  major: number;
  minor: number;
  /** The path inside the mounted file system that is mounted here ("/" for a whole fs). */
  root: string;
  mountPoint: string;
  /** Per-mount options (ro/rw, nosuid, relatime, …). */
  options: string[];
  /** Optional fields (shared:N, master:N, …). */
  optional: string[];
  fsType: string;
  source: string;
  /** File system (superblock) options. */
  superOptions: string[];
}

const MOUNT_TIMEOUT_MS = 2 * 60_000;
const UMOUNT_TIMEOUT_MS = 2 * 60_000;

/**
 * Undoes the kernel's escaping of mountinfo fields: space, tab, newline and backslash (and any
 * other byte the kernel chooses to escape) appear as a backslash and three octal digits.
 */
export function unescapeMountField(s: string): string {
  if (!s.includes('\\')) return s;
  const bytes: number[] = [];
  const raw = Buffer.from(s, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i]!;
    if (
      b === 0x5c &&
      i + 3 < raw.length &&
      /^[0-7]{3}$/.test(raw.toString('latin1', i + 1, i + 4))
    ) {
      bytes.push(parseInt(raw.toString('latin1', i + 1, i + 4), 8) & 0xff);
      i += 3;
    } else {
      bytes.push(b);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Parses one line of /proc/<pid>/mountinfo (proc(5)); null for a malformed line. */
export function parseMountInfoLine(line: string): MountInfo | null {
  const f = line.split(' ');
  const sep = f.indexOf('-', 6);
  if (f.length < 10 || sep < 0 || f.length < sep + 4) return null;
  const dev = /^(\d+):(\d+)$/.exec(f[2]!);
  if (!dev) return null;
  return {
    id: Number(f[0]),
    parentId: Number(f[1]),
    major: Number(dev[1]),
    minor: Number(dev[2]),
    root: unescapeMountField(f[3]!),
    mountPoint: unescapeMountField(f[4]!),
    options: f[5]!.split(','),
    optional: f.slice(6, sep),
    fsType: unescapeMountField(f[sep + 1]!),
    source: unescapeMountField(f[sep + 2]!),
    superOptions: unescapeMountField(f.slice(sep + 3).join(' ')).split(','),
  };
}

export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const m = parseMountInfoLine(line);
    if (m) out.push(m);
  }
  return out;
}

/** The mount table of this process's mount namespace, in mount order. */
export async function readMountInfo(file = '/proc/self/mountinfo'): Promise<MountInfo[]> {
  return parseMountInfo(await fsp.readFile(file, 'utf8'));
}

/** The spellings under which `p` can appear as a mount point: as given, and with symlinks resolved. */
async function spellings(p: string): Promise<Set<string>> {
  const abs = path.resolve(p);
  const out = new Set([abs]);
  try {
    out.add(await fsp.realpath(abs));
  } catch {
    // Missing or unreachable: only the given spelling can match.
  }
  return out;
}

/** The mount on top at `p` (the last one mounted there), or null when `p` is not a mount point. */
export async function findMount(p: string, table?: MountInfo[]): Promise<MountInfo | null> {
  const names = await spellings(p);
  const mounts = table ?? (await readMountInfo());
  for (let i = mounts.length - 1; i >= 0; i--) {
    if (names.has(mounts[i]!.mountPoint)) return mounts[i]!;
  }
  return null;
}

export async function isMountPoint(p: string): Promise<boolean> {
  return (await findMount(p)) !== null;
}

/** Every mount of the file system (or device node) with this device number. */
export function mountsOf(major: number, minor: number, table: MountInfo[]): MountInfo[] {
  return table.filter((m) => m.major === major && m.minor === minor);
}

function absolute(p: string, what: string): string {
  if (!path.isAbsolute(p)) throw new HostError('INVALID_ARGUMENT', `${what} ${p} is not absolute`);
  return p;
}

function checkOptions(options: readonly string[]): void {
  for (const o of options) {
    // eslint-disable-next-line no-control-regex
    if (!o || /[\u0000-\u001f]/.test(o)) {
      throw new HostError('INVALID_ARGUMENT', `mount option ${JSON.stringify(o)} is not valid`);
    }
  }
}

export interface MountOptions {
  fsType: string;
  /** Options for `mount -o` (joined with commas). */
  options?: readonly string[];
}

/** `mount -t TYPE [-o OPTS] SOURCE TARGET`. */
export async function mount(source: string, target: string, opts: MountOptions): Promise<void> {
  absolute(source, 'mount source');
  absolute(target, 'mount point');
  const options = opts.options ?? [];
  checkOptions(options);
  const args = ['-t', opts.fsType];
  if (options.length > 0) args.push('-o', options.join(','));
  await run('mount', [...args, source, target], { timeoutMs: MOUNT_TIMEOUT_MS });
}

/** Options a bind mount can take on its own (per-mount flags; the rest belong to the fs). */
export const PER_MOUNT_OPTIONS = new Set([
  'ro',
  'rw',
  'nosuid',
  'suid',
  'nodev',
  'dev',
  'noexec',
  'exec',
  'noatime',
  'atime',
  'nodiratime',
  'diratime',
  'relatime',
  'norelatime',
  'strictatime',
  'nostrictatime',
]);

export interface BindOptions {
  readonly?: boolean;
  /** Per-mount flags (PER_MOUNT_OPTIONS) for the bind mount; others are ignored. */
  options?: readonly string[];
}

/**
 * Bind-mounts `source` (a directory or a file, e.g. a device node) onto `target`. Flags such as
 * read-only cannot be set by the bind itself: the new mount is remounted with them, and removed
 * again when that fails, so a read-only bind never stays behind writable.
 */
export async function bindMount(
  source: string,
  target: string,
  opts: BindOptions = {},
): Promise<void> {
  absolute(source, 'bind source');
  absolute(target, 'mount point');
  const flags = (opts.options ?? []).filter(
    (o) => PER_MOUNT_OPTIONS.has(o) && o !== 'rw' && o !== 'ro',
  );
  checkOptions(flags);
  if (opts.readonly) flags.unshift('ro');
  await run('mount', ['--bind', source, target], { timeoutMs: MOUNT_TIMEOUT_MS });
  if (flags.length === 0) return;
  try {
    await run('mount', ['-o', ['remount', 'bind', ...flags].join(','), target], {
      timeoutMs: MOUNT_TIMEOUT_MS,
    });
  } catch (err) {
    await run('umount', [target], { timeoutMs: UMOUNT_TIMEOUT_MS }).catch(() => undefined);
    throw err;
  }
}

export interface UnmountOptions {
  /** Tries when the mount is busy (default 3, 250 ms apart, doubling). */
  attempts?: number;
  /**
   * After the last busy attempt, detach the mount lazily (`umount -l`) instead of failing. The
   * file system stays alive, invisible, until its last user goes: only for callers that can
   * tolerate that (never before detaching the device underneath).
   */
  lazyAsLastResort?: boolean;
}

/**
 * Unmounts the mount on top at `target`. Resolves false when nothing was mounted there, true
 * once something was unmounted; BUSY when it stays busy.
 */
export async function unmount(target: string, opts: UnmountOptions = {}): Promise<boolean> {
  absolute(target, 'mount point');
  if (!(await isMountPoint(target))) return false;
  const attempts = Math.max(1, opts.attempts ?? 3);
  let delay = 250;
  for (let i = 1; ; i++) {
    try {
      await run('umount', [target], { timeoutMs: UMOUNT_TIMEOUT_MS });
      return true;
    } catch (err) {
      const msg = (err as Error).message;
      if (/not mounted|no mount point specified/i.test(msg) && !(await isMountPoint(target))) {
        return false;
      }
      if (!/busy/i.test(msg)) throw err;
      if (i < attempts) {
        await new Promise((r) => setTimeout(r, delay));
        delay *= 2;
        continue;
      }
      if (opts.lazyAsLastResort) {
        await run('umount', ['-l', target], { timeoutMs: UMOUNT_TIMEOUT_MS });
        return true;
      }
      throw new HostError('BUSY', `${target} is busy: ${msg}`, { cause: err });
    }
  }
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

/**
 * Makes `p` a directory (its parent must exist: the CO creates it). An existing directory is
 * fine; anything else there is WRONG_TYPE.
 */
export async function ensureDirectory(p: string, mode = 0o750): Promise<void> {
  absolute(p, 'path');
  try {
    await fsp.mkdir(p, { mode });
    return;
  } catch (err) {
    if (errno(err) === 'ENOENT') {
      throw new HostError('NOT_FOUND', `the parent directory of ${p} does not exist`);
    }
    if (errno(err) !== 'EEXIST') throw err;
  }
  const st = await fsp.stat(p);
  if (!st.isDirectory()) throw new HostError('WRONG_TYPE', `${p} exists and is not a directory`);
}

/**
 * Makes `p` a file to bind a device node onto. An existing regular file (or device node: a
 * bind already in place) is fine; so is an empty directory that is no mount point, which is
 * replaced by a file.
 */
export async function ensureFile(p: string, mode = 0o660): Promise<void> {
  absolute(p, 'path');
  for (let tries = 0; tries < 2; tries++) {
    try {
      await (await fsp.open(p, 'wx', mode)).close();
      return;
    } catch (err) {
      if (errno(err) === 'ENOENT') {
        throw new HostError('NOT_FOUND', `the parent directory of ${p} does not exist`);
      }
      if (errno(err) !== 'EEXIST') throw err;
    }
    const st = await fsp.lstat(p);
    if (st.isFile() || st.isBlockDevice()) return;
    if (st.isDirectory() && !(await isMountPoint(p))) {
      try {
        await fsp.rmdir(p);
        continue;
      } catch (err) {
        if (errno(err) !== 'ENOTEMPTY') throw err;
      }
    }
    break;
  }
  throw new HostError('WRONG_TYPE', `${p} exists and is not a file`);
}

/**
 * Removes a mount point the plugin created: an empty directory or a file. Refuses while
 * something is mounted there and never removes contents. Resolves false when `p` did not exist.
 */
export async function removeMountPoint(p: string): Promise<boolean> {
  absolute(p, 'path');
  let st;
  try {
    st = await fsp.lstat(p);
  } catch (err) {
    if (errno(err) === 'ENOENT') return false;
    throw err;
  }
  if (await isMountPoint(p)) throw new HostError('BUSY', `${p} is still a mount point`);
  try {
    if (st.isDirectory()) await fsp.rmdir(p);
    else await fsp.unlink(p);
  } catch (err) {
    if (errno(err) === 'ENOENT') return false;
    if (errno(err) === 'ENOTEMPTY' || errno(err) === 'EEXIST') {
      throw new HostError('WRONG_TYPE', `${p} is not empty; not removing it`, { cause: err });
    }
    throw err;
  }
  return true;
}
