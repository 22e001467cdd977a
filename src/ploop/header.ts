/**
 * The 64-byte ploop/parallels header (ploop-format.md §1.2) and the geometry rules derived from it.
 * Pure functions: no I/O.
 */
import { InvalidArgumentError } from './errors.js';

export const SECTOR = 512;
export const HEADER_SIZE = 64;
export const SIG_V1 = 'WithoutFreeSpace';
export const SIG_V2 = 'WithouFreSpacExt';
export const IMAGE_TYPE = 2;
/** "Ynot": the image is open read-write or was not closed cleanly. */
export const IN_USE = 0x746f6e59;
/** "v2.1": closed by software that knows format extensions; ploop 1.15 treats it as dirty. */
export const CLOSED_V21 = 0x312e3276;
export const CIF_EMPTY = 1;
export const CIF_FMT_CONVERT = 2;

export const MIN_CLUSTER = 64 << 10;
export const MAX_CLUSTER = 64 << 20;
export const DEFAULT_CLUSTER = 1 << 20;
/** v1 stores sizes and BAT entries as u32 sector counts. */
export const V1_MAX_SECTORS = 0xffffffff;

export type FormatVersion = 1 | 2;

export interface Header {
  version: FormatVersion;
  type: number;
  heads: number;
  cylinders: number;
  /** Cluster size in sectors (the field ploop calls m_Sectors). */
  clusterSectors: number;
  /** Number of BAT entries (m_Size). */
  batEntries: number;
  /** Virtual size in sectors. */
  sizeSectors: number;
  inUse: number;
  /** Start of the data area in sectors (m_FirstBlockOffset). */
  dataOff: number;
  flags: number;
  /** Format extension offset in sectors, 0 if none. */
  extOff: number;
}

/** Structural problems of a header; empty when it can be opened. */
export interface HeaderProblem {
  message: string;
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function clusterBytes(h: Pick<Header, 'clusterSectors'>): number {
  return h.clusterSectors * SECTOR;
}

/** Clusters taken by header + BAT for `entries` entries (dm-ploop requires data_off exactly this). */
export function batClusters(entries: number, cluster: number): number {
  return Math.ceil((HEADER_SIZE + 4 * entries) / cluster);
}

/** ploop's CHS choice (ploop-format.md §1.12); informational only, never validated. */
export function chs(sectors: number): { cylinders: number; heads: number; sectors: number } {
  if (sectors > 1032192 && sectors < 16777216) {
    return { sectors: 63, heads: 16, cylinders: Math.floor(sectors / 1008) };
  }
  const s = [63, 32, 16, 8].find((d) => sectors % d === 0);
  if (s === undefined) return { sectors: 1, heads: 1, cylinders: sectors };
  const h = [16, 8, 4, 2].find((d) => (sectors / s) % d === 0);
  if (h === undefined) return { sectors: 1, heads: 1, cylinders: sectors };
  return { sectors: s, heads: h, cylinders: sectors / s / h };
}

/**
 * Parses a size with an optional K/M/G/T suffix (powers of 1024). Plain numbers are bytes.
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+)\s*([kmgtp]?)(i?b)?\s*$/i.exec(text);
  if (!m) throw new InvalidArgumentError(`invalid size "${text}" (use e.g. 512M, 10G)`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 }[
    m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't' | 'p'
  ];
  const v = Number(m[1]) * mult;
  if (!Number.isSafeInteger(v)) throw new InvalidArgumentError(`size "${text}" is too large`);
  return v;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  return `${v} ${units[i]}`;
}

/** Validates a cluster size for new images (64 KiB … 64 MiB, a power of two). */
export function checkClusterSize(cluster: number): void {
  if (!isPowerOfTwo(cluster) || cluster < MIN_CLUSTER || cluster > MAX_CLUSTER) {
    throw new InvalidArgumentError(
      `cluster size ${cluster} must be a power of two from 64K to 64M`,
    );
  }
}

/** A header for a new empty image of `size` bytes (rounded up to whole clusters). */
export function newHeader(size: number, cluster: number, version: FormatVersion): Header {
  checkClusterSize(cluster);
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new InvalidArgumentError(`size must be a positive number of bytes, got ${size}`);
  }
  const entries = Math.ceil(size / cluster);
  const clusterSectors = cluster / SECTOR;
  const sizeSectors = entries * clusterSectors;
  if (entries > 0xffffffff) throw new InvalidArgumentError(`size ${size} needs too many clusters`);
  if (version === 1 && sizeSectors > V1_MAX_SECTORS) {
    throw new InvalidArgumentError('version 1 images are limited to 2 TiB; use version 2');
  }
  const dataOff = batClusters(entries, cluster) * clusterSectors;
  if (dataOff > 0xffffffff) throw new InvalidArgumentError(`size ${size} is too large`);
  const g = chs(sizeSectors);
  return {
    version,
    type: IMAGE_TYPE,
    heads: g.heads,
    cylinders: g.cylinders,
    clusterSectors,
    batEntries: entries,
    sizeSectors,
    inUse: 0,
    dataOff,
    flags: CIF_EMPTY,
    extOff: 0,
  };
}

