/**
 * A FileSystem that forwards to the real one and records every mutating call in order, so a
 * test can rebuild what the disk could hold had the machine crashed after any prefix of them.
 *
 * Files are identified by a stable id rather than by name: a name may be renamed over or
 * unlinked while the file lives on. `start()` snapshots the files of a directory; each of them
 * gets an id, later created files get fresh ones.
 *
 * Crash model (see `crashState`; the recording covers a single directory):
 *  - data operations of a file (write, truncate, punchHole, allocate) before its last sync
 *    that precedes the cut are durable; later ones independently reach the disk, are lost, or
 *    (writes of more than one sector) are torn at a 512-byte boundary of the file;
 *  - name operations (create, rename, unlink) of a directory before its last syncDir that
 *    precedes the cut are durable; of the later ones a random prefix survives (a journaling
 *    file system commits name changes in order);
 *  - a file exists after the crash only if a durable name points at it.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { FileSystem, OpenMode, RandomAccessFile } from '../../src/ploop/index.js';
import { nodeFileSystem } from '../../src/ploop/index.js';
import type { Prng } from './prng.js';

export type FsOp =
  | { kind: 'create'; id: number; path: string }
  | { kind: 'write'; id: number; path: string; pos: number; data: Uint8Array }
  | { kind: 'truncate'; id: number; path: string; length: number }
  | { kind: 'punchHole'; id: number; path: string; pos: number; length: number }
  | { kind: 'allocate'; id: number; path: string; pos: number; length: number }
  | { kind: 'sync'; id: number; path: string }
  | { kind: 'rename'; from: string; to: string }
  | { kind: 'unlink'; path: string }
  | { kind: 'syncDir'; dir: string };

/** A test's own annotation in the log (an operation started or returned); not a file op. */
export interface Mark<T> {
  kind: 'mark';
  value: T;
}

export type LogEntry<T> = FsOp | Mark<T>;

export class RecordingFileSystem<T = unknown> implements FileSystem {
  readonly log: LogEntry<T>[] = [];
  /** Contents of the files present when recording started, by id. */
  readonly initial = new Map<number, Buffer>();
  /** Names present when recording started. */
  readonly initialNames = new Map<string, number>();
  /** Live name → id, following the recorded operations. */
  private readonly names = new Map<string, number>();
  private nextId = 1;
  private root = '';

  constructor(private readonly inner: FileSystem = nodeFileSystem) {}

  /** Snapshots every regular file directly inside `dir` (which must hold everything written). */
  async start(dir: string, ignore: (name: string) => boolean = () => false): Promise<void> {
    this.root = path.resolve(dir);
    for (const name of (await fsp.readdir(this.root)).sort()) {
      if (ignore(name)) continue;
      const p = path.join(this.root, name);
      if (!(await fsp.stat(p)).isFile()) continue;
      const id = this.nextId++;
      this.initial.set(id, await fsp.readFile(p));
      this.initialNames.set(p, id);
      this.names.set(p, id);
    }
  }

  /** An upper bound of the size file `id` ever had (to size rebuilt files once). */
  maxSize(id: number): number {
    let max = this.initial.get(id)?.length ?? 0;
    for (const e of this.log) {
      if (e.kind === 'mark' || !('id' in e) || e.id !== id) continue;
      if (e.kind === 'write') max = Math.max(max, e.pos + e.data.length);
      else if (e.kind === 'truncate') max = Math.max(max, e.length);
      else if (e.kind === 'allocate') max = Math.max(max, e.pos + e.length);
    }
    return max;
  }

  mark(value: T): void {
    this.log.push({ kind: 'mark', value });
  }

  /** Number of file operations so far (marks excluded). */
  get opCount(): number {
    return this.log.filter((e) => e.kind !== 'mark').length;
  }

  private inRoot(p: string): string {
    const abs = path.resolve(p);
    if (path.dirname(abs) !== this.root) {
      throw new Error(`recording file system: ${abs} is outside ${this.root}`);
    }
    return abs;
  }

  async open(file: string, mode: OpenMode): Promise<RandomAccessFile> {
    const real = await this.inner.open(file, mode);
    if (mode === 'r') return real;
    const abs = this.inRoot(file);
    let id = this.names.get(abs);
    if (mode === 'create' || id === undefined) {
      if (mode !== 'create') throw new Error(`recording file system: ${abs} opened but unknown`);
      id = this.nextId++;
      this.names.set(abs, id);
      this.log.push({ kind: 'create', id, path: abs });
    }
    return new RecordingFile(real, id, abs, this.log);
  }

