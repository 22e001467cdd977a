/** A summary of an image or a disk: geometry, allocation, and the chain. */
import { promises as fsp } from 'node:fs';
import { FileSystem, nodeFileSystem } from './io.js';
import { Chain, RawImage, resolveTarget } from './chain.js';
import { listSnapshots } from './disk.js';

export interface DeltaInfo {
  path: string;
  format: 'ploop' | 'raw';
  version: 1 | 2 | null;
  virtualSize: number;
  clusterSize: number;
  allocatedClusters: number | null;
  fileSize: number;
  /** Bytes the file takes on disk (holes excluded). */
  diskUsage: number;
  dirty: boolean;
  dataOffset: number | null;
}

export interface DiskInfo {
  path: string;
  kind: 'descriptor' | 'image';
  virtualSize: number;
  clusterSize: number;
  /** Base first. */
  deltas: DeltaInfo[];
  snapshots: { guid: string; parent: string; current: boolean; file: string }[];
}

export async function info(target: string, fs: FileSystem = nodeFileSystem): Promise<DiskInfo> {
  const t = await resolveTarget(target, fs);
  const chain = await Chain.open(t.path, { readOnly: true, fs });
  try {
    const deltas: DeltaInfo[] = [];
    for (const d of chain.deltas) {
      const st = await fsp.stat(d.path);
      const common = { path: d.path, fileSize: st.size, diskUsage: st.blocks * 512 };
      if (d instanceof RawImage) {
        deltas.push({
          ...common,
          format: 'raw',
          version: null,
          virtualSize: d.size,
          clusterSize: chain.clusterSize,
          allocatedClusters: null,
          dirty: false,
          dataOffset: null,
        });
      } else {
        deltas.push({
          ...common,
          format: 'ploop',
          version: d.version,
          virtualSize: d.virtualSize,
          clusterSize: d.clusterSize,
          allocatedClusters: d.allocatedClusters,
          dirty: d.header.inUse !== 0,
          // v1 may store 0 for "right after the BAT": report where data really starts.
          dataOffset: d.dataOffBytes,
        });
      }
    }
    const snapshots =
      t.kind === 'descriptor'
        ? (await listSnapshots(t.path, { fs })).map(({ guid, parent, current, file }) => ({
            guid,
            parent,
            current,
            file,
          }))
        : [];
    return {
      path: t.path,
      kind: t.kind,
      virtualSize: chain.virtualSize,
      clusterSize: chain.clusterSize,
      deltas,
      snapshots,
    };
  } finally {
    await chain.close();
  }
}
