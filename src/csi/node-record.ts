/**
 * The per-volume node record, `node.json` beside the volume's descriptor: what the node service
 * staged and published where. The controller reads it too, to refuse deleting a volume in use.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { DeviceListEntry } from '../blockdev/client.js';
import { nodeFileSystem, writeFileAtomic } from '../ploop/index.js';
import type { Pool } from '../pool/index.js';

export type AccessType = 'mount' | 'block';

export interface StageRecord {
  stagingTargetPath: string;
  accessType: AccessType;
  /** The file system mounted at the staging path (mount access). */
  fsType: string | null;
  mountFlags: string[];
  accessMode: string;
  /** The block device at stage time (/dev/ublkbN). */
  device: string;
  stagedAt: string;
}

export interface PublishRecord {
  accessType: AccessType;
  readonly: boolean;
  accessMode: string;
  mountFlags: string[];
}

export interface NodeRecord {
  staged: StageRecord | null;
  published: Record<string, PublishRecord>;
}

const RECORD_NAME = 'node.json';

export const emptyRecord = (): NodeRecord => ({ staged: null, published: {} });

export async function readRecord(pool: Pool, id: string): Promise<NodeRecord> {
  try {
    const r = JSON.parse(
      await fsp.readFile(path.join(pool.volumeDir(id), RECORD_NAME), 'utf8'),
    ) as Partial<NodeRecord>;
    return { staged: r.staged ?? null, published: r.published ?? {} };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyRecord();
    // A damaged record says nothing: the mount table and blockd are asked instead.
    return emptyRecord();
  }
}

export async function writeRecord(pool: Pool, id: string, r: NodeRecord): Promise<void> {
  const file = path.join(pool.volumeDir(id), RECORD_NAME);
  if (!r.staged && Object.keys(r.published).length === 0) {
    await fsp.rm(file, { force: true });
    return;
  }
  await writeFileAtomic(nodeFileSystem, file, JSON.stringify(r, null, 2));
}

/**
 * Why a volume cannot be deleted now, or null when nothing holds it: a staging or publication
 * recorded on this node, or a device that blockd serves from the volume's descriptor. `devices`
 * is blockd's device list where the node service runs (null on a controller-only server).
 */
export async function volumeInUse(
  pool: Pool,
  id: string,
  devices: readonly DeviceListEntry[] | null,
): Promise<string | null> {
  const dd = path.resolve(pool.volumeDescriptor(id));
  const dev = devices?.find((e) => path.resolve(e.target) === dd);
  if (dev) return `volume ${id} is attached as ${dev.blockPath}`;
  const r = await readRecord(pool, id);
  const targets = Object.keys(r.published);
  if (targets.length > 0) return `volume ${id} is published at ${targets.join(', ')}`;
  if (r.staged) return `volume ${id} is staged at ${r.staged.stagingTargetPath}`;
  return null;
}
