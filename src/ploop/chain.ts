/**
 * A chain of deltas (base … top) addressed as one disk (ploop-format.md §3): reads fall through
 * to the first delta that maps a cluster; writes go to the top, allocating whole clusters with
 * copy-on-write from the delta below.
 */
import * as path from 'node:path';
import { CorruptImageError, InvalidArgumentError } from './errors.js';
import { SECTOR } from './header.js';
import { FileSystem, RandomAccessFile, nodeFileSystem } from './io.js';
import {
  DESCRIPTOR_NAME,
  Descriptor,
  chainGuids,
  imageOf,
  isDescriptorPath,
  readDescriptor,
  resolveImagePath,
} from './descriptor.js';
import { PloopImage, readZeroFilled } from './image.js';
import { isDirty, repairImage } from './check.js';

/** A raw (headerless) base: virtual cluster i lives at byte i·cluster. */
export class RawImage {
  private constructor(
    readonly path: string,
    readonly file: RandomAccessFile,
    readonly size: number,
    readonly readOnly: boolean,
  ) {}

  static async open(p: string, fs: FileSystem, readOnly: boolean): Promise<RawImage> {
    const file = await fs.open(p, readOnly ? 'r' : 'rw');
    return new RawImage(p, file, await file.size(), readOnly);
  }

  get virtualSize(): number {
    return this.size;
  }

  map(vc: number, cluster: number): number {
    return vc * cluster < this.size ? vc * cluster : -1;
  }

  async close(): Promise<void> {
    if (!this.readOnly) await this.file.sync();
    await this.file.close();
  }
}

export type Delta = PloopImage | RawImage;

export interface OpenChainOptions {
  readOnly?: boolean;
  fs?: FileSystem;
  /** Repair a top left dirty by a crash before opening it read-write (default true). */
  repair?: boolean;
}

function mapIn(d: Delta, vc: number, cluster: number): number {
  return d instanceof RawImage ? d.map(vc, cluster) : d.map(vc);
}

const ZEROS = new Uint8Array(64 << 10);

/** True when every byte is zero (compared natively with a block of zeros, not byte by byte). */
export function isZero(buf: Uint8Array): boolean {
  for (let off = 0; off < buf.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - off);
    if (Buffer.compare(buf.subarray(off, off + n), ZEROS.subarray(0, n)) !== 0) return false;
  }
  return true;
}

/** Resolves a user path (directory, DiskDescriptor.xml or image file) to what it names. */
export async function resolveTarget(
  p: string,
  fs: FileSystem = nodeFileSystem,
): Promise<{ kind: 'descriptor' | 'image'; path: string }> {
  const abs = path.resolve(p);
  if (isDescriptorPath(abs)) return { kind: 'descriptor', path: abs };
  const inDir = path.join(abs, DESCRIPTOR_NAME);
  if (await fs.exists(inDir)) return { kind: 'descriptor', path: inDir };
  return { kind: 'image', path: abs };
}

