/**
 * `ploop-csi gc` against a real pool, with a small HTTP server standing in for the Kubernetes
 * API server: it answers the two list calls gc makes with Kubernetes' own JSON, in pages.
 */
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { gcCommand, parseDuration } from '../../src/cli/gc.js';
import { collectOrphans, listReferences } from '../../src/k8s/index.js';
import { Pool } from '../../src/pool/index.js';

const DRIVER = 'csi.ploop.dev';
const M = 1 << 20;

interface FakeApi {
  url: string;
  requests: { path: string; auth: string | undefined }[];
  pvs: object[];
  contents: object[] | 'missing' | 'forbidden';
  failPvs: boolean;
  close(): Promise<void>;
}

function pv(name: string, driver: string, handle: string): object {
  return {
    metadata: {
      name,
      uid: `uid-${name}`,
      resourceVersion: '1000',
      creationTimestamp: '2026-01-01T00:00:00Z',
      annotations: { 'pv.kubernetes.io/provisioned-by': driver },
      finalizers: ['kubernetes.io/pv-protection'],
    },
    spec: {
      capacity: { storage: '1Gi' },
      csi: {
        driver,
        volumeHandle: handle,
        fsType: 'ext4',
        volumeAttributes: { 'storage.kubernetes.io/csiProvisionerIdentity': '1-2-csi.ploop.dev' },
      },
      accessModes: ['ReadWriteOnce'],
      claimRef: { kind: 'PersistentVolumeClaim', namespace: 'default', name: `claim-${name}` },
      persistentVolumeReclaimPolicy: 'Delete',
      storageClassName: 'ploop',
      volumeMode: 'Filesystem',
      nodeAffinity: {
        required: {
          nodeSelectorTerms: [
            { matchExpressions: [{ key: `${DRIVER}/node`, operator: 'In', values: ['node-a'] }] },
          ],
        },
      },
    },
    status: { phase: 'Bound', lastPhaseTransitionTime: '2026-01-01T00:00:01Z' },
  };
}

function content(name: string, driver: string, handle: string, preProvisioned = false): object {
  return {
    apiVersion: 'snapshot.storage.k8s.io/v1',
    kind: 'VolumeSnapshotContent',
    metadata: { name, uid: `uid-${name}`, resourceVersion: '2000', generation: 1 },
    spec: {
      deletionPolicy: 'Delete',
      driver,
      source: preProvisioned ? { snapshotHandle: handle } : { volumeHandle: 'pv-source' },
      volumeSnapshotClassName: 'ploop',
      volumeSnapshotRef: { kind: 'VolumeSnapshot', namespace: 'default', name: `snap-of-${name}` },
    },
    status: preProvisioned
      ? { readyToUse: true }
      : {
          creationTime: 1767225600000000000,
          readyToUse: true,
          restoreSize: 1073741824,
          snapshotHandle: handle,
        },
  };
}

/** Two objects a page, so that gc has to follow continue tokens. */
function page(items: object[], start: number, kind: string, apiVersion: string): object {
  const next = start + 2 < items.length ? String(start + 2) : undefined;
  return {
    apiVersion,
    kind,
    metadata: { resourceVersion: '3000', ...(next ? { continue: next } : {}) },
    items: items.slice(start, start + 2),
  };
}

function status(code: number, reason: string, message: string): object {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason,
    code,
  };
}

