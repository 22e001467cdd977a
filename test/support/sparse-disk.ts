/**
 * A plain in-memory model of a virtual disk, stored sparsely by cluster so that disks of a
 * gigabyte cost nothing where they are zero. Cluster buffers are never modified in place
 * (writes replace them), so `clone()` is a cheap, independent copy.
 */
import type { Chain } from '../../src/ploop/index.js';

export class SparseDisk {
  /** Non-zero clusters only. */
  clusters = new Map<number, Uint8Array>();

  constructor(
    public size: number,
    readonly clusterSize: number,
  ) {}

  clone(): SparseDisk {
    const c = new SparseDisk(this.size, this.clusterSize);
    c.clusters = new Map(this.clusters);
    return c;
  }

  get clusterCount(): number {
    return Math.ceil(this.size / this.clusterSize);
  }

  private check(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new Error(`model: range ${offset}+${length} outside ${this.size}`);
    }
  }

  /** Applies `fn` to a private copy of each touched cluster, with the in-cluster range. */
  private modify(
    offset: number,
    length: number,
    fn: (buf: Uint8Array, start: number, end: number, done: number) => void,
  ): void {
    this.check(offset, length);
    const cs = this.clusterSize;
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const vc = Math.floor(pos / cs);
      const start = pos - vc * cs;
      const n = Math.min(cs - start, length - done);
      const old = this.clusters.get(vc);
      const buf = old ? old.slice() : new Uint8Array(cs);
      fn(buf, start, start + n, done);
      if (isAllZero(buf)) this.clusters.delete(vc);
      else this.clusters.set(vc, buf);
      done += n;
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.modify(offset, data.length, (buf, start, end, done) =>
      buf.set(data.subarray(done, done + end - start), start),
    );
  }

  zero(offset: number, length: number): void {
    this.modify(offset, length, (buf, start, end) => buf.fill(0, start, end));
  }

  /** Zeroes only the whole clusters inside the range (discard semantics). */
  discard(offset: number, length: number): void {
    this.check(offset, length);
    const cs = this.clusterSize;
    const first = Math.ceil(offset / cs);
    const end = Math.floor((offset + length) / cs);
    for (let vc = first; vc < end; vc++) this.clusters.delete(vc);
  }

  read(offset: number, length: number): Uint8Array {
    this.check(offset, length);
    const out = new Uint8Array(length);
    const cs = this.clusterSize;
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const vc = Math.floor(pos / cs);
      const start = pos - vc * cs;
      const n = Math.min(cs - start, length - done);
      const c = this.clusters.get(vc);
      if (c) out.set(c.subarray(start, start + n), done);
      done += n;
    }
    return out;
  }

  grow(size: number): void {
    if (size < this.size) throw new Error(`model: cannot shrink ${this.size} to ${size}`);
    this.size = size;
  }
}

export function isAllZero(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Index of the first differing byte, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  if (Buffer.from(a.buffer, a.byteOffset, n).equals(Buffer.from(b.buffer, b.byteOffset, n))) {
    return a.length === b.length ? -1 : n;
  }
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

export function hexAround(buf: Uint8Array, at: number): string {
  const s = Math.max(0, at - 4);
  return Buffer.from(buf.subarray(s, Math.min(buf.length, at + 12))).toString('hex');
}

/**
 * Virtual clusters worth comparing: those the model holds data for and those any delta of the
 * chain maps. Everything else reads as zeros by construction on both sides.
 */
export function interestingClusters(chain: Chain, model: SparseDisk, size: number): number[] {
  const cs = chain.clusterSize;
  const count = Math.ceil(size / cs);
  const set = new Set<number>();
  for (const vc of model.clusters.keys()) if (vc < count) set.add(vc);
  for (let vc = 0; vc < count; vc++) if (chain.locate(vc)) set.add(vc);
  return [...set].sort((a, b) => a - b);
}

/** Groups sorted cluster numbers into runs of consecutive clusters (at most `max` long). */
export function clusterRuns(vcs: Iterable<number>, max = 32): [number, number][] {
  const sorted = [...new Set(vcs)].sort((a, b) => a - b);
  const runs: [number, number][] = [];
  for (const vc of sorted) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === vc && last[1] < max) last[1]++;
    else runs.push([vc, 1]);
  }
  return runs;
}

/**
 * Compares the whole disk with the model; returns a description of the first difference or
 * null. `extraZeroSamples` unmapped clusters are also read to confirm they are zero.
 */
export async function diffChain(
  chain: Chain,
  model: SparseDisk,
  extraZeroSamples: number[] = [],
): Promise<string | null> {
  if (chain.virtualSize !== model.size) {
    return `virtual size ${chain.virtualSize}, model ${model.size}`;
  }
  const cs = chain.clusterSize;
  const vcs = interestingClusters(chain, model, model.size);
  for (const vc of extraZeroSamples) if (vc * cs < model.size) vcs.push(vc);
  for (const [first, count] of clusterRuns(vcs)) {
    const off = first * cs;
    const len = Math.min(count * cs, model.size - off);
    const got = Buffer.alloc(len);
    await chain.read(got, off);
    const want = model.read(off, len);
    const d = firstDiff(got, want);
    if (d >= 0) {
      const vc = Math.floor((off + d) / cs);
      return (
        `byte ${off + d} (cluster ${vc} +${(off + d) % cs}) differs: disk ${hexAround(got, d)} ` +
        `model ${hexAround(want, d)} (mapped by ${describeLocation(chain, vc)})`
      );
    }
  }
  return null;
}

export function describeLocation(chain: Chain, vc: number): string {
  const loc = chain.locate(vc);
  if (!loc) return 'nothing';
  const i = chain.deltas.indexOf(loc.delta);
  return `delta ${i}/${chain.deltas.length} at host ${loc.host}`;
}
