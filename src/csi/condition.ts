/**
 * Volume condition as the controller sees it: the volume's descriptor parses and every delta of
 * its chain is a regular file of at least a header's size. Cheap enough for every
 * ControllerGetVolume and ListVolumes entry; the data path's own view comes from the node.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  chainGuids,
  imageOf,
  nodeFileSystem,
  readDescriptor,
  resolveImagePath,
} from '../ploop/index.js';
import type { Pool } from '../pool/index.js';
import type { VolumeCondition } from './types.js';

const HEADER_BYTES = 64;

export async function volumeCondition(pool: Pool, volumeId: string): Promise<VolumeCondition> {
  const dd = pool.volumeDescriptor(volumeId);
  try {
    const d = await readDescriptor(nodeFileSystem, dd);
    const guids = chainGuids(d, dd);
    for (const g of guids) {
      const file = resolveImagePath(dd, imageOf(d, g).file);
      let st;
      try {
        st = await fsp.stat(file);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'error';
        return { abnormal: true, message: `delta ${path.basename(file)} is unreadable (${code})` };
      }
      if (!st.isFile()) {
        return { abnormal: true, message: `delta ${path.basename(file)} is not a regular file` };
      }
      if (imageOf(d, g).type === 'Compressed' && st.size < HEADER_BYTES) {
        return { abnormal: true, message: `delta ${path.basename(file)} is truncated` };
      }
    }
    return { abnormal: false, message: `healthy: chain of ${guids.length} delta(s)` };
  } catch (err) {
    const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
    return { abnormal: true, message: `descriptor unusable: ${msg}` };
  }
}
