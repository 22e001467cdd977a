/** Shared fixtures for the unit tests: temporary directories, patterns and raw header/BAT access. */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Chain, Header, HEADER_SIZE, decodeHeader, encodeHeader } from '../../src/ploop/index.js';

export const K64 = 64 << 10;
export const M1 = 1 << 20;

/** A fresh temporary directory; remove it with `removeDir`. */
export function makeTempDir(prefix = 'ploop-unit-'): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), prefix));
}

export function removeDir(dir: string): Promise<void> {
  return fsp.rm(dir, { recursive: true, force: true });
}

/** Deterministic non-zero bytes that differ per `seed` and per position. */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761 + 12345) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = (x & 0xff) | 1;
  }
  return b;
}

export function sha(buf: Uint8Array): string {
  return createHash('sha256').update(buf).digest('hex');
}

export async function fileHash(file: string): Promise<string> {
  return sha(await fsp.readFile(file));
}

export async function fileSize(file: string): Promise<number> {
  return (await fsp.stat(file)).size;
}

export async function readHeader(file: string): Promise<Header> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(HEADER_SIZE);
    await fh.read(b, 0, HEADER_SIZE, 0);
    const h = decodeHeader(b);
    if (!h) throw new Error(`${file} has no ploop header`);
    return h;
  } finally {
    await fh.close();
  }
}

export async function writeHeader(file: string, h: Header): Promise<void> {
  await writeBytes(file, 0, encodeHeader(h));
}

export async function patchHeader(file: string, fields: Partial<Header>): Promise<void> {
  await writeHeader(file, { ...(await readHeader(file)), ...fields });
}

export async function writeBytes(file: string, pos: number, data: Uint8Array): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    await fh.write(data, 0, data.length, pos);
  } finally {
    await fh.close();
  }
}

export async function readBytes(file: string, pos: number, length: number): Promise<Buffer> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, pos);
    return b;
  } finally {
    await fh.close();
  }
}

export async function readU32(file: string, pos: number): Promise<number> {
  return (await readBytes(file, pos, 4)).readUInt32LE(0);
}

export async function writeU32(file: string, pos: number, value: number): Promise<void> {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value >>> 0, 0);
  await writeBytes(file, pos, b);
}

/** BAT entry `i` as stored in the file. */
export function readEntry(file: string, i: number): Promise<number> {
  return readU32(file, HEADER_SIZE + 4 * i);
}

export function writeEntry(file: string, i: number, value: number): Promise<void> {
  return writeU32(file, HEADER_SIZE + 4 * i, value);
}

/** The whole virtual disk of a chain (or image/descriptor path). */
export async function readDisk(target: string | Chain): Promise<Buffer> {
  const chain = typeof target === 'string' ? await Chain.open(target, { readOnly: true }) : target;
  try {
    const buf = Buffer.alloc(chain.virtualSize);
    await chain.read(buf, 0);
    return buf;
  } finally {
    if (typeof target === 'string') await chain.close();
  }
}

/** Writes `data` at `offset` through a read-write chain and closes it. */
export async function writeDisk(target: string, offset: number, data: Uint8Array): Promise<void> {
  const chain = await Chain.open(target);
  try {
    await chain.write(data, offset);
    await chain.flush();
  } finally {
    await chain.close();
  }
}

/** '' when equal, else where they first differ (fast, and a short message for large buffers). */
export function byteDiff(actual: Uint8Array, expected: Uint8Array): string {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.length);
  const e = Buffer.from(expected.buffer, expected.byteOffset, expected.length);
  if (a.length === e.length && a.equals(e)) return '';
  const n = Math.min(a.length, e.length);
  let i = 0;
  while (i < n && a[i] === e[i]) i++;
  return `length ${a.length} vs ${e.length}, first difference at ${i}: ${a[i]} vs ${e[i]}`;
}
