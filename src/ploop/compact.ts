/**
 * Compaction: moves the clusters at the end of the file into unreferenced slots nearer the
 * start, then truncates, so space released by discard or leaked by a crash is returned.
 * Each move is copy → sync → entry → sync, so a crash leaves either the old or the new mapping.
 */
import { PloopImage, readZeroFilled } from './image.js';
import { Progress } from './copy.js';

export interface CompactResult {
  before: number;
  after: number;
  moved: number;
}

export async function compactImage(img: PloopImage, progress?: Progress): Promise<CompactResult> {
  await img.flush();
  const cluster = img.clusterSize;
  const dataOff = img.dataOffBytes;
  const before = await img.file.size();
  // Owner of every used slot, by slot number.
  const owner = new Map<number, number>();
  for (let vc = 0; vc < img.bat.length; vc++) {
    const host = img.map(vc);
    if (host >= 0) owner.set((host - dataOff) / cluster, vc);
  }
  const used = owner.size;
  const holes: number[] = [];
  for (let slot = 0; slot < used; slot++) if (!owner.has(slot)) holes.push(slot);
  const tail = [...owner.keys()].filter((slot) => slot >= used).sort((a, b) => b - a);
  const buf = Buffer.alloc(cluster);
  const batch = 64;
  let moved = 0;
  for (let i = 0; i < tail.length; i += batch) {
    const part = tail.slice(i, i + batch);
    for (let k = 0; k < part.length; k++) {
      const from = part[k]!;
      const to = holes[i + k]!;
      await readZeroFilled(img.file, buf, dataOff + from * cluster);
      await img.file.write(buf, dataOff + to * cluster);
      img.setEntry(owner.get(from)!, dataOff + to * cluster);
    }
    await img.flush(); // copies durable, then the entries
    moved += part.length;
    progress?.(moved, tail.length);
  }
  const end = dataOff + used * cluster;
  if (end < before && img.header.extOff === 0) await img.truncateTo(end);
  await img.file.sync();
  return { before, after: await img.file.size(), moved };
}
