/**
 * A small seeded pseudo-random generator (mulberry32) for reproducible randomized tests.
 * Not for anything security related.
 */
export class Prng {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform 32-bit unsigned integer. */
  next32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.next32() / 0x100000000;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (n <= 0) return 0;
    if (n <= 0x100000000) return Math.floor(this.float() * n);
    return Math.floor((this.next32() * 0x100000000 + this.next32()) % n);
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** Picks a key of `weights` with probability proportional to its weight. */
  weighted<K extends string>(weights: Record<K, number>): K {
    const entries = Object.entries(weights) as [K, number][];
    let total = 0;
    for (const [, w] of entries) total += w;
    let x = this.float() * total;
    for (const [k, w] of entries) {
      x -= w;
      if (x < 0) return k;
    }
    return entries[entries.length - 1]![0];
  }

  /** `len` pseudo-random bytes. */
  bytes(len: number): Uint8Array {
    const out = new Uint8Array(len);
    const words = Math.floor(len / 4);
    const view = new DataView(out.buffer);
    for (let i = 0; i < words; i++) view.setUint32(4 * i, this.next32(), true);
    for (let i = words * 4; i < len; i++) out[i] = this.next32() & 0xff;
    return out;
  }

  /** A derived generator, so sub-tasks do not shift each other's sequences. */
  fork(): Prng {
    return new Prng(this.next32());
  }
}

/** Seed from an environment variable (decimal or 0x hex), or undefined. */
export function seedFromEnv(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v.trim() === '') return undefined;
  const n = Number(v.trim());
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${v} is not a valid seed`);
  return n >>> 0;
}
