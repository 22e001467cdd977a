/**
 * Inputs for the benchmarks: raw files and ploop disks full of incompressible data, built
 * outside the timed regions.
 */
import { randomFillSync } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { BASE_IMAGE_NAME, Chain, PloopImage, createDisk } from '../src/ploop/index.js';
import { MiB } from './util.js';

/** Generation and write granularity: a multiple of every cluster size the benchmarks use. */
const CHUNK = 8 * MiB;

/** Calls `fn` with fresh random bytes for each chunk of [offset, offset + length). */
async function forRandomChunks(
  offset: number,
  length: number,
  fn: (buf: Buffer, pos: number) => Promise<void>,
): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(CHUNK, length));
  for (let done = 0; done < length; done += buf.length) {
    const part = buf.subarray(0, Math.min(buf.length, length - done));
    randomFillSync(part);
    await fn(part, offset + done);
  }
}

/** Writes a raw file of `size` random bytes and makes it durable. */
export async function writeRandomFile(file: string, size: number): Promise<void> {
  const fh = await fsp.open(file, 'wx');
  try {
    await forRandomChunks(0, size, async (buf, pos) => {
      let n = 0;
      while (n < buf.length) {
        n += (await fh.write(buf, n, buf.length - n, pos + n)).bytesWritten;
      }
    });
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** Writes random bytes to [offset, offset + length) of a disk's current top, then closes it. */
export async function writeRandomToDisk(
  ddPath: string,
  offset: number,
  length: number,
): Promise<void> {
  const chain = await Chain.open(ddPath);
  try {
    await forRandomChunks(offset, length, (buf, pos) => chain.write(buf, pos));
    await chain.flush();
  } finally {
    await chain.close();
  }
}

/** Creates a disk directory of `size` bytes and returns its descriptor path. */
export async function newDisk(dir: string, size: number, clusterSize: number): Promise<string> {
  const { descriptorPath } = await createDisk(dir, { size, clusterSize });
  return descriptorPath;
}

/**
 * Maps every cluster of a fresh disk's base image to space reserved with fallocate(2) instead
 * of written data. The image is indistinguishable from a full one to anything that reads only
 * the header and BAT (as a snapshot does), and it costs no writing time.
 */
export async function mapAllClustersAllocated(dir: string): Promise<void> {
  const img = await PloopImage.open(path.join(dir, BASE_IMAGE_NAME));
  try {
    const cs = img.clusterSize;
    const first = img.fileEnd;
    for (let vc = 0; vc < img.bat.length; vc++) img.setEntry(vc, img.reserveCluster());
    // The space exists (and is synced) before the entries that point at it are written.
    await img.file.allocate(first, img.fileEnd - first);
    await img.file.sync();
    if (img.fileEnd !== first + img.bat.length * cs) throw new Error('unexpected layout');
  } catch (err) {
    await img.abandon();
    throw err;
  }
  await img.close();
}
