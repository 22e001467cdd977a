/**
 * File access used by every ploop operation. All I/O goes through these two interfaces so that
 * tests can record (and replay cut short) exactly what an operation wrote and synced, while
 * production uses plain Node.js file handles.
 */
import { spawn } from 'node:child_process';
import { constants as fsc, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { toPloopError } from './errors.js';

export interface RandomAccessFile {
  readonly path: string;
  /** Reads up to `length` bytes at `position`; returns the count read (short only at EOF). */
  read(buf: Uint8Array, position: number): Promise<number>;
  /** Writes all of `buf`; callers reuse `buf` once this settles, so keep a copy, not `buf`. */
  write(buf: Uint8Array, position: number): Promise<void>;
  /** Makes written data durable (fdatasync). */
  sync(): Promise<void>;
  size(): Promise<number>;
  truncate(length: number): Promise<void>;
  /** Deallocates a byte range; reads of it return zeros afterwards. */
  punchHole(position: number, length: number): Promise<void>;
  /** Allocates (without writing) a byte range, extending the file if needed. */
  allocate(position: number, length: number): Promise<void>;
  close(): Promise<void>;
}

export type OpenMode = 'r' | 'rw' | 'create';

export interface FileSystem {
  open(file: string, mode: OpenMode): Promise<RandomAccessFile>;
  rename(from: string, to: string): Promise<void>;
  unlink(file: string): Promise<void>;
  /** fsync of a directory, so that a rename or create in it is durable. */
  syncDir(dir: string): Promise<void>;
  exists(file: string): Promise<boolean>;
  readText(file: string): Promise<string>;
}

/** Runs `fallocate` from util-linux: Node.js has no binding for fallocate(2). */
function fallocate(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('fallocate', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`fallocate ${args.join(' ')}: ${err.trim()}`)),
    );
  });
}

class NodeFile implements RandomAccessFile {
  constructor(
    readonly path: string,
    private readonly fh: fsp.FileHandle,
  ) {}

  // Failures surface as typed errors (e.g. EISDIR when a descriptor names a directory, EIO).
  private fail(err: unknown): never {
    throw toPloopError(err, this.path);
  }

  async read(buf: Uint8Array, position: number): Promise<number> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesRead } = await this.fh.read(buf, done, buf.length - done, position + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (err) {
      this.fail(err);
    }
    return done;
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, position + done);
        done += bytesWritten;
      }
    } catch (err) {
      this.fail(err);
    }
  }

  sync(): Promise<void> {
    return this.fh.datasync().catch((err: unknown) => this.fail(err));
  }

  async size(): Promise<number> {
    return (await this.fh.stat().catch((err: unknown) => this.fail(err))).size;
  }

  truncate(length: number): Promise<void> {
    return this.fh.truncate(length).catch((err: unknown) => this.fail(err));
  }

  async punchHole(position: number, length: number): Promise<void> {
    if (length <= 0) return;
    await fallocate([
      '--punch-hole',
      '--keep-size',
      '-o',
      `${position}`,
      '-l',
      `${length}`,
      this.path,
    ]);
  }

  async allocate(position: number, length: number): Promise<void> {
    if (length <= 0) return;
    try {
      await fallocate(['-o', `${position}`, '-l', `${length}`, this.path]);
    } catch {
      // File systems without fallocate(2): write zeros instead.
      const chunk = Buffer.alloc(Math.min(length, 8 << 20));
      for (let off = 0; off < length; off += chunk.length) {
        await this.write(chunk.subarray(0, Math.min(chunk.length, length - off)), position + off);
      }
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/**
 * Closes a file without waiting for it: for a file that was only read, or whose writes were
 * synced already, the close decides nothing, and waiting costs a round trip to a worker thread
 * (about 0.3 ms here, a good part of a snapshot).
 */
export function closeInBackground(file: { close(): Promise<void> }): void {
  file.close().catch(() => undefined);
}

/** Read size of `readText`: a short read means the end of a regular file. */
const TEXT_CHUNK = 64 << 10;

export const nodeFileSystem: FileSystem = {
  async open(file, mode) {
    const flags =
      mode === 'r'
        ? fsc.O_RDONLY
        : mode === 'rw'
          ? fsc.O_RDWR
          : fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL;
    try {
      // libuv opens every file close-on-exec.
      return new NodeFile(file, await fsp.open(file, flags, 0o600));
    } catch (err) {
      throw toPloopError(err, file);
    }
  },
  async rename(from, to) {
    await fsp.rename(from, to);
  },
  async unlink(file) {
    await fsp.unlink(file);
  },
  async syncDir(dir) {
    const fh = await fsp.open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    try {
      await fh.sync();
    } finally {
      closeInBackground(fh);
    }
  },
  async exists(file) {
    try {
      await fsp.access(file);
      return true;
    } catch {
      return false;
    }
  },
  async readText(file) {
    // Descriptors are small: one read usually gets it all (readFile also asks for the size and
    // reads once more to see the end, each call a round trip to a worker thread).
    let fh: fsp.FileHandle | null = null;
    try {
      fh = await fsp.open(file, fsc.O_RDONLY);
      const chunks: Buffer[] = [];
      for (;;) {
        const buf = Buffer.allocUnsafe(TEXT_CHUNK);
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        chunks.push(buf.subarray(0, bytesRead));
        if (bytesRead < buf.length) break;
      }
      return Buffer.concat(chunks).toString('utf8');
    } catch (err) {
      throw toPloopError(err, file);
    } finally {
      if (fh) closeInBackground(fh);
    }
  },
};

/**
 * First half of `writeFileAtomic`: writes `data` to `<file>.tmp` (replacing a stale one) and
 * syncs it. Returns the temporary path; renaming it over `file` and syncing the directory
 * completes the atomic write.
 */
export async function writeTempFile(
  fs: FileSystem,
  file: string,
  data: string | Uint8Array,
): Promise<string> {
  const tmp = `${file}.tmp`;
  if (await fs.exists(tmp)) await fs.unlink(tmp);
  const f = await fs.open(tmp, 'create');
  try {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    await f.write(bytes, 0);
    await f.sync();
  } catch (err) {
    await f.close();
    throw err;
  }
  closeInBackground(f);
  return tmp;
}

/**
 * Replaces `file` with `data` atomically once `work` has finished: the temporary copy is written
 * and synced while `work` runs, and renamed over `file` (then the directory synced) only if both
 * succeeded. On failure the temporary copy is removed and the first error is thrown (`work`'s
 * before the copy's). Returns what `work` returned.
 */
export async function publishAfter<T>(
  fs: FileSystem,
  file: string,
  data: string | Uint8Array,
  work: Promise<T>,
): Promise<T> {
  const [done, staged] = await Promise.allSettled([work, writeTempFile(fs, file, data)]);
  if (done.status === 'rejected' || staged.status === 'rejected') {
    if (staged.status === 'fulfilled') await fs.unlink(staged.value).catch(() => undefined);
    throw done.status === 'rejected' ? done.reason : (staged as PromiseRejectedResult).reason;
  }
  await fs.rename(staged.value, file);
  await fs.syncDir(path.dirname(file));
  return done.value;
}

/** Writes a file atomically: temporary file, fsync, rename over the target, fsync the directory. */
export async function writeFileAtomic(
  fs: FileSystem,
  file: string,
  data: string | Uint8Array,
): Promise<void> {
  const tmp = await writeTempFile(fs, file, data);
  await fs.rename(tmp, file);
  await fs.syncDir(path.dirname(file));
}
