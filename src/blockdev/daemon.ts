/**
 * blockd: owns every ublk device of the node. Attaches disks (a chain handed to the native
 * engine), detaches them clean, and changes live chains: snapshot, grow, merge. On start it
 * recovers every device of its table before serving anything new; on SIGTERM it hands the
 * devices over (QUIESCE_DEV where the kernel has it; otherwise queued I/O is re-issued to the
 * next blockd).
 */
import * as path from 'node:path';
import {
  DESCRIPTOR_NAME,
  PloopError,
  childrenOf,
  chainGuids,
  growDisk,
  imageOf,
  isGuid,
  nodeFileSystem,
  readDescriptor,
  resolveImagePath,
  resolveTarget,
  snapshot as ploopSnapshot,
  withLock,
  lockPath,
  writeDescriptor,
} from '../ploop/index.js';
import { promises as fsp } from 'node:fs';
import * as native from './native.js';
import { BlockdError } from './errors.js';
import { DEFAULT_SCHEDULER, KEEP_SCHEDULER, setIoScheduler } from './io-scheduler.js';
import { DeviceRecord, DeviceTable } from './table.js';
import {
  HandedChain,
  closeClean,
  markClean,
  markInUse,
  openForAttach,
  openLive,
  topImagePath,
} from './chain-handoff.js';

export interface BlockdOptions {
  stateDir: string;
  queues?: number;
  depth?: number;
  /** Zero copy for new devices where the kernel has it (default true). */
  zeroCopy?: boolean;
  /**
   * Reads over 128 KiB bypass the images' page cache (default true): the file system on the
   * device caches them already, and one stream of cache-missing reads side by side is what the
   * kernel's readahead handles worst.
   */
  directRead?: boolean;
  /** I/O scheduler for new devices (default `none`; `keep` leaves the kernel's default). */
  ioScheduler?: string;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export interface DeviceView extends DeviceRecord {
  state: string;
  /** How request data moves: `zero-copy` (kernel ≥ 6.16) or `copy`; unknown while recovering. */
  dataPath: 'zero-copy' | 'copy' | 'unknown';
  stats: native.DeviceStats | null;
}

function wrap(err: unknown, what: string): BlockdError {
  if (err instanceof BlockdError) return err;
  if (err instanceof native.UblkUnavailableError)
    return new BlockdError('UNAVAILABLE', err.message);
  if (err instanceof PloopError) {
    const code =
      err.code === 'NOT_FOUND'
        ? 'NOT_FOUND'
        : err.code === 'INVALID_ARGUMENT'
          ? 'INVALID_ARGUMENT'
          : err.code === 'BUSY'
            ? 'BUSY'
            : 'FAILED_PRECONDITION';
    return new BlockdError(code, `${what}: ${err.message}`, { cause: err });
  }
  const e = err as { code?: string; message?: string };
  if (e?.code === 'EOPNOTSUPP') {
    return new BlockdError('FAILED_PRECONDITION', `${what}: not supported by this kernel`, {
      cause: err,
    });
  }
  return new BlockdError('INTERNAL', `${what}: ${e?.message ?? String(err)}`, { cause: err });
}

export class Blockd {
  private readonly table: DeviceTable;
  /** One operation per device at a time (attach/detach/snapshot/grow/merge). */
  private readonly busy = new Map<string, Promise<unknown>>();

  constructor(readonly opts: BlockdOptions) {
    this.table = new DeviceTable(opts.stateDir);
  }

  private log(msg: string, fields?: Record<string, unknown>): void {
    this.opts.log?.(msg, fields);
  }