async function fakeApi(): Promise<FakeApi> {
  const api: Partial<FakeApi> = { requests: [], pvs: [], contents: [], failPvs: false };
  const server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://localhost');
    api.requests!.push({ path: u.pathname, auth: req.headers.authorization });
    const start = Number(u.searchParams.get('continue') ?? '0');
    const send = (code: number, body: object) =>
      res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (req.method !== 'GET') return send(405, status(405, 'MethodNotAllowed', 'read only'));
    if (u.pathname === '/api/v1/persistentvolumes') {
      if (api.failPvs) return send(500, status(500, 'InternalError', 'etcd is down'));
      return send(200, page(api.pvs!, start, 'PersistentVolumeList', 'v1'));
    }
    if (u.pathname === '/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents') {
      if (api.contents === 'missing')
        return send(404, status(404, 'NotFound', '404 page not found'));
      if (api.contents === 'forbidden') {
        return send(403, status(403, 'Forbidden', 'volumesnapshotcontents is forbidden'));
      }
      return send(
        200,
        page(
          api.contents as object[],
          start,
          'VolumeSnapshotContentList',
          'snapshot.storage.k8s.io/v1',
        ),
      );
    }
    send(404, status(404, 'NotFound', 'the server could not find the requested resource'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  api.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  api.close = () =>
    new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
  return api as FakeApi;
}

function kubeConfigYaml(server: string): string {
  return [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '  - name: test',
    `    cluster: { server: '${server}', insecure-skip-tls-verify: true }`,
    'users:',
    '  - name: gc',
    '    user: { token: test-token }',
    'contexts:',
    '  - name: test',
    '    context: { cluster: test, user: gc }',
    'current-context: test',
    '',
  ].join('\n');
}

let root: string;
let pool: Pool;
let api: FakeApi;
let kc: KubeConfig;
let ids: Record<string, string>;

beforeEach(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-gc-'));
  pool = await Pool.open(path.join(root, 'pool'));
  const vol = async (name: string) =>
    (
      await pool.createVolume({
        name,
        requiredBytes: 4 * M,
        limitBytes: 0,
        parameters: {},
        source: null,
      })
    ).id;
  ids = {
    kept: await vol('pvc-kept'),
    kept2: await vol('pvc-kept-2'),
    orphan: await vol('pvc-orphan'),
    otherDriver: await vol('pvc-other-driver'),
  };
  const snap = async (name: string) =>
    (await pool.createSnapshot({ name, sourceVolumeId: ids.kept! })).id;
  ids.snapKept = await snap('snapcontent-kept');
  ids.snapPre = await snap('snapcontent-preprovisioned');
  ids.snapOrphan = await snap('snapcontent-orphan');

  api = await fakeApi();
  api.pvs = [
    pv('pvc-kept', DRIVER, ids.kept),
    pv('pvc-unrelated', 'ebs.csi.aws.com', 'vol-0123'),
    pv('pvc-kept-2', DRIVER, ids.kept2),
    // The same handle under another driver's name does not keep our volume.
    pv('pvc-other-driver', 'other.example.com', ids.otherDriver),
    pv('pvc-static', DRIVER, 'pv-not-on-this-node'),
  ];
  api.contents = [
    content('snapcontent-kept', DRIVER, ids.snapKept),
    content('snapcontent-preprovisioned', DRIVER, ids.snapPre, true),
    content('snapcontent-foreign', 'other.example.com', ids.snapOrphan),
  ];
  kc = new KubeConfig();
  kc.loadFromString(kubeConfigYaml(api.url));
});

afterEach(async () => {
  await api.close();
  await fsp.rm(root, { recursive: true, force: true });
});

const refs = () => listReferences(kc, DRIVER);
const orphanIds = (r: { orphans: { id: string }[] }) => r.orphans.map((o) => o.id).sort();

describe('listReferences', () => {
  it('follows continue tokens and keeps only our driver', async () => {
    const r = await refs();
    expect([...r.volumeHandles].sort()).toEqual(
      [ids.kept!, ids.kept2!, 'pv-not-on-this-node'].sort(),
    );
    expect([...r.snapshotHandles!].sort()).toEqual([ids.snapKept!, ids.snapPre!].sort());
    expect(api.requests.filter((q) => q.path === '/api/v1/persistentvolumes')).toHaveLength(3);
    expect(api.requests.every((q) => q.auth === 'Bearer test-token')).toBe(true);
  });

  it('reports snapshots as unknown when the snapshot API is missing or forbidden', async () => {
    api.contents = 'missing';
    expect((await refs()).snapshotHandles).toBeNull();
    api.contents = 'forbidden';
    const r = await refs();
    expect(r.snapshotHandles).toBeNull();
    expect(r.snapshotsUnknown).toMatch(/may not list/);
  });
});

describe('collectOrphans', () => {
  it('lists orphans without deleting them', async () => {
    const r = await collectOrphans(pool, refs, { delete: false, minAgeMs: 0 });
    expect(orphanIds(r)).toEqual([ids.orphan!, ids.otherDriver!, ids.snapOrphan!].sort());
    expect(r.orphans.every((o) => !o.deleted)).toBe(true);
    expect(r).toMatchObject({ volumes: 4, snapshots: 3, snapshotsChecked: true, tooYoung: 0 });
    expect(await pool.getVolume(ids.orphan!)).not.toBeNull();
    expect(await pool.getSnapshot(ids.snapOrphan!)).not.toBeNull();
  });

  it('deletes orphans, and only them, with delete', async () => {
    const r = await collectOrphans(pool, refs, { delete: true, minAgeMs: 0 });
    expect(r.orphans.every((o) => o.deleted && !o.error)).toBe(true);
    expect((await pool.listVolumes()).map((v) => v.id).sort()).toEqual(
      [ids.kept!, ids.kept2!].sort(),
    );
    expect((await pool.listSnapshots()).map((s) => s.id).sort()).toEqual(
      [ids.snapKept!, ids.snapPre!].sort(),
    );
    // A second run finds nothing.
    expect((await collectOrphans(pool, refs, { delete: true, minAgeMs: 0 })).orphans).toEqual([]);
  });

  it('leaves young and attached volumes alone', async () => {
    const young = await collectOrphans(pool, refs, { delete: true, minAgeMs: 3_600_000 });
    expect(young.orphans).toEqual([]);
    expect(young.tooYoung).toBe(3);
    const later = new Date(Date.now() + 2 * 3_600_000);
    const r = await collectOrphans(pool, refs, {
      delete: true,
      minAgeMs: 3_600_000,
      now: later,
      inUse: (id) => id === ids.orphan,
    });
    expect(orphanIds(r)).toEqual([ids.otherDriver!, ids.snapOrphan!].sort());
    expect(r.inUse).toBe(1);
    expect(await pool.getVolume(ids.orphan!)).not.toBeNull();
  });

  it('never deletes snapshots it cannot check', async () => {
    api.contents = 'missing';
    const r = await collectOrphans(pool, refs, { delete: true, minAgeMs: 0 });
    expect(r.snapshotsChecked).toBe(false);
    expect(r.snapshotsUnknown).toMatch(/not installed/);
    expect(orphanIds(r)).toEqual([ids.orphan!, ids.otherDriver!].sort());
    expect(await pool.listSnapshots()).toHaveLength(3);
  });

  it('deletes nothing when the volumes cannot be listed', async () => {
    api.failPvs = true;
    await expect(collectOrphans(pool, refs, { delete: true, minAgeMs: 0 })).rejects.toThrow();
    expect(await pool.listVolumes()).toHaveLength(4);
    expect(await pool.listSnapshots()).toHaveLength(3);
  });
});

describe('ploop-csi gc', () => {
  const savedEnv = { ...process.env };
  afterEach(() => {
    process.env = { ...savedEnv };
    process.exitCode = undefined;
    vi.restoreAllMocks();
  });

  async function gc(args: string[]): Promise<string> {
    const kubeconfig = path.join(root, 'kubeconfig');
    await fsp.writeFile(kubeconfig, kubeConfigYaml(api.url));
    process.env.KUBECONFIG = kubeconfig;
    delete process.env.PLOOP_CSI_DRIVER_NAME;
    delete process.env.PLOOP_CSI_BLOCKD_SOCKET;
    let out = '';
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out += chunk.toString();
      return true;
    });
    await gcCommand().exitOverride().parseAsync(args, { from: 'user' });
    return out;
  }

  it('lists, then deletes with --delete, reading the pool from the environment', async () => {
    process.env.PLOOP_CSI_POOL = pool.root;
    const listed = JSON.parse(await gc(['--json', '--min-age', '0'])) as {
      orphans: { id: string; deleted: boolean }[];
      driverName: string;
    };
    expect(listed.driverName).toBe(DRIVER);
    expect(orphanIds(listed)).toEqual([ids.orphan!, ids.otherDriver!, ids.snapOrphan!].sort());
    expect(listed.orphans.some((o) => o.deleted)).toBe(false);

    const text = await gc(['--min-age', '0', '--delete']);
    expect(text).toMatch(
      new RegExp(`volume\\t${ids.orphan}\\tpvc-orphan\\t4\\.0 MiB\\t.*\\tdeleted`),
    );
    expect(text).toMatch(/3 orphan\(s\) among 4 volume\(s\) and 3 snapshot\(s\)/);
    expect(process.exitCode ?? 0).toBe(0);
    expect(await pool.listVolumes()).toHaveLength(2);
  });

  it('keeps young entries by default', async () => {
    const text = await gc(['--pool', pool.root]);
    expect(text).toMatch(/0 orphan\(s\).*3 younger than --min-age left alone/);
  });

  it('refuses a directory that holds no pool, and does not make one', async () => {
    const missing = path.join(root, 'missing');
    await expect(gc(['--pool', missing])).rejects.toThrow(/no pool/);
    await expect(fsp.access(missing)).rejects.toThrow();
  });

  it('parses durations', () => {
    expect(parseDuration('15m')).toBe(900_000);
    expect(parseDuration('2h')).toBe(7_200_000);
    expect(parseDuration('0')).toBe(0);
    expect(() => parseDuration('15')).toThrow();
    expect(() => parseDuration('soon')).toThrow();
  });
});
