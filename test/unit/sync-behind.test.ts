/**
 * The bulk copy path: pieces streamed in order, syncs started behind the copy, and the crash
 * rule that makes the latter safe (ploop-format.md §5: a BAT entry reaches the file only after
 * a sync that followed every write of the cluster it points at). Import and merge run with a
 * sync interval of a few clusters so the background flushes happen many times.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  Chain,
  FileSystem,
  PloopImage,
  RandomAccessFile,
  SyncBehind,
  checkImage,
  createDisk,
  decodeHeader,
  importRaw,
  listSnapshots,
  mergeTop,
  nodeFileSystem,
  snapshot,
  streamPieces,
} from '../../src/ploop/index.js';
import { Prng } from '../support/prng.js';
import { RecordingFileSystem, crashState, materialize } from '../support/recording-fs.js';
import type { LogEntry } from '../support/recording-fs.js';
import { K64, makeTempDir, pattern, readDisk, removeDir, writeDisk } from './helpers.js';

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir();
});
afterEach(() => removeDir(dir));

describe('streamPieces', () => {
  it('writes every piece in order and reuses a buffer only after its write', async () => {
    const owner = new Map<Buffer, number>();
    const written: number[] = [];
    await streamPieces(
      20,
      16,
      async (i, buf) => {
        expect(owner.has(buf), `buffer of piece ${owner.get(buf)} still in use`).toBe(false);
        owner.set(buf, i);
        await new Promise((r) => setTimeout(r, (i * 7) % 3));
        buf.fill(i);
        return buf.subarray(0, 1 + (i % 16));
      },
      async (i, data) => {
        expect(data.length).toBe(1 + (i % 16));
        expect(data.every((b) => b === i)).toBe(true);
        await new Promise((r) => setTimeout(r, i % 2));
        written.push(i);
        for (const [b, n] of owner) if (n === i) owner.delete(b);
      },
      2,
    );
    expect(written).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('settles every read before reporting a failed write', async () => {
    let pendingReads = 0;
    const run = streamPieces(
      10,
      8,
      async (_i, buf) => {
        pendingReads++;
        await new Promise((r) => setTimeout(r, 5));
        pendingReads--;
        return buf;
      },
      async (i) => {
        if (i === 3) throw new Error('disk full');
      },
      3,
    );
    await expect(run).rejects.toThrow('disk full');
    expect(pendingReads).toBe(0);
  });

  it('handles nothing to copy', async () => {
    await streamPieces(
      0,
      8,
      () => Promise.reject(new Error('no read expected')),
      () => Promise.reject(new Error('no write expected')),
    );
  });
});

describe('SyncBehind', () => {
  /** Syncs that take a little while; the `failing`-th one started fails. */
  function syncs(failing: number) {
    const st = { started: 0, running: 0, most: 0, at: [] as number[], written: 0 };
    const start = async () => {
      const id = ++st.started;
      st.at.push(st.written);
      st.running++;
      st.most = Math.max(st.most, st.running);
      await new Promise((r) => setTimeout(r, 2));
      st.running--;
      if (id === failing) throw new Error('EIO');
    };
    return { st, start };
  }

  it('starts syncs at intervals growing to `every`, two at a time; drain surfaces an error', async () => {
    const { st, start } = syncs(6);
    const sb = new SyncBehind(start, 16);
    for (let i = 0; i < 70; i++) {
      st.written++;
      await sb.wrote(1);
    }
    // Intervals 2, 4, 8, then 16: the disk gets work early.
    expect(st.at).toEqual([2, 6, 14, 30, 46, 62]);
    expect(st.most).toBe(2);
    await expect(sb.drain()).rejects.toThrow('EIO');
    expect(st.running).toBe(0);
    await sb.wrote(16);
    await sb.drain();
    expect(st.started).toBe(7);
  });

  it('keeps to the depth it is given', async () => {
    const { st, start } = syncs(0);
    const sb = new SyncBehind(start, 8, 1);
    for (let i = 0; i < 60; i++) await sb.wrote(1);
    await sb.drain();
    expect(st.started).toBe(9);
    expect(st.most).toBe(1);
  });
});