export function encodeHeader(h: Header): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.write(h.version === 1 ? SIG_V1 : SIG_V2, 0, 'latin1');
  b.writeUInt32LE(h.type, 0x10);
  b.writeUInt32LE(h.heads >>> 0, 0x14);
  b.writeUInt32LE(Math.min(h.cylinders, 0xffffffff) >>> 0, 0x18);
  b.writeUInt32LE(h.clusterSectors, 0x1c);
  b.writeUInt32LE(h.batEntries, 0x20);
  b.writeBigUInt64LE(BigInt(h.sizeSectors), 0x24);
  b.writeUInt32LE(h.inUse >>> 0, 0x2c);
  b.writeUInt32LE(h.dataOff, 0x30);
  b.writeUInt32LE(h.flags >>> 0, 0x34);
  b.writeBigUInt64LE(BigInt(h.extOff), 0x38);
  return b;
}

/**
 * Decodes the raw fields. Returns null when the signature is not a ploop one (the file may be a
 * raw image); throws nothing: structural validation is `headerProblems`.
 */
export function decodeHeader(buf: Uint8Array): Header | null {
  if (buf.length < HEADER_SIZE) return null;
  const b = Buffer.from(buf.buffer, buf.byteOffset, HEADER_SIZE);
  const sig = b.toString('latin1', 0, 16);
  const version: FormatVersion | null = sig === SIG_V1 ? 1 : sig === SIG_V2 ? 2 : null;
  if (version === null) return null;
  let sizeSectors = b.readBigUInt64LE(0x24);
  // v1 keeps only the low word (the high word is "Unused"; QEMU masks it too).
  if (version === 1) sizeSectors &= 0xffffffffn;
  const extOff = b.readBigUInt64LE(0x38);
  return {
    version,
    type: b.readUInt32LE(0x10),
    heads: b.readUInt32LE(0x14),
    cylinders: b.readUInt32LE(0x18),
    clusterSectors: b.readUInt32LE(0x1c),
    batEntries: b.readUInt32LE(0x20),
    sizeSectors: sizeSectors > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(sizeSectors),
    inUse: b.readUInt32LE(0x2c),
    dataOff: b.readUInt32LE(0x30),
    flags: b.readUInt32LE(0x34),
    extOff: extOff > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(extOff),
  };
}

/**
 * Problems that make the header unusable (ploop-format.md §1.2–1.5). `fileSize` bounds the BAT so
 * a damaged header never causes a huge allocation.
 */
export function headerProblems(h: Header, fileSize: number): string[] {
  const p: string[] = [];
  if (h.type !== IMAGE_TYPE) p.push(`unknown image type ${h.type} (expected 2)`);
  // Readable cluster sizes: any power of two from one sector to 64 MiB (ploop and QEMU images).
  if (!isPowerOfTwo(h.clusterSectors) || h.clusterSectors > MAX_CLUSTER / SECTOR) {
    p.push(`invalid cluster size of ${h.clusterSectors} sectors`);
    return p;
  }
  if (!Number.isFinite(h.sizeSectors)) p.push('virtual size out of range');
  else if (h.batEntries * h.clusterSectors < h.sizeSectors) {
    p.push(`BAT of ${h.batEntries} entries does not cover ${h.sizeSectors} sectors`);
  }
  const batEnd = HEADER_SIZE + 4 * h.batEntries;
  const dataOffBytes = effectiveDataOff(h) * SECTOR;
  if (dataOffBytes < batEnd) p.push(`data offset ${h.dataOff} lies inside the BAT`);
  if (h.version === 2 && (h.dataOff === 0 || h.dataOff % h.clusterSectors !== 0)) {
    p.push(`data offset ${h.dataOff} is not a non-zero cluster multiple`);
  }
  if (batEnd > fileSize) p.push(`file of ${fileSize} bytes is shorter than its BAT`);
  if (!Number.isFinite(h.extOff)) p.push('format extension offset out of range');
  return p;
}

/** data_off in sectors; v1 allows 0 meaning "right after the BAT, sector aligned". */
export function effectiveDataOff(h: Header): number {
  if (h.dataOff !== 0) return h.dataOff;
  return Math.ceil((HEADER_SIZE + 4 * h.batEntries) / SECTOR);
}

export function virtualSize(h: Header): number {
  return h.sizeSectors * SECTOR;
}
