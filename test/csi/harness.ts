/**
 * A real CSI server on a real unix socket in a temporary directory, with a temporary pool, and
 * grpc-js clients talking to it the way a CO does.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { expect } from 'vitest';
import { createLogger } from '../../src/csi/log.js';
import { loadCsi } from '../../src/csi/proto.js';
import { CsiServer, CsiServerOptions } from '../../src/csi/server.js';
import { Pool } from '../../src/pool/index.js';

export const M = 1 << 20;
export const NODE = 'node-1';
export const DRIVER = 'csi.ploop.dev';
export const TOPOLOGY_KEY = `${DRIVER}/node`;

export type Service = 'Identity' | 'Controller' | 'Node';

type Callback = (err: grpc.ServiceError | null, res?: unknown) => void;
type Unary = (req: object, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => void;

export interface Harness {
  root: string;
  poolDir: string;
  socket: string;
  endpoint: string;
  server: CsiServer;
  /** Calls `method` of `service`; resolves with the decoded response. */
  call<T = Record<string, unknown>>(service: Service, method: string, req?: object): Promise<T>;
  /** The gRPC status code the call fails with, or 0 (OK). */
  code(service: Service, method: string, req?: object): Promise<number>;
  /** Stops the server and starts a new one on the same socket and pool. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export type HarnessOptions = Partial<Omit<CsiServerOptions, 'endpoint' | 'pool'>> & {
  overProvisioning?: number;
};

export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-csi-'));
  const poolDir = path.join(root, 'pool');
  const socket = path.join(root, 'csi.sock');
  const endpoint = `unix://${socket}`;
  const start = async (): Promise<CsiServer> =>
    CsiServer.start({
      endpoint,
      nodeId: NODE,
      logger: createLogger('silent'),
      shutdownTimeoutMs: 5000,
      ...opts,
      pool: await Pool.open(poolDir, { overProvisioning: opts.overProvisioning ?? 1000 }),
    });

  let clients: Record<Service, grpc.Client> | null = null;
  const connect = (): Record<Service, grpc.Client> => {
    const csi = loadCsi();
    const creds = grpc.credentials.createInsecure();
    return {
      Identity: new csi.clients.Identity(endpoint, creds),
      Controller: new csi.clients.Controller(endpoint, creds),
      Node: new csi.clients.Node(endpoint, creds),
    };
  };
  const disconnect = (): void => {
    if (clients) for (const c of Object.values(clients)) c.close();
    clients = null;
  };

  const h: Harness = {
    root,
    poolDir,
    socket,
    endpoint,
    server: await start(),
    call<T>(service: Service, method: string, req: object = {}): Promise<T> {
      clients ??= connect();
      const client = clients[service] as unknown as Record<string, Unary>;
      const fn = client[method];
      if (typeof fn !== 'function') throw new Error(`${service} has no method ${method}`);
      const deadline = new Date(Date.now() + 60_000);
      return new Promise<T>((resolve, reject) => {
        fn.call(client, req, new grpc.Metadata(), { deadline }, (err, res) =>
          err ? reject(err) : resolve(res as T),
        );
      });
    },
    async code(service, method, req = {}) {
      try {
        await h.call(service, method, req);
        return grpc.status.OK;
      } catch (err) {
        const code = (err as grpc.ServiceError).code;
        if (typeof code !== 'number') throw err;
        return code;
      }
    },
    async restart() {
      disconnect();
      await h.server.stop();
      h.server = await start();
    },
    async close() {
      disconnect();
      await h.server.stop();
      await fsp.rm(root, { recursive: true, force: true });
    },
  };
  return h;
}

// ---- request builders -------------------------------------------------------------------------

export type Mode =
  | 'SINGLE_NODE_WRITER'
  | 'SINGLE_NODE_READER_ONLY'
  | 'SINGLE_NODE_SINGLE_WRITER'
  | 'SINGLE_NODE_MULTI_WRITER'
  | 'MULTI_NODE_READER_ONLY'
  | 'MULTI_NODE_SINGLE_WRITER'
  | 'MULTI_NODE_MULTI_WRITER';

export function mountCap(mode: Mode = 'SINGLE_NODE_WRITER', fsType = ''): object {
  return { mount: { fsType }, accessMode: { mode } };
}

export function blockCap(mode: Mode = 'SINGLE_NODE_WRITER'): object {
  return { block: {}, accessMode: { mode } };
}

export function createReq(name: string, bytes = 16 * M, extra: object = {}): object {
  return {
    name,
    volumeCapabilities: [mountCap()],
    capacityRange: { requiredBytes: bytes, limitBytes: bytes },
    ...extra,
  };
}

// ---- decoded responses (int64 fields arrive as strings) --------------------------------------

export interface VolumeOut {
  volumeId: string;
  capacityBytes: string;
  volumeContext: Record<string, string>;
  contentSource: { snapshot?: { snapshotId: string }; volume?: { volumeId: string } } | null;
  accessibleTopology: { segments: Record<string, string> }[];
}

export interface SnapshotOut {
  snapshotId: string;
  sourceVolumeId: string;
  sizeBytes: string;
  readyToUse: boolean;
  creationTime: { seconds: string; nanos: number } | null;
}

export async function createVolume(h: Harness, req: object): Promise<VolumeOut> {
  return (await h.call<{ volume: VolumeOut }>('Controller', 'CreateVolume', req)).volume;
}

export async function createSnapshot(
  h: Harness,
  name: string,
  sourceVolumeId: string,
): Promise<SnapshotOut> {
  return (
    await h.call<{ snapshot: SnapshotOut }>('Controller', 'CreateSnapshot', {
      name,
      sourceVolumeId,
    })
  ).snapshot;
}

export async function listVolumeIds(h: Harness): Promise<string[]> {
  const r = await h.call<{ entries: { volume: VolumeOut }[] }>('Controller', 'ListVolumes');
  return r.entries.map((e) => e.volume.volumeId);
}

export async function listSnapshotIds(h: Harness, filter: object = {}): Promise<string[]> {
  const r = await h.call<{ entries: { snapshot: SnapshotOut }[] }>(
    'Controller',
    'ListSnapshots',
    filter,
  );
  return r.entries.map((e) => e.snapshot.snapshotId);
}

/**
 * The whole controller lifecycle: create → get → list → snapshot → list snapshots → restore
 * from the snapshot → clone → delete everything. Every mutating call is issued twice and must
 * answer the same (idempotency). `between` runs between every pair of steps.
 */
