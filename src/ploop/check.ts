/**
 * Consistency check and repair of one delta (ploop-format.md §4 "ploop check", §5 repair matrix).
 * Repairs never invent data: entries that cannot be trusted are unmapped, duplicates are split
 * by copying, and the file is trimmed or padded to whole clusters.
 */
import { CorruptImageError, PloopError } from './errors.js';
import { CIF_EMPTY, CLOSED_V21, HEADER_SIZE, IN_USE, SECTOR, decodeHeader } from './header.js';
import { FileSystem, nodeFileSystem } from './io.js';
import { BAT_ENTRY_NONE, PloopImage, readZeroFilled } from './image.js';

/** First 8 bytes of a format-extension cluster (ploop-format.md §1.8). */
const EXT_MAGIC = 0xab234cef23dcea87n;

export type Severity = 'error' | 'warning' | 'info';

export interface CheckFinding {
  severity: Severity;
  message: string;
  fixed: boolean;
}

export interface CheckReport {
  path: string;
  /** No error remains (after repair, when repairing). */
  clean: boolean;
  findings: CheckFinding[];
  allocatedClusters: number;
  /** Clusters in the data area no entry references (reclaimed by compact). */
  unreferencedClusters: number;
}

/** True when the header carries the in-use flag (or any non-zero value there). */
export async function isDirty(file: string, fs: FileSystem = nodeFileSystem): Promise<boolean> {
  const f = await fs.open(file, 'r');
  try {
    const hb = Buffer.alloc(HEADER_SIZE);
    await readZeroFilled(f, hb, 0);
    const h = decodeHeader(hb);
    return h !== null && h.inUse !== 0;
  } finally {
    await f.close();
  }
}

export interface CheckOptions {
  repair?: boolean;
  fs?: FileSystem;
}

