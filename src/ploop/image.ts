/**
 * One ploop delta file: header + BAT in memory, cluster-granular access to its data area.
 *
 * Crash rules (ploop-format.md §5): the in-use flag is set and synced before the first metadata
 * change; a new cluster's data is made durable before the BAT entry that points at it is written;
 * the header is written last; a clean close clears the in-use flag.
 */
import { CorruptImageError, InvalidArgumentError, UnsupportedError } from './errors.js';
import {
  CIF_EMPTY,
  CIF_FMT_CONVERT,
  FormatVersion,
  HEADER_SIZE,
  Header,
  IN_USE,
  SECTOR,
  clusterBytes,
  decodeHeader,
  effectiveDataOff,
  encodeHeader,
  headerProblems,
  newHeader,
  virtualSize,
} from './header.js';
import { FileSystem, RandomAccessFile, closeInBackground, nodeFileSystem } from './io.js';
import { settleAll } from './settle.js';

/** ploop's reserved in-kernel marker; never a valid entry. */
export const BAT_ENTRY_NONE = 0xffffffff;
/** Upper bound for a BAT held in memory (4 GiB virtual per MiB; 256 TiB at 1 MiB clusters). */
const MAX_BAT_BYTES = 1 << 30;

export type ImageFormat = 'expanded' | 'preallocated' | 'raw';

export interface CreateImageOptions {
  size: number;
  clusterSize?: number;
  format?: ImageFormat;
  version?: FormatVersion;
  fs?: FileSystem;
}

export interface OpenImageOptions {
  readOnly?: boolean;
  fs?: FileSystem;
}

/** A problem found in a BAT entry (ploop-format.md §1.3). */
export interface EntryProblem {
  index: number;
  kind: 'beyond-eof' | 'in-bat-area' | 'misaligned' | 'duplicate' | 'reserved' | 'padding';
  entry: number;
}

/** Shared zeros, never written to (see zeroBytes). */
let zeroChunk: Buffer | null = null;

/**
 * Up to `n` (at most 1 MiB) zero bytes for writing zero-filled areas. One buffer serves every
 * such write: freshly allocated memory costs a page fault per page on first use, which on
 * virtual machines can make a new 1 MiB buffer cost more (measured: about 4 ms) than writing
 * and syncing it.
 */
export function zeroBytes(n: number): Buffer {
  zeroChunk ??= Buffer.alloc(1 << 20);
  return zeroChunk.subarray(0, Math.min(n, zeroChunk.length));
}

/** Reads exactly `buf.length` bytes at `pos`, zero-filling past EOF. */
export async function readZeroFilled(
  file: RandomAccessFile,
  buf: Uint8Array,
  pos: number,
): Promise<void> {
  const n = await file.read(buf, pos);
  if (n < buf.length) buf.fill(0, n);
}

/**
 * Writes the header and an empty BAT area (zeros up to data_off) of a new expanded image. The
 * header goes in a small buffer, the zeros come from the shared buffer (see zeroBytes), and the
 * two are written at the same time: nothing names the file yet, so their order does not matter.
 */
async function writeEmptyBatArea(f: RandomAccessFile, h: Header): Promise<void> {
  const dataOff = h.dataOff * SECTOR;
  const head = Buffer.alloc(Math.min(dataOff, 4096));
  encodeHeader(h).copy(head, 0);
  const zeros = async () => {
    for (let off = head.length; off < dataOff;) {
      const z = zeroBytes(dataOff - off);
      await f.write(z, off);
      off += z.length;
    }
  };
  await settleAll([f.write(head, 0), zeros()]);
}

