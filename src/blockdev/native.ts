/**
 * Typed binding of the native data-path engine (`build/Release/ploop_ublk.node`, built by
 * node-gyp from `src/blockdev/native/*.c`).
 *
 * The engine serves ploop delta chains as ublk block devices: one thread and one io_uring per
 * queue, the whole per-request path (BAT lookup, copy-on-write allocation, FLUSH/FUA, DISCARD,
 * WRITE_ZEROES) in native code. This module only hands it file descriptors and geometry, and
 * runs the control commands; every call that can block returns a Promise and runs off the
 * JavaScript thread.
 *
 * Rules for the caller (the control plane):
 * - The engine keeps its own copy of every BAT and writes the top delta itself (data clusters and
 *   BAT slots). While a device is attached, nothing else may write the top delta. To finish with
 *   an image after stopping or deleting the device, drop the library's stale handle
 *   (`PloopImage.abandon()`, never `close()`, which would write a stale BAT), then reopen the file
 *   to mark it clean (e.g. `PloopImage.openForRepair(path, fs, false)` + `close()`).
 * - The engine never changes the header: set the in-use flag before attaching (opening the image
 *   read-write does that) and clear it after detaching.
 * - BAT slots are written to the image as soon as a cluster is allocated, so after a server crash
 *   the file (page cache) has every mapping the dead server acknowledged: re-read the BAT from the
 *   file for `recoverDevice` (the image is still marked in use; open it without the in-use check).
 * - File descriptors are duplicated (close-on-exec); the caller may close its own afterwards.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** One delta of a chain, base first. */
export interface NativeDelta {
  /** An open descriptor of the delta file (read-write for the top). */
  fd: number;
  /** 1 (BAT entries in sectors), 2 (in clusters) or 0 for a raw base image. */
  version: 0 | 1 | 2;
  /** Cluster size in bytes; the same for every delta. */
  clusterSize: number;
  /** Start of the data area in bytes (header `data_off` × 512); unused for raw. */
  dataOff?: number;
  /** The delta's BAT as read from the file (copied by the engine); absent for raw. */
  bat?: Uint32Array;
  /** Only the top may be writable. */
  writable?: boolean;
}

export interface DeviceConfig {
  deltas: NativeDelta[];
  /** Device size in bytes (multiple of 4096). */
  sizeBytes: number | bigint;
  /** Hardware queues (one thread each; the kernel clamps to the CPU count). Default 1. */
  queues?: number;
  /** Requests in flight per queue. Default 64. */
  depth?: number;
  /** Largest request in bytes. Default 512 KiB, or 1 MiB with zero copy and clusters ≥ 1 MiB. */
  maxIoBytes?: number;
  /**
   * Move request data without a copy through this process (UBLK_F_AUTO_BUF_REG, kernel ≥ 6.16).
   * Default true; ignored where the kernel lacks it. A recovered device keeps the mode it was
   * created with.
   */
  zeroCopy?: boolean;
  /**
   * Reads larger than 128 KiB bypass the backing files' page cache (O_DIRECT) where the file
   * system allows it. Default true.
   */
  directRead?: boolean;
  /** Ask for a device number; by default the kernel picks one. */
  devId?: number;
  /** Serve the chain read-only (no writable top needed). */
  readOnly?: boolean;
  /** Fault injection for tests: delay every WRITE and FLUSH by this many milliseconds. */
  debugDelayMs?: number;
}

export interface RecoverConfig {
  deltas: NativeDelta[];
  /** Informational; the kernel keeps the size the device had. */
  sizeBytes?: number | bigint;
  readOnly?: boolean;
  /** As for a new device (a choice of this process, not of the kernel's device). */
  directRead?: boolean;
  debugDelayMs?: number;
}

export interface DeviceHandle {
  devId: number;
  /** UBLK_F_* flags the kernel really granted. */
  flags: bigint;
  blockPath: string;
  charPath: string;
  queues: number;
  depth: number;
  maxIoBytes: number;
}

export interface ProbeResult {
  available: boolean;
  /** Why ublk cannot be used, when it cannot. */
  reason?: string;
  /** GET_FEATURES mask (kernel ≥ 6.5), or the assumed mask of older kernels. */
  features: bigint;
  /** True when the kernel answered GET_FEATURES. */
  haveFeatures: boolean;
  /** Control and I/O commands use ioctl encoding (else the legacy numbers). */
  ioctlEncode: boolean;
  /** `uname -r`. */
  kernel: string;
}

export type DeviceState = 'dead' | 'live' | 'quiesced' | 'fail-io' | 'unknown';

export interface DeviceInfo {
  devId: number;
  state: DeviceState;
  queues: number;
  depth: number;
  maxIoBytes: number;
  /** The serving process as the kernel last recorded it (6.12 keeps a dead server's pid). */
  serverPid: number;
  flags: bigint;
  /** Whether this process serves the device. */
  servedHere: boolean;
  sizeBytes?: number;
  blockDevt?: string;
  charDevt?: string;
}