export class Chain {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly deltas: Delta[],
    readonly clusterSize: number,
    readonly readOnly: boolean,
    readonly descriptor: Descriptor | null,
    readonly descriptorPath: string | null,
  ) {}

  get top(): Delta {
    return this.deltas[this.deltas.length - 1]!;
  }

  get virtualSize(): number {
    return this.top.virtualSize;
  }

  /** Opens a chain from a DiskDescriptor.xml, a directory holding one, or a single image file. */
  static async open(p: string, opts: OpenChainOptions = {}): Promise<Chain> {
    const fs = opts.fs ?? nodeFileSystem;
    const readOnly = opts.readOnly ?? false;
    const target = await resolveTarget(p, fs);
    if (target.kind === 'image') {
      const top = await openDelta(target.path, 'Compressed', fs, readOnly, opts.repair ?? true);
      return new Chain([top], (top as PloopImage).clusterSize, readOnly, null, null);
    }
    const d = await readDescriptor(fs, target.path);
    const guids = chainGuids(d, target.path);
    const deltas: Delta[] = [];
    try {
      for (let i = 0; i < guids.length; i++) {
        const im = imageOf(d, guids[i]!);
        const isTop = i === guids.length - 1;
        if (im.type === 'Plain' && i !== 0) {
          throw new CorruptImageError(target.path, 'a raw image can only be the base of a chain');
        }
        const file = resolveImagePath(target.path, im.file);
        deltas.push(
          await openDelta(file, im.type, fs, readOnly || !isTop, isTop && (opts.repair ?? true)),
        );
      }
      const cluster = d.clusterSectors * SECTOR;
      for (const dl of deltas) {
        if (dl instanceof PloopImage && dl.clusterSize !== cluster) {
          throw new CorruptImageError(
            target.path,
            `${path.basename(dl.path)} has ${dl.clusterSize}-byte clusters, the descriptor says ${cluster}`,
          );
        }
      }
      const versions = new Set(deltas.filter((x) => x instanceof PloopImage).map((x) => x.version));
      if (versions.size > 1) {
        throw new CorruptImageError(target.path, 'chain mixes version 1 and version 2 deltas');
      }
      return new Chain(deltas, cluster, readOnly, d, target.path);
    } catch (err) {
      for (const dl of deltas) await closeQuietly(dl, true);
      throw err;
    }
  }

  /** Serializes operations: allocation decisions must not interleave. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private checkRange(offset: number, length: number): void {
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0
    ) {
      throw new InvalidArgumentError(`invalid range ${offset}+${length}`);
    }
    if (offset + length > this.virtualSize) {
      throw new InvalidArgumentError(
        `range ${offset}+${length} is beyond the disk size ${this.virtualSize}`,
      );
    }
  }

  /** Which delta maps `vc` and where: the topmost one that has it. */
  locate(vc: number, below = this.deltas.length): { delta: Delta; host: number } | null {
    for (let i = below - 1; i >= 0; i--) {
      const d = this.deltas[i]!;
      const host = mapIn(d, vc, this.clusterSize);
      if (host >= 0) return { delta: d, host };
    }
    return null;
  }

  /** Reads `buf.length` bytes of the virtual disk at `offset`. */
  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.checkRange(offset, buf.length);
    return this.serial(() => this.readUnlocked(buf, offset));
  }

  private async readUnlocked(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.clusterSize;
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const vc = Math.floor(pos / cs);
      const inCluster = pos - vc * cs;
      const n = Math.min(cs - inCluster, buf.length - done);
      const part = buf.subarray(done, done + n);
      const loc = this.locate(vc);
      if (loc) await readZeroFilled(loc.delta.file, part, loc.host + inCluster);
      else part.fill(0);
      done += n;
    }
  }

  /** Contents of virtual cluster `vc` as seen below delta index `below` (COW source). */
  private async clusterBelow(vc: number, below: number): Promise<Buffer> {
    const buf = Buffer.alloc(this.clusterSize);
    const loc = this.locate(vc, below);
    if (loc) await readZeroFilled(loc.delta.file, buf, loc.host);
    return buf;
  }

  private writableTop(): Delta {
    if (this.readOnly) throw new InvalidArgumentError('chain is open read-only');
    return this.top;
  }

  /** Writes `buf` at `offset`. */
  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkRange(offset, buf.length);
    return this.serial(() => this.writeUnlocked(buf, offset));
  }

  private async writeUnlocked(buf: Uint8Array, offset: number): Promise<void> {
    const top = this.writableTop();
    const cs = this.clusterSize;
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const vc = Math.floor(pos / cs);
      const inCluster = pos - vc * cs;
      const n = Math.min(cs - inCluster, buf.length - done);
      const part = buf.subarray(done, done + n);
      const host = mapIn(top, vc, cs);
      if (host >= 0) {
        await top.file.write(part, host + inCluster);
      } else if (top instanceof PloopImage) {
        const below = this.deltas.length - 1;
        // A zero write to a cluster nobody maps changes nothing (as dm-ploop does).
        if (!(isZero(part) && !this.locate(vc, below))) {
          const whole = n === cs ? Buffer.from(part) : await this.clusterBelow(vc, below);
          if (n !== cs) whole.set(part, inCluster);
          await top.allocate(vc, whole);
        }
      }
      done += n;
    }
  }

  /**
   * Discards a range. Whole clusters inside it read as zeros afterwards: released when no lower
   * delta maps them, otherwise mapped to zeros in the top (there is no zero-cluster marker,
   * ploop-format.md §1.10). Partial clusters at the edges are left unchanged.
   */
  async discard(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    return this.serial(() => this.zeroClusters(offset, length, false));
  }

  /** Makes a range read as zeros; `noUnmap` keeps whole clusters allocated. */
  async writeZeroes(
    offset: number,
    length: number,
    opts: { noUnmap?: boolean } = {},
  ): Promise<void> {
    this.checkRange(offset, length);
    return this.serial(async () => {
      const cs = this.clusterSize;
      const first = Math.ceil(offset / cs) * cs;
      const last = Math.max(first, Math.floor((offset + length) / cs) * cs);
      if (first >= offset + length) {
        await this.writeZeroBytes(offset, length);
        return;
      }
      await this.writeZeroBytes(offset, first - offset);
      await this.zeroClusters(first, last - first, opts.noUnmap ?? false);
      await this.writeZeroBytes(last, offset + length - last);
    });
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    const chunk = Buffer.alloc(Math.min(length, this.clusterSize));
    for (let done = 0; done < length; done += chunk.length) {
      const n = Math.min(chunk.length, length - done);
      await this.writeUnlocked(chunk.subarray(0, n), offset + done);
    }
  }

  private async zeroClusters(
    offset: number,
    length: number,
    keepAllocated: boolean,
  ): Promise<void> {
    const top = this.writableTop();
    const cs = this.clusterSize;
    const firstVc = Math.ceil(offset / cs);
    const endVc = Math.floor((offset + length) / cs);
    if (!(top instanceof PloopImage)) {
      for (let vc = firstVc; vc < endVc; vc++) await top.file.write(Buffer.alloc(cs), vc * cs);
      return;
    }
    const zeros = Buffer.alloc(cs);
    const below = this.deltas.length - 1;
    for (let vc = firstVc; vc < endVc; vc++) {
      const host = top.map(vc);
      const lower = this.locate(vc, below) !== null;
      if (host >= 0) {
        if (!lower && !keepAllocated) top.setEntry(vc, 0);
        else await top.file.write(zeros, host);
      } else if (lower || keepAllocated) {
        await top.allocate(vc, zeros);
      }
    }
  }

  /** Makes every completed write durable. */
  flush(): Promise<void> {
    return this.serial(async () => {
      const top = this.top;
      if (this.readOnly) return;
      if (top instanceof PloopImage) await top.flush();
      else await top.file.sync();
    });
  }

  async close(): Promise<void> {
    await this.serial(async () => {
      let first: unknown = null;
      for (const d of [...this.deltas].reverse()) {
        try {
          await d.close();
        } catch (err) {
          first ??= err;
        }
      }
      if (first) throw first;
    });
  }
}

async function closeQuietly(d: Delta, abandon: boolean): Promise<void> {
  try {
    if (abandon && d instanceof PloopImage) await d.abandon();
    else await d.close();
  } catch {
    // Closing after a failure: the first error is the one to report.
  }
}

/** Opens one delta; a read-write top left dirty is repaired first when allowed. */
export async function openDelta(
  file: string,
  type: 'Compressed' | 'Plain',
  fs: FileSystem,
  readOnly: boolean,
  repair: boolean,
): Promise<Delta> {
  if (type === 'Plain') return RawImage.open(file, fs, readOnly);
  try {
    return await PloopImage.open(file, { readOnly, fs });
  } catch (err) {
    if (!(err instanceof CorruptImageError) || readOnly || !repair) throw err;
    // Only an image left in use (a crash) is repaired on open; other damage is reported.
    if (!(await isDirty(file, fs))) throw err;
    const report = await repairImage(file, fs);
    if (!report.clean) throw err;
    return PloopImage.open(file, { readOnly, fs });
  }
}
