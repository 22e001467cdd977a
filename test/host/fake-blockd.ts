/**
 * A stand-in for blockd on hosts without ublk: every attached disk is served by a loop device
 * over a raw sparse file of the disk's size, kept per descriptor path so data survives detach
 * and attach. Snapshots copy the raw file under the frozen GUID (and cut the ploop snapshot
 * offline, which is safe here: nothing serves the ploop image itself), and a disk whose chain
 * contains a frozen GUID starts from that copy, so restores carry data. Grow can be told to
 * behave like a kernel without online resize.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { DeviceListEntry } from '../../src/blockdev/client.js';
import { BlockdError } from '../../src/blockdev/errors.js';
import type { BlockdApi } from '../../src/csi/node.js';
import {
  SECTOR,
  chainGuids,
  nodeFileSystem,
  readDescriptor,
  snapshot as ploopSnapshot,
} from '../../src/ploop/index.js';

interface Attached {
  devId: number;
  target: string;
  blockPath: string;
  sizeBytes: number;
  attachedAt: string;
  raw: string;
}

export class FakeBlockd implements BlockdApi {
  private readonly attached = new Map<string, Attached>();
  /** What probe() answers; a string makes it throw (blockd unreachable). */
  probeAnswer: { available: boolean; reason?: string } | string = { available: true };
  /** The state list() reports for every device. */
  state = 'live';
  /** Make grow() fail like a kernel without UPDATE_SIZE (after growing the "image"). */
  noOnlineGrow = false;
  /** Make every call fail as if blockd were down. */
  down = false;
  snapshots: { device: string; guid: string }[] = [];
  /** Runs inside snapshot(), while the device would be paused. */
  onSnapshot: ((device: string) => void) | null = null;
  private nextId = 0;

  constructor(readonly dir: string) {}

  private check(): void {
    if (this.down) throw new BlockdError('UNAVAILABLE', 'blockd at fake is not reachable: down');
  }

  private rawOf(target: string): string {
    return path.join(this.dir, `${createHash('sha1').update(target).digest('hex')}.raw`);
  }

  async probe() {
    this.check();
    if (typeof this.probeAnswer === 'string') {
      throw new BlockdError('UNAVAILABLE', this.probeAnswer);
    }
    return { ...this.probeAnswer, kernel: 'fake', features: '0' };
  }

  async attach(target: string) {
    this.check();
    const t = path.resolve(target);
    const had = this.attached.get(t);
    if (had) return this.record(had);
    const d = await readDescriptor(nodeFileSystem, t);
    const sizeBytes = d.sizeSectors * SECTOR;
    const raw = this.rawOf(t);
    const exists = await fsp.stat(raw).then(
      () => true,
      () => false,
    );
    if (!exists) {
      const base = chainGuids(d, t)
        .map((g) => path.join(this.dir, `snap-${g}.raw`))
        .reverse();
      let from: string | null = null;
      for (const b of base) {
        if (
          await fsp.stat(b).then(
            () => true,
            () => false,
          )
        ) {
          from = b;
          break;
        }
      }
      if (from) execFileSync('cp', ['--sparse=always', from, raw]);
      else await fsp.writeFile(raw, '');
    }
    const st = await fsp.stat(raw);
    if (st.size < sizeBytes) await fsp.truncate(raw, sizeBytes);
    const blockPath = execFileSync('losetup', ['-f', '--show', raw], { encoding: 'utf8' }).trim();
    const a: Attached = {
      devId: this.nextId++,
      target: t,
      blockPath,
      sizeBytes: Math.max(st.size, sizeBytes),
      attachedAt: new Date().toISOString(),
      raw,
    };
    this.attached.set(t, a);
    return this.record(a);
  }

  private record(a: Attached) {
    return {
      devId: a.devId,
      target: a.target,
      blockPath: a.blockPath,
      sizeBytes: a.sizeBytes,
      attachedAt: a.attachedAt,
    };
  }

  private byDevice(device: string): Attached | undefined {
    return [...this.attached.values()].find((a) => a.blockPath === device);
  }

  async detach(device: string) {
    this.check();
    const a = this.byDevice(device);
    if (!a) return;
    execFileSync('losetup', ['-d', a.blockPath]);
    this.attached.delete(a.target);
  }

  async list(): Promise<DeviceListEntry[]> {
    this.check();
    return [...this.attached.values()].map((a) => ({
      ...this.record(a),
      state: this.state,
      stats: null,
    }));
  }

  async snapshot(device: string) {
    this.check();
    const a = this.byDevice(device);
    if (!a) throw new BlockdError('NOT_FOUND', `no attached device ${device}`);
    this.onSnapshot?.(device);
    execFileSync('sync');
    const guid = await ploopSnapshot(a.target);
    execFileSync('cp', ['--sparse=always', a.raw, path.join(this.dir, `snap-${guid}.raw`)]);
    this.snapshots.push({ device, guid });
    return guid;
  }

  async grow(device: string, sizeBytes: number) {
    this.check();
    const a = this.byDevice(device);
    if (!a) throw new BlockdError('NOT_FOUND', `no attached device ${device}`);
    await fsp.truncate(a.raw, sizeBytes);
    a.sizeBytes = sizeBytes;
    if (this.noOnlineGrow) {
      throw new BlockdError(
        'FAILED_PRECONDITION',
        `grow ${device}: online expansion needs Linux ≥ 6.16 (this kernel lacks UPDATE_SIZE); the image was grown to ${sizeBytes} bytes and the next attach has the new size`,
      );
    }
    execFileSync('losetup', ['-c', a.blockPath]);
    return sizeBytes;
  }

  /** Detaches everything (test cleanup). */
  async close(): Promise<void> {
    for (const a of this.attached.values()) {
      try {
        execFileSync('losetup', ['-d', a.blockPath]);
      } catch {
        // Already gone.
      }
    }
    this.attached.clear();
  }
}