export async function lifecycle(
  h: Harness,
  tag: string,
  between: () => Promise<void> = async () => undefined,
): Promise<void> {
  const twice = async <T>(fn: () => Promise<T>): Promise<T> => {
    const a = await fn();
    expect(await fn()).toEqual(a);
    return a;
  };

  const v = await twice(() => createVolume(h, createReq(`${tag}-source`, 16 * M)));
  expect(v.capacityBytes).toBe(String(16 * M));
  expect(v.volumeContext).toEqual({ fsType: 'ext4' });
  expect(v.accessibleTopology).toEqual([{ segments: { [TOPOLOGY_KEY]: NODE } }]);
  await between();

  const got = await h.call<{ volume: VolumeOut; status: { volumeCondition: object } }>(
    'Controller',
    'ControllerGetVolume',
    { volumeId: v.volumeId },
  );
  expect(got.volume).toEqual(v);
  expect(got.status.volumeCondition).toMatchObject({ abnormal: false });
  await between();

  expect(await listVolumeIds(h)).toContain(v.volumeId);
  await between();

  const s = await twice(() => createSnapshot(h, `${tag}-snap`, v.volumeId));
  expect(s).toMatchObject({ sourceVolumeId: v.volumeId, readyToUse: true });
  expect(s.sizeBytes).toBe(String(16 * M));
  expect(Number(s.creationTime?.seconds)).toBeGreaterThan(1_600_000_000);
  await between();

  expect(await listSnapshotIds(h, { sourceVolumeId: v.volumeId })).toEqual([s.snapshotId]);
  expect(await listSnapshotIds(h, { snapshotId: s.snapshotId })).toEqual([s.snapshotId]);
  await between();

  const restoreReq = createReq(`${tag}-restored`, 32 * M, {
    volumeContentSource: { snapshot: { snapshotId: s.snapshotId } },
  });
  const r = await twice(() => createVolume(h, restoreReq));
  expect(r.contentSource).toMatchObject({ snapshot: { snapshotId: s.snapshotId } });
  expect(r.capacityBytes).toBe(String(32 * M));
  await between();

  const cloneReq = createReq(`${tag}-clone`, 16 * M, {
    volumeContentSource: { volume: { volumeId: v.volumeId } },
  });
  const c = await twice(() => createVolume(h, cloneReq));
  expect(c.contentSource).toMatchObject({ volume: { volumeId: v.volumeId } });
  expect(new Set([v.volumeId, r.volumeId, c.volumeId]).size).toBe(3);
  await between();

  for (const id of [c.volumeId, r.volumeId]) {
    await twice(() => h.call('Controller', 'DeleteVolume', { volumeId: id }));
    await between();
  }
  await twice(() => h.call('Controller', 'DeleteSnapshot', { snapshotId: s.snapshotId }));
  await between();
  await twice(() => h.call('Controller', 'DeleteVolume', { volumeId: v.volumeId }));
  await between();

  const left = await listVolumeIds(h);
  for (const id of [v.volumeId, r.volumeId, c.volumeId]) expect(left).not.toContain(id);
  expect(await listSnapshotIds(h)).not.toContain(s.snapshotId);
  expect(await h.code('Controller', 'ControllerGetVolume', { volumeId: v.volumeId })).toBe(
    grpc.status.NOT_FOUND,
  );
}