describe('PloopImage.flushBehind', () => {
  /** Syncs of image files wait until released, one by one, and may then fail. */
  function heldSyncs() {
    const held: { release: (fail: boolean) => void }[] = [];
    let holding = false;
    const fs: FileSystem = {
      ...nodeFileSystem,
      async open(file, mode) {
        const f = await nodeFileSystem.open(file, mode);
        const wrapped: RandomAccessFile = {
          path: f.path,
          read: (b, p) => f.read(b, p),
          write: (b, p) => f.write(b, p),
          size: () => f.size(),
          truncate: (n) => f.truncate(n),
          punchHole: (p, n) => f.punchHole(p, n),
          allocate: (p, n) => f.allocate(p, n),
          close: () => f.close(),
          sync: async () => {
            if (holding) {
              const fail = await new Promise<boolean>((r) => held.push({ release: r }));
              if (fail) throw new Error('EIO');
            }
            await f.sync();
          },
        };
        return wrapped;
      },
    };
    return { fs, held, hold: (on: boolean) => (holding = on) };
  }

  it('runs next to an earlier one, settles after it and surfaces its failure', async () => {
    const file = path.join(dir, 'i.hds');
    await PloopImage.create(file, { size: 8 * K64, clusterSize: K64 });
    const { fs, held, hold } = heldSyncs();
    const img = await PloopImage.open(file, { fs });
    await img.allocate(0, pattern(K64, 1));
    hold(true);
    const first = img.flushBehind();
    first.catch(() => undefined);
    await img.allocate(1, pattern(K64, 2));
    const second = img.flushBehind();
    second.catch(() => undefined);
    // Both syncs are under way at once.
    await new Promise((r) => setTimeout(r, 20));
    expect(held).toHaveLength(2);
    let secondDone = false;
    void second.then(
      () => (secondDone = true),
      () => (secondDone = true),
    );
    held[1]!.release(false);
    await new Promise((r) => setTimeout(r, 20));
    expect(secondDone).toBe(false);
    held[0]!.release(true);
    await expect(first).rejects.toThrow('EIO');
    await expect(second).rejects.toThrow('EIO');
    hold(false);
    // The failed run's entry is written by the next flush; the other one is on disk already.
    await expect(img.flush()).rejects.toThrow('EIO');
    await img.flush();
    await img.close();
    const back = await PloopImage.open(file, { readOnly: true });
    expect(back.map(0)).toBeGreaterThan(0);
    expect(back.map(1)).toBeGreaterThan(0);
    await back.close();
  });

  it('writes a slot changed by two overlapping runs with its newer value last', async () => {
    const file = path.join(dir, 'i.hds');
    await PloopImage.create(file, { size: 8 * K64, clusterSize: K64 });
    const { fs, held, hold } = heldSyncs();
    const img = await PloopImage.open(file, { fs });
    const older = await img.allocate(0, pattern(K64, 1));
    hold(true);
    const first = img.flushBehind();
    const newer = img.reserveCluster();
    await fs.open(file, 'rw').then(async (f) => {
      await f.write(pattern(K64, 2), newer);
      await f.close();
    });
    img.setEntry(0, newer);
    const second = img.flushBehind();
    await new Promise((r) => setTimeout(r, 20));
    expect(held).toHaveLength(2);
    // The later sync returns first; its entry must still not be overwritten by the older one.
    held[1]!.release(false);
    await new Promise((r) => setTimeout(r, 20));
    held[0]!.release(false);
    await first;
    await second;
    hold(false);
    const raw = Buffer.alloc(4);
    const f = await nodeFileSystem.open(file, 'r');
    await f.read(raw, 64);
    await f.close();
    expect(raw.readUInt32LE(0) * K64).toBe(newer);
    expect(newer).not.toBe(older);
    await img.close();
  });
});

/**
 * Walks a recorded log and checks, for every image file, that each BAT entry written with a
 * new non-zero value points at a cluster whose every write came before a sync that came before
 * the BAT write. Returns the number of entries checked.
 */
function checkEntryOrder(log: LogEntry<unknown>[]): number {
  interface FileState {
    dataOff: number;
    cluster: number;
    version: 1 | 2;
    bat: Map<number, number>;
    lastWrite: Map<number, number>;
    lastSync: number;
  }
  const files = new Map<number, FileState>();
  let checked = 0;
  log.forEach((e, idx) => {
    if (e.kind === 'sync') {
      const f = files.get(e.id);
      if (f) f.lastSync = idx;
      return;
    }
    if (e.kind !== 'write') return;
    if (e.pos === 0 && e.data.length >= 64) {
      const h = decodeHeader(Buffer.from(e.data.buffer, e.data.byteOffset, 64));
      if (h && !files.has(e.id)) {
        files.set(e.id, {
          dataOff: h.dataOff * 512,
          cluster: h.clusterSectors * 512,
          version: h.version,
          bat: new Map(),
          lastWrite: new Map(),
          lastSync: -1,
        });
      }
    }
    const f = files.get(e.id);
    if (!f) return;
    const end = e.pos + e.data.length;
    if (end > f.dataOff) {
      const first = Math.floor((Math.max(e.pos, f.dataOff) - f.dataOff) / f.cluster);
      const last = Math.floor((end - 1 - f.dataOff) / f.cluster);
      for (let c = first; c <= last; c++) f.lastWrite.set(c, idx);
    }
    const data = Buffer.from(e.data.buffer, e.data.byteOffset, e.data.length);
    for (let off = Math.max(e.pos, 64); off + 4 <= Math.min(end, f.dataOff); off += 4) {
      if ((off - 64) % 4 !== 0) continue;
      const slot = (off - 64) / 4;
      const value = data.readUInt32LE(off - e.pos);
      if (value === 0 || f.bat.get(slot) === value) continue;
      f.bat.set(slot, value);
      const host = f.version === 1 ? value * 512 : value * f.cluster;
      const c = (host - f.dataOff) / f.cluster;
      const w = f.lastWrite.get(c);
      expect(w, `entry ${slot} points at cluster ${c}, never written`).toBeDefined();
      expect(
        f.lastSync > w! && f.lastSync < idx,
        `entry ${slot} written (log ${idx}) before cluster ${c}'s data (log ${w}) was synced`,
      ).toBe(true);
      checked++;
    }
  });
  return checked;
}