export async function checkImage(file: string, opts: CheckOptions = {}): Promise<CheckReport> {
  const fs = opts.fs ?? nodeFileSystem;
  const repair = opts.repair ?? false;
  const findings: CheckFinding[] = [];
  let img: PloopImage;
  try {
    img = await PloopImage.openForRepair(file, fs, !repair);
  } catch (err) {
    if (err instanceof PloopError && err.code !== 'IO' && err.code !== 'NOT_FOUND') {
      // The report names the file already: keep the reason only.
      const message = err.message.startsWith(`${file}: `)
        ? err.message.slice(file.length + 2)
        : err.message;
      return {
        path: file,
        clean: false,
        findings: [{ severity: 'error', message, fixed: false }],
        allocatedClusters: 0,
        unreferencedClusters: 0,
      };
    }
    throw err;
  }
  const note = (severity: Severity, message: string, fixed = false) =>
    findings.push({ severity, message, fixed });
  let ok = false;
  try {
    const h = img.header;
    const cluster = img.clusterSize;
    const dataOff = img.dataOffBytes;
    let fileSize = await img.file.size();
    // Read before markInUse, which drops the reference to a format extension.
    const extOff = h.extOff;
    if (h.inUse === IN_USE) note('error', 'image was not closed cleanly (in-use flag set)', repair);
    else if (h.inUse === CLOSED_V21)
      note('info', 'closed by software that knows format extensions');
    else if (h.inUse !== 0) note('error', `unknown in-use value 0x${h.inUse.toString(16)}`, repair);
    if (repair) {
      // Set the in-use flag durably before changing anything else.
      await img.markInUse();
    }

    // A file length that is not a whole number of clusters: pad it (keeps any data).
    const tail = (fileSize - dataOff) % cluster;
    if (fileSize > dataOff && tail !== 0) {
      note('error', `file size ${fileSize} is not a whole number of clusters`, repair);
      if (repair) {
        fileSize += cluster - tail;
        await img.file.truncate(fileSize);
      }
    }

    // Padding after the last entry up to data_off must be zero (only what the file holds: a
    // damaged data_off may lie far beyond it).
    const padLen = Math.min(dataOff, fileSize) - HEADER_SIZE - 4 * img.bat.length;
    if (padLen > 0) {
      const pad = Buffer.alloc(padLen);
      await readZeroFilled(img.file, pad, HEADER_SIZE + 4 * img.bat.length);
      if (pad.some((b) => b !== 0)) {
        note('error', 'non-zero BAT slots beyond the disk size', repair);
        if (repair) await img.file.write(Buffer.alloc(padLen), HEADER_SIZE + 4 * img.bat.length);
      }
    }

    const problems = img.entryProblems(fileSize);
    const dupCopies: number[] = [];
    for (const p of problems) {
      const what = `BAT entry ${p.index} (0x${p.entry.toString(16)})`;
      switch (p.kind) {
        case 'beyond-eof':
          note('error', `${what} points beyond the end of the file`, repair);
          break;
        case 'in-bat-area':
          note('error', `${what} points into the header/BAT area`, repair);
          break;
        case 'misaligned':
          note('error', `${what} is not cluster aligned`, repair);
          break;
        case 'reserved':
          note('error', `${what} holds the reserved value 0xffffffff`, repair);
          break;
        case 'duplicate':
          note('error', `${what} references a cluster another entry uses`, repair);
          dupCopies.push(p.index);
          continue;
        case 'padding':
          break;
      }
      if (repair) img.setEntry(p.index, 0);
    }
    if (repair) {
      // Data the bad entries pointed at was never durable; unmapping them loses nothing flushed.
      for (const index of dupCopies) {
        const data = Buffer.alloc(cluster);
        await readZeroFilled(img.file, data, img.entryToHost(img.bat[index]!));
        const host = img.reserveCluster();
        await img.file.write(data, host);
        img.setEntry(index, host); // durable after the data, at flush
      }
    }

    // Unreferenced clusters: leaked by a crash, or freed by discard.
    const used = new Set<number>();
    // Without repair the damaged entries are still mapped: they point at no real cluster.
    const bad = new Set(repair ? [] : problems.map((p) => p.index));
    img.bat.forEach((e, i) => {
      if (e && e !== BAT_ENTRY_NONE && !bad.has(i)) used.add(img.entryToHost(e));
    });
    let keepEnd = dataOff;
    for (const host of used) keepEnd = Math.max(keepEnd, host + cluster);
    if (extOff) {
      const extStart = extOff * SECTOR;
      let valid = extStart >= dataOff && extStart + cluster <= fileSize;
      if (valid) {
        const magic = Buffer.alloc(8);
        await readZeroFilled(img.file, magic, extStart);
        valid = magic.readBigUInt64LE(0) === EXT_MAGIC;
      }
      if (!valid) {
        note('error', 'format extension offset points at no extension', repair);
        if (repair) img.updateHeader({ extOff: 0 });
      } else if (repair) {
        // Not kept across read-write use (ploop-format.md §1.8): its cluster is trimmed.
        note('info', 'format extension dropped', true);
      } else {
        used.add(extStart);
        keepEnd = Math.max(keepEnd, extStart + cluster);
      }
    }
    let unreferenced = 0;
    for (let host = dataOff; host < keepEnd; host += cluster) if (!used.has(host)) unreferenced++;
    if (unreferenced > 0) {
      note('info', `${unreferenced} unreferenced clusters inside the file (reclaim with compact)`);
    }
    const tailClusters = Math.ceil(Math.max(0, fileSize - keepEnd) / cluster);
    if (tailClusters > 0) {
      note('info', `${tailClusters} unreferenced clusters at the end of the file`, repair);
    }
    const allocated = img.allocatedClusters;
    const emptyFlag = (h.flags & CIF_EMPTY) !== 0;
    if (emptyFlag && allocated > 0)
      note('info', 'CIF_Empty flag set on an image with data', repair);

    if (repair) {
      await img.flush();
      // Anything after the last used cluster (or a kept extension) is leaked: trim it.
      if (keepEnd < fileSize) await img.truncateTo(keepEnd);
      await img.close(); // clears in-use, recomputes CIF_Empty, header last
    }
    ok = true;
    const clean = findings.every((f) => f.severity !== 'error' || f.fixed);
    return {
      path: file,
      clean,
      findings,
      allocatedClusters: allocated,
      unreferencedClusters: unreferenced + (repair ? 0 : tailClusters),
    };
  } finally {
    if (!ok || !repair) await img.abandon();
  }
}

/** Repairs an image (check with repair). */
export function repairImage(file: string, fs: FileSystem = nodeFileSystem): Promise<CheckReport> {
  return checkImage(file, { repair: true, fs });
}

/** Throws when the report has unrepaired errors. */
export function assertClean(r: CheckReport): void {
  if (!r.clean) {
    const first = r.findings.find((f) => f.severity === 'error' && !f.fixed);
    throw new CorruptImageError(r.path, first?.message ?? 'check failed');
  }
}
