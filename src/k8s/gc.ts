/**
 * Orphan collection: pool volumes that no PersistentVolume names and pool snapshots that no
 * VolumeSnapshotContent names, left behind when a node was away during a delete, or by a
 * provisioner that timed out and gave up. Listing is read-only; deleting is asked for.
 */
import type { Pool } from '../pool/index.js';
import type { ClusterReferences } from './references.js';

export interface GcOptions {
  /** Delete what is found (otherwise only list it). */
  delete: boolean;
  /**
   * Younger entries are left alone: a volume exists before the provisioner creates its
   * PersistentVolume, a snapshot before its VolumeSnapshotContent has a handle.
   */
  minAgeMs: number;
  /** Volumes that are attached on this node right now; never collected. */
  inUse?: (volumeId: string) => boolean;
  now?: Date;
}

export interface Orphan {
  kind: 'volume' | 'snapshot';
  id: string;
  /** The CSI name it was created with (the PV or VolumeSnapshotContent name). */
  name: string;
  createdAt: string;
  sizeBytes: number;
  deleted: boolean;
  error?: string;
}

export interface GcReport {
  volumes: number;
  snapshots: number;
  /** False when the cluster's snapshots could not be listed: no snapshot is then an orphan. */
  snapshotsChecked: boolean;
  snapshotsUnknown?: string;
  /** Orphans younger than the minimum age, left for a later run. */
  tooYoung: number;
  /** Volumes without a PersistentVolume that are still attached, left alone. */
  inUse: number;
  orphans: Orphan[];
}

function age(createdAt: string, now: Date): number {
  const t = Date.parse(createdAt);
  // A record without a readable time is treated as brand new: never collected.
  return Number.isFinite(t) ? now.getTime() - t : -Infinity;
}

/**
 * Finds (and with `delete`, deletes) the orphans of `pool`. `references` must be listed after
 * the pool's contents were read, so that an entry whose object appears in between is seen:
 * pass a function, called after the pool listing.
 */
export async function collectOrphans(
  pool: Pool,
  references: () => Promise<ClusterReferences>,
  opts: GcOptions,
): Promise<GcReport> {
  const now = opts.now ?? new Date();
  const volumes = await pool.listVolumes();
  const snapshots = await pool.listSnapshots();
  const refs = await references();
  const report: GcReport = {
    volumes: volumes.length,
    snapshots: snapshots.length,
    snapshotsChecked: refs.snapshotHandles !== null,
    ...(refs.snapshotsUnknown ? { snapshotsUnknown: refs.snapshotsUnknown } : {}),
    tooYoung: 0,
    inUse: 0,
    orphans: [],
  };
  const candidates: Orphan[] = [];
  for (const v of volumes) {
    if (refs.volumeHandles.has(v.id)) continue;
    if (opts.inUse?.(v.id)) {
      report.inUse++;
      continue;
    }
    candidates.push({
      kind: 'volume',
      id: v.id,
      name: v.name,
      createdAt: v.createdAt,
      sizeBytes: v.capacityBytes,
      deleted: false,
    });
  }
  if (refs.snapshotHandles) {
    for (const s of snapshots) {
      if (refs.snapshotHandles.has(s.id)) continue;
      candidates.push({
        kind: 'snapshot',
        id: s.id,
        name: s.name,
        createdAt: s.createdAt,
        sizeBytes: s.sizeBytes,
        deleted: false,
      });
    }
  }
  for (const o of candidates) {
    if (age(o.createdAt, now) < opts.minAgeMs) {
      report.tooYoung++;
      continue;
    }
    if (opts.delete) {
      try {
        if (o.kind === 'volume') await pool.deleteVolume(o.id);
        else await pool.deleteSnapshot(o.id);
        o.deleted = true;
      } catch (err) {
        o.error = err instanceof Error ? err.message : String(err);
      }
    }
    report.orphans.push(o);
  }
  return report;
}