  async rename(from: string, to: string): Promise<void> {
    const a = this.inRoot(from);
    const b = this.inRoot(to);
    await this.inner.rename(from, to);
    const id = this.names.get(a);
    if (id === undefined) throw new Error(`recording file system: rename of unknown ${a}`);
    this.names.delete(a);
    this.names.set(b, id);
    this.log.push({ kind: 'rename', from: a, to: b });
  }

  async unlink(file: string): Promise<void> {
    const a = this.inRoot(file);
    await this.inner.unlink(file);
    this.names.delete(a);
    this.log.push({ kind: 'unlink', path: a });
  }

  async syncDir(dir: string): Promise<void> {
    await this.inner.syncDir(dir);
    this.log.push({ kind: 'syncDir', dir: path.resolve(dir) });
  }

  exists(file: string): Promise<boolean> {
    return this.inner.exists(file);
  }

  readText(file: string): Promise<string> {
    return this.inner.readText(file);
  }
}

class RecordingFile implements RandomAccessFile {
  constructor(
    private readonly inner: RandomAccessFile,
    private readonly id: number,
    readonly path: string,
    private readonly log: LogEntry<unknown>[],
  ) {}

  read(buf: Uint8Array, position: number): Promise<number> {
    return this.inner.read(buf, position);
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    // Copied before the call: the caller may reuse its buffer afterwards.
    const data = Uint8Array.from(buf);
    await this.inner.write(buf, position);
    this.log.push({ kind: 'write', id: this.id, path: this.path, pos: position, data });
  }

