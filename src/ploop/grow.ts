/**
 * Growing an image (ploop-format.md §4): the BAT may need more clusters, so data clusters in
 * the way are relocated first (copy → sync → entry → sync), then the new BAT area is zeroed,
 * then the header is written last.
 */
import { InvalidArgumentError, UnsupportedError } from './errors.js';
import { SECTOR, V1_MAX_SECTORS, batClusters, chs } from './header.js';
import { PloopImage, readZeroFilled } from './image.js';

export interface GrowOptions {
  /**
   * Keep clusters mapped past the old virtual size (but inside the BAT). Used for a merge
   * target: a chain reads a lower delta up to its BAT size, so that data is visible there.
   */
  keepBeyondSize?: boolean;
}

/** Grows an open read-write image to at least `size` bytes (rounded up to whole clusters). */
export async function growImage(
  img: PloopImage,
  size: number,
  opts: GrowOptions = {},
): Promise<void> {
  const cluster = img.clusterSize;
  const entries = Math.ceil(size / cluster);
  if (!Number.isSafeInteger(size) || size <= 0)
    throw new InvalidArgumentError(`invalid size ${size}`);
  if (entries < img.bat.length || entries * cluster < img.virtualSize) {
    throw new InvalidArgumentError(
      `cannot shrink ${img.path} from ${img.virtualSize} to ${size} bytes`,
    );
  }
  if (entries > 0xffffffff) throw new InvalidArgumentError(`size ${size} is too large`);
  const sizeSectors = entries * img.header.clusterSectors;
  if (img.version === 1 && sizeSectors > V1_MAX_SECTORS) {
    throw new InvalidArgumentError('version 1 images are limited to 2 TiB; convert to version 2');
  }
  if (img.dataOffBytes % cluster !== 0) {
    throw new UnsupportedError(`${img.path}: data offset is not cluster aligned; cannot grow`);
  }
  if (sizeSectors === img.header.sizeSectors && entries === img.bat.length) return;
  // What lay beyond the old virtual size becomes visible: it must read as zeros. Whole clusters
  // past it are unmapped, the tail of a partly visible last cluster is zeroed.
  const oldSize = img.virtualSize;
  const hide = !opts.keepBeyondSize;
  for (let vc = Math.ceil(oldSize / cluster); hide && vc < img.bat.length; vc++) {
    if (img.map(vc) >= 0) img.setEntry(vc, 0);
  }
  const lastHost = hide && oldSize % cluster ? img.map(Math.floor(oldSize / cluster)) : -1;
  if (lastHost >= 0) {
    await img.file.write(
      Buffer.alloc(cluster - (oldSize % cluster)),
      lastHost + (oldSize % cluster),
    );
  }
  // Settle pending releases now: a hole punched later could land in the grown BAT area.
  await img.flush();
  const oldBatClusters = img.dataOffBytes / cluster;
  const newBatClusters = batClusters(entries, cluster);

  if (newBatClusters > oldBatClusters) {
    const newDataOff = newBatClusters * cluster;
    // Future allocations must land after the new BAT area.
    img.reserveFrom(newDataOff);
    // Relocate every data cluster that lies where the BAT will grow.
    const moved: number[] = [];
    const buf = Buffer.alloc(cluster);
    for (let vc = 0; vc < img.bat.length; vc++) {
      const host = img.map(vc);
      if (host >= 0 && host < newDataOff) {
        await readZeroFilled(img.file, buf, host);
        const to = img.reserveCluster();
        await img.file.write(buf, to);
        img.setEntry(vc, to);
        moved.push(vc);
      }
    }
    if (moved.length) await img.flush(); // data, then entries
    // Zero the new BAT clusters (the old data there is now unreferenced).
    const zeros = Buffer.alloc(cluster);
    for (let c = oldBatClusters; c < newBatClusters; c++) await img.file.write(zeros, c * cluster);
    await img.file.sync();
  }
  const g = chs(sizeSectors);
  img.resizeBat(entries);
  img.updateHeader({
    batEntries: entries,
    sizeSectors,
    dataOff: (newBatClusters * cluster) / SECTOR,
    heads: g.heads,
    cylinders: g.cylinders,
  });
  await img.writeWholeBat();
  await img.file.sync();
  await img.commitHeader();
}