export class PloopImage {
  /** Next host byte offset for an appended cluster. */
  private nextHost: number;
  /** BAT indices changed in memory and not yet written. */
  private readonly pendingBat = new Set<number>();
  /** Host ranges released since the last flush; punched once their BAT change is durable. */
  private released: number[] = [];
  /** The syncs started by `flushBehind` and the entry writes that follow them, if any. */
  private behind: Promise<void> | null = null;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly fs: FileSystem,
    readonly file: RandomAccessFile,
    readonly header: Header,
    public bat: Uint32Array,
    readonly readOnly: boolean,
    fileSize: number,
  ) {
    const dataOff = this.dataOffBytes;
    const used = Math.max(0, fileSize - dataOff);
    this.nextHost = dataOff + Math.ceil(used / this.clusterSize) * this.clusterSize;
    // Entries pointing past the end of the file are damage that repair unmaps: they must not
    // move the allocation point (to an offset the format cannot express, or terabytes away).
  }

  get version(): FormatVersion {
    return this.header.version;
  }
  get clusterSize(): number {
    return clusterBytes(this.header);
  }
  get virtualSize(): number {
    return virtualSize(this.header);
  }
  get dataOffBytes(): number {
    return effectiveDataOff(this.header) * SECTOR;
  }
  get fileEnd(): number {
    return this.nextHost;
  }

  entryToHost(entry: number): number {
    return this.version === 1 ? entry * SECTOR : entry * this.clusterSize;
  }
  hostToEntry(host: number): number {
    return this.version === 1 ? host / SECTOR : host / this.clusterSize;
  }

  /** Host byte offset of virtual cluster `vc` in this delta, or -1 when not mapped here. */
  map(vc: number): number {
    if (vc >= this.bat.length) return -1;
    const e = this.bat[vc]!;
    return e === 0 ? -1 : this.entryToHost(e);
  }

  /** End of the last referenced cluster (data_off when nothing is mapped). */
  usedEnd(): number {
    let max = 0;
    for (const e of this.bat) if (e > max) max = e;
    return max === 0 ? this.dataOffBytes : this.entryToHost(max) + this.clusterSize;
  }

  get allocatedClusters(): number {
    let n = 0;
    for (const e of this.bat) if (e) n++;
    return n;
  }

  // ---- creation --------------------------------------------------------------------------

  /** Creates a new image file (fails if it exists). Raw images are plain sparse files. */
  static async create(path: string, opts: CreateImageOptions): Promise<Header | null> {
    const fs = opts.fs ?? nodeFileSystem;
    const format = opts.format ?? 'expanded';
    const cluster = opts.clusterSize ?? 1 << 20;
    const h = newHeader(opts.size, cluster, opts.version ?? 2);
    const f = await fs.open(path, 'create');
    try {
      if (format === 'raw') {
        await f.truncate(virtualSize(h));
        await f.sync();
        return null;
      }
      const dataOff = h.dataOff * SECTOR;
      // The whole BAT area is written, zeros included: ploop 1.15 check rejects an image whose
      // BAT area is sparse or only allocated (fallocate'd), as "sparse".
      if (format === 'preallocated') {
        const area = Buffer.alloc(dataOff);
        encodeHeader(h).copy(area, 0);
        // Identity mapping: virtual cluster i lives at data_off + i·cluster (ploop-format.md §1.11).
        const step = h.version === 1 ? h.clusterSectors : 1;
        const first = h.version === 1 ? h.dataOff : h.dataOff / h.clusterSectors;
        for (let i = 0; i < h.batEntries; i++)
          area.writeUInt32LE(first + i * step, HEADER_SIZE + 4 * i);
        await f.allocate(dataOff, h.batEntries * cluster);
        await f.write(area, 0);
      } else {
        await writeEmptyBatArea(f, h);
      }
      await f.sync();
    } finally {
      await f.close();
    }
    return h;
  }

  /**
   * Creates an empty expanded image like `create`, for a size and version known only once
   * `geometry` resolves (a snapshot reads them from the current top): the new file is opened
   * meanwhile. On failure no file is left behind.
   */
  static async createFor(
    path: string,
    clusterSize: number,
    geometry: Promise<{ size: number; version: FormatVersion }>,
    fs: FileSystem = nodeFileSystem,
  ): Promise<Header> {
    const [opened, geo] = await Promise.allSettled([fs.open(path, 'create'), geometry]);
    if (opened.status === 'rejected') {
      throw geo.status === 'rejected' ? geo.reason : opened.reason;
    }
    const f = opened.value;
    try {
      if (geo.status === 'rejected') throw geo.reason;
      const h = newHeader(geo.value.size, clusterSize, geo.value.version);
      await writeEmptyBatArea(f, h);
      await f.sync();
      closeInBackground(f);
      return h;
    } catch (err) {
      await f.close().catch(() => undefined);
      await fs.unlink(path).catch(() => undefined);
      throw err;
    }
  }

  // ---- opening ---------------------------------------------------------------------------

  /**
   * Reads and validates only the header (not the BAT): what a snapshot needs of the top, at a
   * cost that does not depend on the size of the disk.
   */
  static async readHeader(path: string, fs: FileSystem = nodeFileSystem): Promise<Header> {
    const file = await fs.open(path, 'r');
    let header: Header;
    try {
      header = (await PloopImage.readCheckedHeader(path, file)).header;
    } catch (err) {
      await file.close();
      throw err;
    }
    closeInBackground(file);
    return header;
  }

  /** Reads the header and rejects what no open accepts (damage, pending conversion, huge BAT). */
  private static async readCheckedHeader(
    path: string,
    file: RandomAccessFile,
  ): Promise<{ header: Header; fileSize: number }> {
    const hb = Buffer.alloc(HEADER_SIZE);
    const [fileSize] = await Promise.all([file.size(), readZeroFilled(file, hb, 0)]);
    const header = decodeHeader(hb);
    if (!header) throw new CorruptImageError(path, 'not a ploop image (unknown signature)');
    const problems = headerProblems(header, fileSize);
    if (problems.length) throw new CorruptImageError(path, problems.join('; '));
    if (header.flags & CIF_FMT_CONVERT) {
      throw new UnsupportedError(`${path}: an interrupted format conversion is pending`);
    }
    if (4 * header.batEntries > MAX_BAT_BYTES) {
      throw new UnsupportedError(`${path}: BAT of ${header.batEntries} entries is too large`);
    }
    return { header, fileSize };
  }

  /** Reads and validates the header and BAT. Throws CorruptImageError for structural damage. */
  static async load(
    path: string,
    fs: FileSystem,
    readOnly: boolean,
  ): Promise<{ file: RandomAccessFile; header: Header; bat: Uint32Array; fileSize: number }> {
    const file = await fs.open(path, readOnly ? 'r' : 'rw');
    try {
      const { header } = await PloopImage.readCheckedHeader(path, file);
      const raw = Buffer.alloc(4 * header.batEntries);
      await readZeroFilled(file, raw, HEADER_SIZE);
      const bat = new Uint32Array(header.batEntries);
      for (let i = 0; i < bat.length; i++) bat[i] = raw.readUInt32LE(4 * i);
      // Measured again after the BAT: a writer (the device engine) writes a cluster before
      // its entry, so every entry read here points inside the file as it is now, while the
      // size from before the BAT read may predate the newest clusters.
      return { file, header, bat, fileSize: await file.size() };
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /**
   * Opens a delta. Read-write opens of an image left in use are refused here: run `check` with
   * repair first (the chain and the CLI do that automatically).
   */
  static async open(path: string, opts: OpenImageOptions = {}): Promise<PloopImage> {
    const fs = opts.fs ?? nodeFileSystem;
    const readOnly = opts.readOnly ?? false;
    const { file, header, bat, fileSize } = await PloopImage.load(path, fs, readOnly);
    const img = new PloopImage(path, fs, file, header, bat, readOnly, fileSize);
    try {
      const problems = img.entryProblems(fileSize);
      if (problems.length) {
        const p = problems[0]!;
        throw new CorruptImageError(
          path,
          `BAT entry ${p.index} (${p.entry}) is ${p.kind.replace(/-/g, ' ')}` +
            (problems.length > 1 ? ` (+${problems.length - 1} more problems)` : '') +
            '; run check --repair',
        );
      }
      if (!readOnly) {
        if (header.inUse !== 0) {
          throw new CorruptImageError(path, 'image was not closed cleanly; run check --repair');
        }
        await img.markInUse();
      }
      return img;
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** Opens without validating entries: for check/repair only. */
  static async openForRepair(path: string, fs: FileSystem, readOnly: boolean): Promise<PloopImage> {
    const { file, header, bat, fileSize } = await PloopImage.load(path, fs, readOnly);
    return new PloopImage(path, fs, file, header, bat, readOnly, fileSize);
  }

  /** Every structural problem of the BAT against a file of `fileSize` bytes. */
  entryProblems(fileSize: number): EntryProblem[] {
    const out: EntryProblem[] = [];
    const cluster = this.clusterSize;
    const dataOff = this.dataOffBytes;
    const seen = new Map<number, number>();
    for (let i = 0; i < this.bat.length; i++) {
      const e = this.bat[i]!;
      if (e === 0) continue;
      if (e === BAT_ENTRY_NONE) {
        out.push({ index: i, kind: 'reserved', entry: e });
        continue;
      }
      const host = this.entryToHost(e);
      if (host < dataOff) out.push({ index: i, kind: 'in-bat-area', entry: e });
      else if ((host - dataOff) % cluster !== 0)
        out.push({ index: i, kind: 'misaligned', entry: e });
      else if (host + cluster > fileSize) out.push({ index: i, kind: 'beyond-eof', entry: e });
      else if (seen.has(e)) out.push({ index: i, kind: 'duplicate', entry: e });
      else seen.set(e, i);
    }
    return out;
  }

  // ---- metadata writes -------------------------------------------------------------------

  private async writeHeader(): Promise<void> {
    await this.file.write(encodeHeader(this.header), 0);
  }

  /** Sets the in-use flag durably before any other change (ploop-format.md §1.6). */
  async markInUse(): Promise<void> {
    this.assertWritable();
    this.header.inUse = IN_USE;
    // A format extension is not kept across read-write use: drop the reference to it
    // (ploop-format.md §1.8); its cluster becomes garbage that compaction reclaims.
    this.header.extOff = 0;
    await this.writeHeader();
    await this.file.sync();
  }

  private assertWritable(): void {
    if (this.readOnly) throw new InvalidArgumentError(`${this.path} is open read-only`);
    if (this.closed) throw new InvalidArgumentError(`${this.path} is closed`);
  }

  /** Changes a BAT entry in memory; it reaches the disk at the next flush. */
  setEntry(vc: number, host: number): void {
    this.assertWritable();
    const old = this.bat[vc]!;
    if (old && host === 0) {
      const was = this.entryToHost(old);
      // Only a real data cluster is released: unmapping a damaged entry (misaligned, inside the
      // BAT area, reserved) must not punch a hole over the header, the BAT or good clusters.
      // Nor past the end of the file (nothing to free there; the offset may not even be valid).
      const dataOff = this.dataOffBytes;
      if (
        old !== BAT_ENTRY_NONE &&
        was >= dataOff &&
        (was - dataOff) % this.clusterSize === 0 &&
        was + this.clusterSize <= this.nextHost
      )
        this.released.push(was);
    }
    this.bat[vc] = host === 0 ? 0 : this.hostToEntry(host);
    this.pendingBat.add(vc);
  }

  /** Reserves a fresh cluster at the end of the file and returns its host offset. */
  reserveCluster(): number {
    this.assertWritable();
    const host = this.nextHost;
    this.nextHost += this.clusterSize;
    // 0xffffffff is the reserved marker in both versions, never an offset.
    if (this.version === 1 && this.hostToEntry(host) >= BAT_ENTRY_NONE) {
      throw new UnsupportedError(`${this.path}: version 1 image files cannot exceed 2 TiB`);
    }
    if (this.version === 2 && this.hostToEntry(host) >= BAT_ENTRY_NONE) {
      throw new UnsupportedError(`${this.path}: image file too large`);
    }
    return host;
  }

  /** Writes a whole new cluster for `vc` and maps it (the mapping is durable after flush). */
  async allocate(vc: number, data: Uint8Array): Promise<number> {
    const host = this.reserveCluster();
    await this.file.write(data, host);
    this.setEntry(vc, host);
    return host;
  }

  /**
   * Makes everything written so far durable: data first, then the BAT entries that point at it,
   * then releases (hole punch) of clusters no longer referenced.
   */
  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.settleBehind();
    await this.file.sync();
    if (this.pendingBat.size) {
      await this.writeBatEntries([...this.pendingBat]);
      this.pendingBat.clear();
      await this.file.sync();
    }
    if (this.released.length) {
      const hosts = this.released.sort((a, b) => a - b);
      this.released = [];
      // One hole per run of adjacent clusters: each punch is a process spawn (see io.ts).
      const cs = this.clusterSize;
      const referenced = this.referencedTest(hosts.length);
      let start = -1;
      let end = -1;
      for (const host of hosts) {
        if (host < end || referenced(host)) continue;
        if (host === end) {
          end += cs;
          continue;
        }
        if (start >= 0) await this.file.punchHole(start, end - start);
        start = host;
        end = host + cs;
      }
      if (start >= 0) await this.file.punchHole(start, end - start);
    }
  }

  /**
   * Starts what `flush` does while the caller goes on writing: a sync of the data written so
   * far, then the BAT entries changed so far, with the values they have now. Those entries are
   * written only once the sync returned, so they point at durable data; they become durable
   * themselves with the next sync. Entries changed later wait for a later (behind) flush. Only
   * call it when every cluster an entry changed so far points at has been completely written.
   * Returns at once; a second call may run next to it (its promise settles after this one's),
   * `flush` and `close` wait for every one in flight (and throw if one failed).
   */
  flushBehind(): Promise<void> {
    if (this.readOnly) return Promise.resolve();
    this.assertWritable();
    const indices = [...this.pendingBat];
    const values = indices.map((i) => this.bat[i]!);
    this.pendingBat.clear();
    // The sync starts at once, even next to an earlier one still running: it covers these
    // entries' data all the same, and the disk gets the next batch while that one ends. The
    // entries are written only after the earlier runs' entries, or an older value of a slot
    // changed twice could land last.
    const earlier = this.behind;
    const own = (async () => {
      await this.file.sync();
      if (earlier) await earlier.catch(() => undefined);
      // Only adjacent slots are joined: a slot in a gap may hold a newer, not yet durable value.
      await this.writeEntryValues(indices, values, 1);
    })();
    // On failure the entries are written by the next flush instead (which throws first).
    own.catch(() => indices.forEach((i) => this.pendingBat.add(i)));
    // Settles once the earlier ones have too, so `behind` covers every run still in flight.
    const run = settleAll([own, this.behind]);
    run.catch(() => undefined);
    this.behind = run;
    return run;
  }

  /** Waits for a `flushBehind` in progress and throws its error. */
  private async settleBehind(): Promise<void> {
    const p = this.behind;
    if (!p) return;
    try {
      await p;
    } finally {
      if (this.behind === p) this.behind = null;
    }
  }

  /** Whether a host cluster is referenced: a scan per question for a few, else one set. */
  private referencedTest(questions: number): (host: number) => boolean {
    if (questions <= 8) return (host) => this.bat.includes(this.hostToEntry(host));
    const entries = new Set(this.bat);
    return (host) => entries.has(this.hostToEntry(host));
  }

  /** Writes the given BAT slots, coalesced into runs. */
  private async writeBatEntries(indices: number[]): Promise<void> {
    await this.writeEntryValues(
      indices,
      indices.map((i) => this.bat[i]!),
      16,
    );
  }

  /**
   * Writes `values[k]` into BAT slot `indices[k]`, joined into runs where slots are at most
   * `maxGap` apart; the slots in the gaps are written with their values in memory, so only
   * join across gaps when every changed slot is among `indices`.
   */
  private async writeEntryValues(
    indices: number[],
    values: number[],
    maxGap: number,
  ): Promise<void> {
    const order = indices.map((_, k) => k).sort((a, b) => indices[a]! - indices[b]!);
    let i = 0;
    while (i < order.length) {
      let j = i;
      while (j + 1 < order.length && indices[order[j + 1]!]! - indices[order[j]!]! <= maxGap) j++;
      const first = indices[order[i]!]!;
      const last = indices[order[j]!]!;
      const buf = Buffer.alloc(4 * (last - first + 1));
      for (let k = first; k <= last; k++) buf.writeUInt32LE(this.bat[k]!, 4 * (k - first));
      for (let k = i; k <= j; k++) {
        const o = order[k]!;
        buf.writeUInt32LE(values[o]!, 4 * (indices[o]! - first));
      }
      await this.file.write(buf, HEADER_SIZE + 4 * first);
      i = j + 1;
    }
  }

  /** Rewrites the whole BAT area (entries and zero padding) from memory. */
  async writeWholeBat(): Promise<void> {
    const area = Buffer.alloc(this.dataOffBytes - HEADER_SIZE);
    for (let i = 0; i < this.bat.length; i++) area.writeUInt32LE(this.bat[i]!, 4 * i);
    await this.file.write(area, HEADER_SIZE);
    this.pendingBat.clear();
  }

  /** Replaces header fields (grow, repair); written by `commitHeader`. */
  updateHeader(fields: Partial<Header>): void {
    Object.assign(this.header, fields);
  }

  /** Writes the in-memory header now (keeping the in-use flag) and syncs. */
  async commitHeader(): Promise<void> {
    this.assertWritable();
    await this.writeHeader();
    await this.file.sync();
  }

  /** Resizes the in-memory BAT (grow); new entries are unmapped. */
  resizeBat(entries: number): void {
    const bat = new Uint32Array(entries);
    bat.set(this.bat.subarray(0, Math.min(entries, this.bat.length)));
    this.bat = bat;
  }

  /** Moves the allocation point (after the data area moved, in grow). */
  reserveFrom(host: number): void {
    this.nextHost = Math.max(this.nextHost, host);
  }

  /** Truncates the file so it ends at `end` (must be past every referenced cluster). */
  async truncateTo(end: number): Promise<void> {
    this.assertWritable();
    await this.file.truncate(end);
    this.nextHost = Math.max(end, this.dataOffBytes);
  }

  /** Flushes and closes; a read-write image is marked clean (in-use cleared, CIF_Empty exact). */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly) {
        await this.flush();
        // Like QEMU on close: nothing after the last referenced cluster stays in the file.
        const end = this.usedEnd();
        if (this.header.extOff === 0 && end < (await this.file.size()))
          await this.file.truncate(end);
        this.header.inUse = 0;
        // ext_off stays only if the extension cluster is still there (ploop-format.md §1.8).
        this.header.flags =
          (this.header.flags & ~CIF_EMPTY) | (this.allocatedClusters ? 0 : CIF_EMPTY);
        await this.writeHeader();
        await this.file.sync();
      }
    } finally {
      this.closed = true;
      await this.file.close();
    }
  }

  /** Closes without marking clean (used when an operation fails half-way). */
  async abandon(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // A flush still running in the background must not outlive the file handle.
    await this.behind?.catch(() => undefined);
    await this.file.close();
  }
}
