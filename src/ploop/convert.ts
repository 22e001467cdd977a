/**
 * Conversions: raw file → ploop image (zero clusters skipped), any chain → sparse raw file, and
 * flattening a chain into one new image.
 */
import * as path from 'node:path';
import { InvalidArgumentError } from './errors.js';
import { FileSystem, nodeFileSystem } from './io.js';
import { Chain, Delta, isZero } from './chain.js';
import { PloopImage, readZeroFilled, zeroBytes } from './image.js';
import { FormatVersion } from './header.js';
import { PIECE_BYTES, Progress, SyncBehind, streamPieces } from './copy.js';

export interface ConvertOptions {
  clusterSize?: number;
  version?: FormatVersion;
  fs?: FileSystem;
  progress?: Progress;
  /** Bytes copied between background syncs (default SYNC_BEHIND_BYTES). */
  syncEvery?: number;
}

/** Where the clusters of a new image come from (see `writeNewImage`). */
interface ClusterSource {
  /** Virtual clusters to copy, in increasing order; all others stay unmapped. */
  clusters: Uint32Array;
  /** Fills `buf` with the bytes at `offset` inside virtual cluster `vc` = `clusters[n]`. */
  read(n: number, vc: number, offset: number, buf: Buffer): Promise<void>;
  /** Leave clusters that read as all zeros unmapped. */
  skipZero: boolean;
}

/**
 * Copies the clusters of `source` into a new image at `dst` of `size` bytes. Clusters are
 * appended in virtual order, piece by piece; a BAT entry is set once its cluster is completely
 * written and reaches the disk after a sync that followed (ploop-format.md §5).
 */
async function writeNewImage(
  dst: string,
  size: number,
  opts: ConvertOptions,
  source: ClusterSource,
): Promise<void> {
  const fs = opts.fs ?? nodeFileSystem;
  await PloopImage.create(dst, { size, clusterSize: opts.clusterSize, version: opts.version, fs });
  // The new name must be durable too, or a finished import can vanish in a crash.
  await fs.syncDir(path.dirname(dst));
  const img = await PloopImage.open(dst, { fs });
  try {
    const cs = img.clusterSize;
    const piece = Math.min(cs, PIECE_BYTES);
    const parts = cs / piece;
    const vcs = source.clusters;
    let host = -1;
    const behind = new SyncBehind(() => img.flushBehind(), opts.syncEvery);
    await streamPieces(
      vcs.length * parts,
      piece,
      async (i, buf) => {
        const n = Math.floor(i / parts);
        await source.read(n, vcs[n]!, (i % parts) * piece, buf);
        return buf;
      },
      async (i, data) => {
        const n = Math.floor(i / parts);
        const part = i % parts;
        if (part === 0) host = -1;
        if (host < 0 && !(source.skipZero && isZero(data))) {
          // The first piece with data: the cluster is appended, the pieces before it were zeros.
          host = img.reserveCluster();
          for (let off = 0; off < part * piece;) {
            const z = zeroBytes(part * piece - off);
            await img.file.write(z, host + off);
            off += z.length;
          }
        }
        if (host >= 0) {
          await img.file.write(data, host + part * piece);
          await behind.wrote(data.length);
        }
        if (part === parts - 1) {
          if (host >= 0) img.setEntry(vcs[n]!, host);
          opts.progress?.(n + 1, vcs.length);
        }
      },
    );
    await behind.drain();
    await img.close();
  } catch (err) {
    await img.abandon();
    throw err;
  }
}

/** The numbers 0 … n-1. */
function allClusters(n: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  return out;
}

/** raw → ploop: only clusters holding non-zero bytes are stored. */
export async function importRaw(
  raw: string,
  dst: string,
  opts: ConvertOptions = {},
): Promise<void> {
  const fs = opts.fs ?? nodeFileSystem;
  const src = await fs.open(raw, 'r');
  try {
    const size = await src.size();
    if (size === 0) throw new InvalidArgumentError(`${raw} is empty`);
    const cs = opts.clusterSize ?? 1 << 20;
    await writeNewImage(dst, size, opts, {
      clusters: allClusters(Math.ceil(size / cs)),
      read: (_n, vc, offset, buf) => readZeroFilled(src, buf, vc * cs + offset),
      skipZero: true,
    });
  } finally {
    await src.close();
  }
}

/** Clusters of a chain that some delta maps, with where each lives. */
function mappedClusters(chain: Chain): {
  vcs: Uint32Array;
  locs: { delta: Delta; host: number }[];
} {
  const clusters = Math.ceil(chain.virtualSize / chain.clusterSize);
  const vcs: number[] = [];
  const locs: { delta: Delta; host: number }[] = [];
  for (let vc = 0; vc < clusters; vc++) {
    const loc = chain.locate(vc);
    if (!loc) continue;
    vcs.push(vc);
    locs.push(loc);
  }
  return { vcs: Uint32Array.from(vcs), locs };
}

/**
 * Whole chain → sparse raw file of the virtual size (holes where the disk reads zeros). The
 * file is written front to back; syncs run behind the copy, and one at the end.
 */
export async function exportRaw(
  chainPath: string,
  raw: string,
  opts: ConvertOptions = {},
): Promise<void> {
  const fs = opts.fs ?? nodeFileSystem;
  const chain = await Chain.open(chainPath, { readOnly: true, fs });
  try {
    const out = await fs.open(raw, 'create');
    try {
      const cs = chain.clusterSize;
      const size = chain.virtualSize;
      const piece = Math.min(cs, PIECE_BYTES);
      const parts = cs / piece;
      const { vcs, locs } = mappedClusters(chain);
      const behind = new SyncBehind(() => out.sync(), opts.syncEvery);
      await streamPieces(
        vcs.length * parts,
        piece,
        async (i, buf) => {
          const n = Math.floor(i / parts);
          const offset = (i % parts) * piece;
          // The last cluster of a raw-only chain may end before a whole cluster.
          const len = Math.max(0, Math.min(piece, size - vcs[n]! * cs - offset));
          const part = buf.subarray(0, len);
          await readZeroFilled(locs[n]!.delta.file, part, locs[n]!.host + offset);
          return part;
        },
        async (i, data) => {
          const n = Math.floor(i / parts);
          if (data.length && !isZero(data)) {
            await out.write(data, vcs[n]! * cs + (i % parts) * piece);
            await behind.wrote(data.length);
          }
          if (i % parts === parts - 1) opts.progress?.(n + 1, vcs.length);
        },
      );
      await behind.drain();
      // The size is set last: writing into a file already truncated to its full size measured
      // clearly slower on ext4 than appending to it.
      await out.truncate(size);
      await out.sync();
    } finally {
      await out.close();
    }
  } finally {
    await chain.close();
  }
}

/** Whole chain → one new self-contained ploop image with the same cluster size. */
export async function flatten(
  chainPath: string,
  dst: string,
  opts: ConvertOptions = {},
): Promise<void> {
  const fs = opts.fs ?? nodeFileSystem;
  const chain = await Chain.open(chainPath, { readOnly: true, fs });
  try {
    const cs = chain.clusterSize;
    const version = chain.deltas.find((d) => d instanceof PloopImage)?.version ?? 2;
    const { vcs, locs } = mappedClusters(chain);
    await writeNewImage(
      dst,
      chain.virtualSize,
      { ...opts, clusterSize: cs, version: opts.version ?? version },
      {
        clusters: vcs,
        read: (n, _vc, offset, buf) =>
          readZeroFilled(locs[n]!.delta.file, buf, locs[n]!.host + offset),
        skipZero: false,
      },
    );
  } finally {
    await chain.close();
  }
}
