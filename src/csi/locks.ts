/**
 * In-flight operation tracking. The CO keeps at most one call in flight per volume, except after
 * it lost state; then a second call on the same volume or snapshot gets ABORTED (the spec's
 * "operation pending") and is retried with backoff, instead of racing the first one.
 *
 * A key is held exclusively (the operation changes the object) or shared (the operation only
 * reads it, e.g. a snapshot being restored by several new volumes at once).
 */
import { CsiError, status } from './errors.js';

export type LockMode = 'exclusive' | 'shared';

export interface LockRequest {
  key: string;
  mode: LockMode;
}

export const volumeKey = (id: string): string => `volume/${id}`;
export const snapshotKey = (id: string): string => `snapshot/${id}`;

interface Held {
  mode: LockMode;
  count: number;
  what: string;
}

export class InFlight {
  private readonly held = new Map<string, Held>();

  /** Number of keys currently held (for tests and metrics). */
  get size(): number {
    return this.held.size;
  }

  /** Takes every key or none; returns the release function, or the conflicting holder. */
  tryAcquire(locks: LockRequest[], what: string): { release: () => void } | { busy: string } {
    // The same key twice in one request: keep the strongest mode.
    const wanted = new Map<string, LockMode>();
    for (const l of locks) {
      if (wanted.get(l.key) !== 'exclusive') wanted.set(l.key, l.mode);
    }
    for (const [key, mode] of wanted) {
      const h = this.held.get(key);
      if (h && (h.mode === 'exclusive' || mode === 'exclusive'))
        return { busy: `${key} (${h.what})` };
    }
    for (const [key, mode] of wanted) {
      const h = this.held.get(key);
      if (h) h.count++;
      else this.held.set(key, { mode, count: 1, what });
    }
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        for (const key of wanted.keys()) {
          const h = this.held.get(key)!;
          if (--h.count === 0) this.held.delete(key);
        }
      },
    };
  }

  /** Runs `fn` holding `locks`; ABORTED when another operation holds a conflicting one. */
  async run<T>(locks: LockRequest[], what: string, fn: () => Promise<T>): Promise<T> {
    const got = this.tryAcquire(locks, what);
    if ('busy' in got) {
      throw new CsiError(status.ABORTED, `an operation is already in progress on ${got.busy}`);
    }
    try {
      return await fn();
    } finally {
      got.release();
    }
  }
}
