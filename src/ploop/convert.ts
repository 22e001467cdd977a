/**
 * Conversions: raw file → ploop image (zero clusters skipped), any chain → sparse raw file, and
 * flattening a chain into one new image.
 */
import * as path from 'node:path';
import { InvalidArgumentError } from './errors.js';
import { FileSystem, nodeFileSystem } from './io.js';
import { Chain, isZero } from './chain.js';
import { PloopImage, readZeroFilled } from './image.js';
import { FormatVersion } from './header.js';
import { BufferPool, Progress, forEachLimited } from './copy.js';

export interface ConvertOptions {
  clusterSize?: number;
  version?: FormatVersion;
  fs?: FileSystem;
  progress?: Progress;
}

/** Clusters copied between flushes of the destination (bounds memory and crash loss). */
const BATCH = 256;
const PARALLEL = 4;

/**
 * Copies clusters chosen by `source` into a new image at `dst` of `size` bytes. `source` gets a
 * reused buffer holding stale bytes: it fills all of it and returns true, or returns false.
 */
async function writeNewImage(
  dst: string,
  size: number,
  opts: ConvertOptions,
  clusters: number,
  source: (vc: number, buf: Buffer) => Promise<boolean>,
): Promise<void> {
  const fs = opts.fs ?? nodeFileSystem;
  await PloopImage.create(dst, { size, clusterSize: opts.clusterSize, version: opts.version, fs });
  // The new name must be durable too, or a finished import can vanish in a crash.
  await fs.syncDir(path.dirname(dst));
  const img = await PloopImage.open(dst, { fs });
  try {
    const pool = new BufferPool(img.clusterSize);
    for (let b = 0; b < clusters; b += BATCH) {
      const n = Math.min(BATCH, clusters - b);
      await forEachLimited(n, PARALLEL, (i) =>
        pool.with(async (buf) => {
          if (await source(b + i, buf)) await img.allocate(b + i, buf);
        }),
      );
      await img.flush();
      opts.progress?.(b + n, clusters);
    }
    await img.close();
  } catch (err) {
    await img.abandon();
    throw err;
  }
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
    await writeNewImage(dst, size, opts, Math.ceil(size / cs), async (vc, buf) => {
      await readZeroFilled(src, buf, vc * cs);
      return !isZero(buf);
    });
  } finally {
    await src.close();
  }
}

/** Whole chain → sparse raw file of the virtual size (holes where the disk reads zeros). */
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
      await out.truncate(size);
      const clusters = Math.ceil(size / cs);
      const pool = new BufferPool(cs);
      await forEachLimited(
        clusters,
        PARALLEL,
        async (vc) => {
          const loc = chain.locate(vc);
          if (!loc) return;
          await pool.with(async (whole) => {
            const buf = whole.subarray(0, Math.min(cs, size - vc * cs));
            await readZeroFilled(loc.delta.file, buf, loc.host);
            if (!isZero(buf)) await out.write(buf, vc * cs);
          });
        },
        opts.progress,
      );
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
    await writeNewImage(
      dst,
      chain.virtualSize,
      { ...opts, clusterSize: cs, version: opts.version ?? version },
      Math.ceil(chain.virtualSize / cs),
      async (vc, buf) => {
        const loc = chain.locate(vc);
        if (!loc) return false;
        await readZeroFilled(loc.delta.file, buf, loc.host);
        return true;
      },
    );
  } finally {
    await chain.close();
  }
}