  async sync(): Promise<void> {
    await this.inner.sync();
    this.log.push({ kind: 'sync', id: this.id, path: this.path });
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  async truncate(length: number): Promise<void> {
    await this.inner.truncate(length);
    this.log.push({ kind: 'truncate', id: this.id, path: this.path, length });
  }

  async punchHole(position: number, length: number): Promise<void> {
    await this.inner.punchHole(position, length);
    this.log.push({ kind: 'punchHole', id: this.id, path: this.path, pos: position, length });
  }

  async allocate(position: number, length: number): Promise<void> {
    await this.inner.allocate(position, length);
    this.log.push({ kind: 'allocate', id: this.id, path: this.path, pos: position, length });
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

// ---- rebuilding a post-crash state ------------------------------------------------------

/** A growable in-memory file. */
class MemFile {
  private buf: Buffer;
  size: number;

  constructor(initial?: Buffer, capacity = 0) {
    this.buf = Buffer.alloc(Math.max(initial?.length ?? 0, capacity, 4096));
    this.size = initial?.length ?? 0;
    if (initial) initial.copy(this.buf);
  }

  private ensure(n: number): void {
    if (n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(n, this.buf.length * 2));
    this.buf.copy(next, 0, 0, this.size);
    this.buf = next;
  }

  write(pos: number, data: Uint8Array): void {
    this.ensure(pos + data.length);
    if (pos > this.size) this.buf.fill(0, this.size, pos);
    this.buf.set(data, pos);
    this.size = Math.max(this.size, pos + data.length);
  }

  truncate(length: number): void {
    if (length > this.size) {
      this.ensure(length);
      this.buf.fill(0, this.size, length);
    }
    this.size = length;
  }

  punchHole(pos: number, length: number): void {
    const end = Math.min(this.size, pos + length);
    if (pos < end) this.buf.fill(0, pos, end);
  }

  allocate(pos: number, length: number): void {
    if (pos + length > this.size) this.truncate(pos + length);
  }

  contents(): Buffer {
    return this.buf.subarray(0, this.size);
  }
}

/** How un-synced operations fare in one crash variant. */
export type CrashPolicy = 'all-kept' | 'all-lost' | 'random';

export interface CrashState {
  /** Surviving files by absolute path (in the recorded directory). */
  files: Map<string, Buffer>;
  /** Short description of the choices made, to tell variants apart. */
  signature: string;
}

type DataOp = Extract<FsOp, { id: number }>;

function applyData(f: MemFile, op: DataOp, part?: { from: number; to: number }): void {
  switch (op.kind) {
    case 'write':
      if (part) f.write(op.pos + part.from, op.data.subarray(part.from, part.to));
      else f.write(op.pos, op.data);
      break;
    case 'truncate':
      f.truncate(op.length);
      break;
    case 'punchHole':
      f.punchHole(op.pos, op.length);
      break;
    case 'allocate':
      f.allocate(op.pos, op.length);
      break;
    default:
      break;
  }
}

/**
 * The files as they could be found after a crash when only the first `cut` log entries had
 * happened. `rng` decides the fate of every operation that was not yet durable.
 */
export function crashState<T>(
  rec: RecordingFileSystem<T>,
  cut: number,
  policy: CrashPolicy,
  rng: Prng,
  skip: (path: string) => boolean = () => false,
): CrashState {
  const log = rec.log.slice(0, cut);
  const lastSync = new Map<number, number>();
  let lastSyncDir = -1;
  log.forEach((e, i) => {
    if (e.kind === 'sync') lastSync.set(e.id, i);
    if (e.kind === 'syncDir') lastSyncDir = i;
  });
  const sig: string[] = [];
  const decide = (): 'keep' | 'drop' | 'tear' => {
    if (policy === 'all-kept') return 'keep';
    if (policy === 'all-lost') return 'drop';
    const x = rng.float();
    return x < 0.4 ? 'keep' : x < 0.75 ? 'drop' : 'tear';
  };

  // Names: durable up to the last syncDir, then a random prefix of the rest.
  const nameOps = log
    .map((e, i) => ({ e, i }))
    .filter(({ e }) => e.kind === 'create' || e.kind === 'rename' || e.kind === 'unlink');
  const durableNames = nameOps.filter(({ i }) => i < lastSyncDir).length;
  const pending = nameOps.length - durableNames;
  const keptNames =
    durableNames +
    (policy === 'all-kept' ? pending : policy === 'all-lost' ? 0 : rng.int(pending + 1));
  if (pending) sig.push(`names:${keptNames - durableNames}/${pending}`);
  const names = new Map(rec.initialNames);
  for (const { e } of nameOps.slice(0, keptNames)) {
    if (e.kind === 'create') names.set(e.path, e.id);
    else if (e.kind === 'rename') {
      const id = names.get(e.from);
      names.delete(e.from);
      if (id !== undefined) names.set(e.to, id);
    } else if (e.kind === 'unlink') names.delete(e.path);
  }

  // Contents of every file that still has a name (and is wanted).
  for (const p of [...names.keys()]) if (skip(p)) names.delete(p);
  const files = new Map<number, MemFile>();
  for (const id of new Set(names.values())) {
    files.set(id, new MemFile(rec.initial.get(id), rec.maxSize(id)));
  }
  log.forEach((e, i) => {
    if (e.kind === 'mark' || !('id' in e) || e.kind === 'create' || e.kind === 'sync') return;
    const f = files.get(e.id);
    if (!f) return;
    if (i < (lastSync.get(e.id) ?? -1)) {
      applyData(f, e);
      return;
    }
    const fate = decide();
    const sectors =
      e.kind === 'write'
        ? Math.floor((e.pos + e.data.length - 1) / 512) - Math.floor(e.pos / 512) + 1
        : 1;
    if (fate === 'keep' || (fate === 'tear' && sectors < 2)) {
      sig.push(`${i}k`);
      applyData(f, e);
    } else if (fate === 'drop') {
      sig.push(`${i}d`);
    } else if (e.kind === 'write') {
      // Split at a sector boundary strictly inside the write; keep one side.
      const firstBoundary = (Math.floor(e.pos / 512) + 1) * 512;
      const boundary = firstBoundary + 512 * rng.int(sectors - 1);
      const at = boundary - e.pos;
      const front = rng.chance(0.5);
      sig.push(`${i}t${at}${front ? 'f' : 'b'}`);
      applyData(f, e, front ? { from: 0, to: at } : { from: at, to: e.data.length });
    } else {
      sig.push(`${i}k`);
      applyData(f, e);
    }
  });

  const out = new Map<string, Buffer>();
  for (const [p, id] of names) out.set(p, files.get(id)!.contents());
  return { files: out, signature: sig.join(',') };
}

/** Writes a crash state into `dir` (emptied first), keeping the file names. */
export async function materialize(state: CrashState, dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  for (const name of await fsp.readdir(dir)) {
    await fsp.rm(path.join(dir, name), { recursive: true, force: true });
  }
  for (const [p, data] of state.files) await fsp.writeFile(path.join(dir, path.basename(p)), data);
}