export interface OpStats {
  ops: number;
  bytes: number;
  errors: number;
  latencyUsTotal: number;
  /** Bucket i counts requests that took [2^i, 2^(i+1)) µs (bucket 0 includes < 1 µs). */
  latencyHistogram: number[];
}

export interface DeviceStats {
  ops: Record<'read' | 'write' | 'flush' | 'discard' | 'writeZeroes' | 'other', OpStats>;
  allocatedClusters: number;
  /** Allocations that copied a lower delta's cluster (made durable before being mapped). */
  copiedClusters: number;
  zeroWritesSkipped: number;
  releasedClusters: number;
  punchedClusters: number;
  batWrites: number;
  syncs: number;
  mergedClusters: number;
  /** Requests moved by one transfer the queue did not wait for (see the engine's README). */
  asyncReads: number;
  asyncWrites: number;
  running: boolean;
  paused: boolean;
  merging: boolean;
  inFlight: number;
}

/** ublk feature bits (GET_FEATURES / device flags). */
export const UblkFeature = {
  SUPPORT_ZERO_COPY: 1n << 0n,
  URING_CMD_COMP_IN_TASK: 1n << 1n,
  NEED_GET_DATA: 1n << 2n,
  USER_RECOVERY: 1n << 3n,
  USER_RECOVERY_REISSUE: 1n << 4n,
  UNPRIVILEGED_DEV: 1n << 5n,
  CMD_IOCTL_ENCODE: 1n << 6n,
  USER_COPY: 1n << 7n,
  ZONED: 1n << 8n,
  USER_RECOVERY_FAIL_IO: 1n << 9n,
  UPDATE_SIZE: 1n << 10n,
  AUTO_BUF_REG: 1n << 11n,
  QUIESCE: 1n << 12n,
  PER_IO_DAEMON: 1n << 13n,
  BUF_REG_OFF_DAEMON: 1n << 14n,
  BATCH_IO: 1n << 15n,
  INTEGRITY: 1n << 16n,
  SAFE_STOP_DEV: 1n << 17n,
  NO_AUTO_PART_SCAN: 1n << 18n,
  SHMEM_ZC: 1n << 19n,
} as const;

/** Whether a device with these flags moves data in zero-copy mode (the engine needs both). */
export function isZeroCopy(flags: bigint): boolean {
  const both = UblkFeature.AUTO_BUF_REG | UblkFeature.USER_COPY;
  return (flags & both) === both;
}

/** Names of the bits set in a feature mask. */
export function featureNames(mask: bigint): string[] {
  const out: string[] = [];
  for (const [name, bit] of Object.entries(UblkFeature)) if (mask & bit) out.push(name);
  for (let i = 20n; i < 64n; i++) if (mask & (1n << i)) out.push(`bit${i}`);
  return out;
}

/** ublk cannot be used on this host; the message says why. */
export class UblkUnavailableError extends Error {
  readonly code = 'EUBLKUNAVAILABLE';
  constructor(readonly reason: string) {
    super(`ublk unavailable: ${reason}`);
    this.name = 'UblkUnavailableError';
  }
}

/** A failed native operation; `code` is the errno name (e.g. `EBUSY`). */
export interface NativeError extends Error {
  code: string;
  errno?: number;
}

interface Addon {
  probe(opts?: { forceLegacy?: boolean }): ProbeResult;
  createDevice(cfg: DeviceConfig): Promise<DeviceHandle>;
  recoverDevice(devId: number, cfg: RecoverConfig): Promise<DeviceHandle>;
  stopDevice(devId: number): Promise<void>;
  tryStopDevice(devId: number): Promise<void>;
  deleteDevice(devId: number): Promise<void>;
  quiesceDevice(devId: number, timeoutMs: number): Promise<void>;
  updateSize(devId: number, bytes: number | bigint): Promise<void>;
  pause(devId: number): Promise<void>;
  resume(devId: number, deltas?: NativeDelta[]): Promise<void>;
  flush(devId: number): Promise<void>;
  stats(devId: number): DeviceStats;
  getInfo(devId: number): Promise<DeviceInfo>;
  mergeLower(devId: number, index: number): Promise<number>;
  listDevices(): number[];
}

const ADDON_NAME = 'ploop_ublk.node';

/** Where the addon may be: PLOOP_CSI_NATIVE_ADDON, else build/Release above this file. */
function addonCandidates(): string[] {
  const out: string[] = [];
  const env = process.env.PLOOP_CSI_NATIVE_ADDON;
  if (env) out.push(path.resolve(env));
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    out.push(path.join(dir, 'build', 'Release', ADDON_NAME));
    dir = path.dirname(dir);
  }
  return out;
}

let addon: Addon | null = null;
let loadError: string | null = null;

