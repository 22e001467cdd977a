/**
 * The device table: which ublk device serves which disk. Persisted in the state directory so a
 * restarted blockd finds and recovers every device it served.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { nodeFileSystem, writeFileAtomic } from '../ploop/index.js';

export interface DeviceRecord {
  devId: number;
  /** The disk's DiskDescriptor.xml (or a single image file). */
  target: string;
  blockPath: string;
  sizeBytes: number;
  attachedAt: string;
}

export class DeviceTable {
  private readonly file: string;
  private records = new Map<number, DeviceRecord>();

  constructor(stateDir: string) {
    this.file = path.join(stateDir, 'devices.json');
  }

  async load(): Promise<DeviceRecord[]> {
    try {
      const list = JSON.parse(await fsp.readFile(this.file, 'utf8')) as DeviceRecord[];
      this.records = new Map(list.map((r) => [r.devId, r]));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.records = new Map();
    }
    return this.list();
  }

  list(): DeviceRecord[] {
    return [...this.records.values()].sort((a, b) => a.devId - b.devId);
  }

  byTarget(target: string): DeviceRecord | undefined {
    return this.list().find((r) => r.target === target);
  }

  byDevice(device: string): DeviceRecord | undefined {
    const m = /^(?:\/dev\/ublkb)?(\d+)$/.exec(device);
    if (m) return this.records.get(Number(m[1]));
    return this.list().find((r) => r.blockPath === device);
  }

  async put(r: DeviceRecord): Promise<void> {
    this.records.set(r.devId, r);
    await this.save();
  }

  async remove(devId: number): Promise<void> {
    this.records.delete(devId);
    await this.save();
  }

  private async save(): Promise<void> {
    await writeFileAtomic(nodeFileSystem, this.file, JSON.stringify(this.list(), null, 2));
  }
}