  /** Serializes work per key. */
  private async exclusive<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.busy.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.busy.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.busy.get(key) === tail) this.busy.delete(key);
    }
  }

  probe(): native.ProbeResult {
    return native.probe();
  }

  /** Recovers every recorded device; drops records of devices that no longer exist. */
  async start(): Promise<void> {
    await fsp.mkdir(this.opts.stateDir, { recursive: true, mode: 0o700 });
    const records = await this.table.load();
    const p = native.probe();
    if (!p.available) {
      if (records.length)
        throw new BlockdError(
          'UNAVAILABLE',
          `cannot recover devices: ublk unavailable: ${p.reason}`,
        );
      return;
    }
    for (const r of records) {
      try {
        await this.recover(r);
      } catch (err) {
        this.log('recovery failed', {
          devId: r.devId,
          target: r.target,
          err: (err as Error).message,
        });
      }
    }
  }

  private async recover(r: DeviceRecord): Promise<void> {
    let info: native.DeviceInfo;
    try {
      info = await native.getInfo(r.devId);
    } catch {
      // The device is gone (deleted, or the node rebooted): the image is closed clean.
      this.log('device gone; closing its image', { devId: r.devId, target: r.target });
      await markClean(r.target).catch(() => undefined);
      await this.table.remove(r.devId);
      return;
    }
    if (info.state === 'quiesced' || info.state === 'fail-io') {
      const chain = await openLive(r.target);
      try {
        await native.recoverDevice(r.devId, {
          deltas: chain.deltas,
          sizeBytes: chain.sizeBytes,
          directRead: this.opts.directRead ?? true,
        });
      } finally {
        await chain.close();
      }
      this.log('device recovered', { devId: r.devId, target: r.target });
      return;
    }
    if (info.state === 'live' && info.servedHere) return;
    if (info.state === 'dead') {
      await native.deleteDevice(r.devId).catch(() => undefined);
      await markClean(r.target).catch(() => undefined);
      await this.table.remove(r.devId);
      return;
    }
    throw new BlockdError(
      'FAILED_PRECONDITION',
      `device ${r.devId} is ${info.state} and served by pid ${info.serverPid}`,
    );
  }

  /** Attaches a disk and returns its device; attaching an attached disk returns the same one. */
  async attach(target: string): Promise<DeviceRecord> {
    let t: { path: string };
    try {
      t = await resolveTarget(target);
    } catch (err) {
      throw wrap(err, `attach ${target}`);
    }
    return this.exclusive(t.path, async () => {
      const existing = this.table.byTarget(t.path);
      if (existing) return existing;
      let chain: HandedChain;
      try {
        // A chain that does not open (damage, a missing delta) was not touched: report it
        // as it is, without "closing clean" an image that was never opened.
        chain = await openForAttach(t.path);
      } catch (err) {
        throw wrap(err, `attach ${target}`);
      }
      try {
        const h = await native.createDevice({
          deltas: chain.deltas,
          sizeBytes: chain.sizeBytes,
          queues: this.opts.queues ?? 1,
          depth: this.opts.depth ?? 64,
          zeroCopy: this.opts.zeroCopy ?? true,
          directRead: this.opts.directRead ?? true,
        });
        const rec: DeviceRecord = {
          devId: h.devId,
          target: t.path,
          blockPath: h.blockPath,
          sizeBytes: chain.sizeBytes,
          attachedAt: new Date().toISOString(),
        };
        await this.table.put(rec);
        await this.applyScheduler(h.blockPath);
        this.log('attached', { devId: h.devId, target: t.path });
        return rec;
      } catch (err) {
        // Nothing serves the image: leave it closed clean.
        await markClean(t.path).catch(() => undefined);
        throw wrap(err, `attach ${target}`);
      } finally {
        await chain.close();
      }
    });
  }

  /** Best effort: a disk that keeps the kernel's scheduler works, only slower. */
  private async applyScheduler(blockPath: string): Promise<void> {
    const name = this.opts.ioScheduler ?? DEFAULT_SCHEDULER;
    if (name === KEEP_SCHEDULER) return;
    try {
      await setIoScheduler(blockPath, name);
    } catch (err) {
      this.log('could not set the I/O scheduler', {
        device: blockPath,
        scheduler: name,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }

  private record(device: string): DeviceRecord {
    const r = this.table.byDevice(device);
    if (!r) throw new BlockdError('NOT_FOUND', `no attached device ${device}`);
    return r;
  }

  /** Stops and deletes the device, then closes the image clean. Unknown devices are fine. */
  async detach(device: string): Promise<void> {
    const r = this.table.byDevice(device);
    if (!r) return;
    await this.exclusive(r.target, async () => {
      try {
        await native.deleteDevice(r.devId);
        await markClean(r.target);
        await this.table.remove(r.devId);
        this.log('detached', { devId: r.devId, target: r.target });
      } catch (err) {
        throw wrap(err, `detach ${device}`);
      }
    });
  }

  async list(): Promise<DeviceView[]> {
    const out: DeviceView[] = [];
    for (const r of this.table.list()) {
      let state = 'unknown';
      let dataPath: DeviceView['dataPath'] = 'unknown';
      let stats: native.DeviceStats | null = null;
      try {
        const info = await native.getInfo(r.devId);
        state = info.state;
        dataPath = native.isZeroCopy(info.flags) ? 'zero-copy' : 'copy';
        stats = native.stats(r.devId);
      } catch {
        // A device being recovered or gone: shown with what is known.
      }
      out.push({ ...r, state, dataPath, stats });
    }
    return out;
  }

  /** Runs `fn` with the device's I/O paused and flushed; resumes with the chain `fn` returns. */
  private async paused<T>(r: DeviceRecord, fn: () => Promise<T>): Promise<T> {
    await native.pause(r.devId);
    let chain: HandedChain | null = null;
    try {
      const result = await fn();
      chain = await openLive(r.target);
      await native.resume(r.devId, chain.deltas);
      return result;
    } catch (err) {
      await native.resume(r.devId).catch(() => undefined);
      throw err;
    } finally {
      await chain?.close();
    }
  }

  private async descriptorOf(r: DeviceRecord): Promise<string> {
    if (path.basename(r.target) !== DESCRIPTOR_NAME) {
      throw new BlockdError(
        'INVALID_ARGUMENT',
        `${r.target} is a single image: snapshots need a DiskDescriptor.xml`,
      );
    }
    return r.target;
  }

  /** Online snapshot: the top is frozen under a new GUID (returned), a new empty top serves I/O. */
  async snapshot(device: string): Promise<string> {
    const r = this.record(device);
    const dd = await this.descriptorOf(r);
    return this.exclusive(r.target, async () => {
      try {
        const oldTop = (await topImagePath(dd)).path;
        return await this.paused(r, async () => {
          const guid = await ploopSnapshot(dd, { liveTop: true });
          // The frozen delta is complete (the engine flushed it): close it clean, and mark
          // the new top in use before the engine writes it.
          await closeClean(oldTop);
          await markInUse((await topImagePath(dd)).path);
          return guid;
        });
      } catch (err) {
        throw wrap(err, `snapshot ${device}`);
      }
    });
  }

  /** Online grow: BAT grown with I/O paused, then UPDATE_SIZE (Linux ≥ 6.16). */
  async grow(device: string, sizeBytes: number): Promise<number> {
    const r = this.record(device);
    return this.exclusive(r.target, async () => {
      let newSize: number;
      try {
        newSize = await this.paused(r, async () => {
          const t = await resolveTarget(r.target);
          if (t.kind !== 'descriptor') {
            throw new BlockdError('INVALID_ARGUMENT', 'online grow needs a DiskDescriptor.xml');
          }
          // growDisk repairs-then-closes the top (it is in use): mark it in use again after.
          const size = await growDisk(t.path, sizeBytes);
          await markInUse((await topImagePath(t.path)).path);
          return size;
        });
      } catch (err) {
        throw wrap(err, `grow ${device}`);
      }
      await this.table.put({ ...r, sizeBytes: newSize });
      // The kernel takes UPDATE_SIZE for any device; what matters is that it knows it.
      if (!(native.probe().features & native.UblkFeature.UPDATE_SIZE)) {
        throw new BlockdError(
          'FAILED_PRECONDITION',
          `online expansion needs Linux ≥ 6.16 (this kernel lacks UPDATE_SIZE); the image was grown to ${newSize} bytes and the next attach has the new size`,
        );
      }
      try {
        await native.updateSize(r.devId, newSize);
      } catch (err) {
        throw wrap(err, `grow ${device}`);
      }
      return newSize;
    });
  }

  /**
   * Online merge of snapshot `guid` (the delta right below the top) into the live top: its
   * clusters the top lacks are copied while I/O goes on, then it leaves the chain.
   */
  async merge(device: string, guid: string): Promise<void> {
    const r = this.record(device);
    const dd = await this.descriptorOf(r);
    const g = guid.toLowerCase();
    if (!isGuid(g)) throw new BlockdError('INVALID_ARGUMENT', `invalid snapshot GUID "${guid}"`);
    await this.exclusive(r.target, async () => {
      try {
        const d = await readDescriptor(nodeFileSystem, dd);
        const guids = chainGuids(d, dd);
        const index = guids.indexOf(g);
        if (index < 0) throw new BlockdError('NOT_FOUND', `snapshot ${g} is not in the chain`);
        if (index !== guids.length - 2) {
          throw new BlockdError(
            'FAILED_PRECONDITION',
            'only the snapshot right below the top can be merged online',
          );
        }
        if (childrenOf(d, g).length !== 1) {
          throw new BlockdError('FAILED_PRECONDITION', `snapshot ${g} has other children`);
        }
        await native.mergeLower(r.devId, index);
        await this.paused(r, async () => {
          await withLock(lockPath(dd), async () => {
            const cur = await readDescriptor(nodeFileSystem, dd);
            const snap = cur.snapshots.find((s) => s.guid === g)!;
            const file = resolveImagePath(dd, imageOf(cur, g).file);
            for (const s of cur.snapshots) if (s.parent === g) s.parent = snap.parent;
            cur.images = cur.images.filter((i) => i.guid !== g);
            cur.snapshots = cur.snapshots.filter((s) => s.guid !== g);
            await writeDescriptor(nodeFileSystem, dd, cur);
            // Shared (hard-linked) deltas live on through their other links.
            await fsp.unlink(file).catch(() => undefined);
          });
        });
      } catch (err) {
        throw wrap(err, `merge ${device}`);
      }
    });
  }

  stats(device: string): native.DeviceStats {
    const r = this.record(device);
    return native.stats(r.devId);
  }

  /**
   * Hand-over on SIGTERM: devices stay (their I/O queues until the next blockd recovers them).
   * With QUIESCE_DEV in-flight I/O is drained first, so nothing needs re-issuing.
   */
  async handOver(timeoutMs = 5000): Promise<void> {
    for (const r of this.table.list()) {
      try {
        const info = await native.getInfo(r.devId);
        if (info.flags & native.UblkFeature.QUIESCE) await native.quiesceDevice(r.devId, timeoutMs);
        else await native.flush(r.devId);
      } catch (err) {
        this.log('hand-over of a device failed; it will be re-issued', {
          devId: r.devId,
          err: (err as Error).message,
        });
      }
    }
  }
}