function load(): Addon {
  if (addon) return addon;
  if (loadError) throw new UblkUnavailableError(loadError);
  const file = addonCandidates().find((f) => existsSync(f));
  if (!file) {
    loadError = `native addon ${ADDON_NAME} is not built (run \`npm run build:native\`)`;
    throw new UblkUnavailableError(loadError);
  }
  try {
    addon = createRequire(import.meta.url)(file) as Addon;
  } catch (err) {
    loadError = `cannot load ${file}: ${(err as Error).message}`;
    throw new UblkUnavailableError(loadError);
  }
  return addon;
}

let modprobeTried = false;
let lastProbe: ProbeResult | null = null;

/**
 * Probes ublk support. When /dev/ublk-control is missing, `modprobe ublk_drv` is tried once.
 * Never throws: an unusable host gives `{ available: false, reason }`.
 */
export function probe(opts: { forceLegacy?: boolean } = {}): ProbeResult {
  let a: Addon;
  try {
    a = load();
  } catch (err) {
    return {
      available: false,
      reason: (err as UblkUnavailableError).reason,
      features: 0n,
      haveFeatures: false,
      ioctlEncode: false,
      kernel: '',
    };
  }
  let r = a.probe(opts);
  if (!r.available && !modprobeTried && !existsSync('/dev/ublk-control')) {
    modprobeTried = true;
    spawnSync('modprobe', ['ublk_drv'], { stdio: 'ignore', timeout: 10_000 });
    r = a.probe(opts);
  }
  lastProbe = r;
  return r;
}

/** The addon, after making sure ublk is usable (throws UblkUnavailableError otherwise). */
function ready(): Addon {
  const r = lastProbe?.available ? lastProbe : probe();
  if (!r.available) throw new UblkUnavailableError(r.reason ?? 'unknown reason');
  return load();
}

/** Converts the addon's "ublk unavailable" errors into UblkUnavailableError. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const e = err as NativeError;
    if (e && e.code === 'EUBLKUNAVAILABLE') {
      throw new UblkUnavailableError(e.message.replace(/^ublk unavailable: /, ''));
    }
    throw err;
  }
}

/** Creates, configures and starts a device serving the chain; resolves once it is live. */
export function createDevice(cfg: DeviceConfig): Promise<DeviceHandle> {
  return call(() => ready().createDevice(cfg));
}

/** Takes over a device whose server died or was quiesced (START/END_USER_RECOVERY). */
export function recoverDevice(devId: number, cfg: RecoverConfig): Promise<DeviceHandle> {
  return call(() => ready().recoverDevice(devId, cfg));
}

/** STOP_DEV (removes /dev/ublkbN even when mounted: unmount first) and flushes the chain. */
export function stopDevice(devId: number): Promise<void> {
  return call(() => ready().stopDevice(devId));
}

/**
 * TRY_STOP_DEV (kernel ≥ 7.0, device flag SAFE_STOP_DEV): stops only when nothing has the block
 * device open; rejects with EBUSY while it is mounted, EOPNOTSUPP without the flag.
 */
export function tryStopDevice(devId: number): Promise<void> {
  return call(() => ready().tryStopDevice(devId));
}

/** Stops if needed and deletes the device; also deletes devices this process does not serve. */
export function deleteDevice(devId: number): Promise<void> {
  return call(() => ready().deleteDevice(devId));
}

/** QUIESCE_DEV (kernel ≥ 6.16): drains I/O and lets go of the device for another server. */
export function quiesceDevice(devId: number, timeoutMs: number): Promise<void> {
  return call(() => ready().quiesceDevice(devId, timeoutMs));
}

/** UPDATE_SIZE (kernel ≥ 6.16). Grow the top delta's BAT first (pause / resume with it). */
export function updateSize(devId: number, bytes: number | bigint): Promise<void> {
  return call(() => ready().updateSize(devId, bytes));
}

/** Holds every request before it starts, waits for running ones, then flushes the chain. */
export function pause(devId: number): Promise<void> {
  return call(() => ready().pause(devId));
}

/** Lets requests flow again; with `deltas` the device serves that chain from now on. */
export function resume(devId: number, deltas?: NativeDelta[]): Promise<void> {
  return call(() => ready().resume(devId, deltas));
}

/** Makes every completed write durable (as a FLUSH request would). */
export function flush(devId: number): Promise<void> {
  return call(() => ready().flush(devId));
}

export function stats(devId: number): DeviceStats {
  return ready().stats(devId);
}

/** GET_DEV_INFO + GET_PARAMS of any ublk device. */
export function getInfo(devId: number): Promise<DeviceInfo> {
  return call(() => ready().getInfo(devId));
}

/**
 * Copies into the top every cluster that delta `index` maps and the top does not, while I/O goes
 * on. Resolves with the number of clusters copied; afterwards delta `index` can be dropped from
 * the chain (pause, resume with the shorter chain). Swapping the chain cancels it (ECANCELED).
 */
export function mergeLower(devId: number, index: number): Promise<number> {
  return call(() => ready().mergeLower(devId, index));
}

/** Devices served by this process. */
export function listDevices(): number[] {
  return addon ? addon.listDevices() : [];
}