/** [version, cluster size, crash cuts]: 512 KiB clusters are copied in two pieces each. */
const CASES = [
  [1, K64, 60],
  [2, K64, 60],
  [2, 8 * K64, 20],
] as const;

describe.each(CASES)('syncs behind the copy (v%d, %d-byte clusters)', (version, cs, cuts) => {
  const CLUSTERS = 24;
  // Not a multiple of the cluster: background syncs also start in the middle of a cluster.
  const SYNC_EVERY = 2.5 * cs;

  /** A raw file: some all-zero clusters, some zero only at the start, the rest patterned. */
  async function rawFile(file: string): Promise<Buffer> {
    const raw = pattern(CLUSTERS * cs, 7);
    for (const vc of [2, 3, 9, 17]) raw.fill(0, vc * cs, (vc + 1) * cs);
    raw.fill(0, 5 * cs, 5 * cs + cs / 2);
    await fsp.writeFile(file, raw);
    return raw;
  }

  it('import: entries only after their data is durable, in every crash state', async () => {
    const work = path.join(dir, 'rec');
    await fsp.mkdir(work);
    const rawPath = path.join(dir, 'in.raw');
    const raw = await rawFile(rawPath);
    const rec = new RecordingFileSystem<string>();
    await rec.start(work);
    const dst = path.join(work, 'out.hds');
    await importRaw(rawPath, dst, { clusterSize: cs, version, fs: rec, syncEvery: SYNC_EVERY });
    rec.mark('done');
    expect(checkEntryOrder(rec.log)).toBe(CLUSTERS - 4);
    expect((await readDisk(dst)).equals(raw)).toBe(true);
    // Appended in virtual order: the layout is sequential.
    const img = await PloopImage.open(dst, { readOnly: true });
    const hosts = [...Array(CLUSTERS).keys()].map((vc) => img.map(vc)).filter((h) => h >= 0);
    expect(hosts).toEqual([...hosts].sort((a, b) => a - b));
    await img.close();

    const rng = new Prng(0x5eed + version);
    const total = rec.log.length;
    // Until the new file's first sync (end of its creation) it may be no image at all.
    const created = rec.log.findIndex((e) => e.kind === 'sync' && e.path === dst);
    const done = rec.log.findIndex((e) => e.kind === 'mark');
    const crashed = path.join(dir, 'crashed');
    for (let cut = 0; cut <= total; cut += Math.max(1, Math.floor(total / cuts))) {
      for (const policy of ['all-kept', 'all-lost', 'random'] as const) {
        const state = crashState(rec, cut, policy, rng);
        await materialize(state, crashed);
        const file = path.join(crashed, 'out.hds');
        const exists = await fsp
          .stat(file)
          .then(() => true)
          .catch(() => false);
        if (!exists) continue;
        const r = await checkImage(file, { repair: true });
        if (cut <= created && !r.clean) continue;
        expect(r.clean, `cut ${cut} ${policy}: ${JSON.stringify(r)}`).toBe(true);
        if (cut > done) expect((await readDisk(file)).equals(raw), `cut ${cut}`).toBe(true);
        const chain = await Chain.open(file, { readOnly: true });
        try {
          const top = chain.top as PloopImage;
          for (let vc = 0; vc < CLUSTERS; vc++) {
            if (top.map(vc) < 0) continue;
            const got = Buffer.alloc(cs);
            await chain.read(got, vc * cs);
            expect(
              got.equals(raw.subarray(vc * cs, (vc + 1) * cs)),
              `cut ${cut} ${policy} [${state.signature}]: cluster ${vc} holds wrong data`,
            ).toBe(true);
          }
        } finally {
          await chain.close();
        }
      }
    }
  });

  it('merge: entries only after their data is durable; content kept', async () => {
    const { descriptorPath: dd } = await createDisk(path.join(dir, 'disk'), {
      size: CLUSTERS * cs,
      clusterSize: cs,
      version,
    });
    const base = pattern(12 * cs, 1);
    await writeDisk(dd, 0, base);
    await snapshot(dd);
    const top = pattern(20 * cs, 2);
    await writeDisk(dd, 4 * cs, top);
    const expected = await readDisk(dd);
    const rec = new RecordingFileSystem<string>();
    await rec.start(path.dirname(dd), (n) => n.endsWith('.lck'));
    await mergeTop(dd, { fs: rec, syncEvery: SYNC_EVERY });
    // Clusters 12..23 are new to the base: each entry written once, after a sync.
    expect(checkEntryOrder(rec.log)).toBe(12);
    expect((await readDisk(dd)).equals(expected)).toBe(true);
    expect(await listSnapshots(dd)).toHaveLength(1);
  });
});
