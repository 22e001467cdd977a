/**
 * End-to-end tests on a cluster where the chart is installed (test/e2e/run.sh sets one up on
 * kind): file system and block volumes, snapshots, expansion, and I/O that goes on while the
 * node plugin or blockd pod is replaced. Uses the current kubeconfig context.
 */
import { randomBytes } from 'node:crypto';
import {
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  V1PersistentVolumeClaim,
  V1Pod,
} from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const DRIVER_NAMESPACE = process.env.E2E_NAMESPACE ?? 'ploop-csi';
const RELEASE = process.env.E2E_RELEASE ?? 'ploop-csi';
const STORAGE_CLASS = process.env.E2E_STORAGE_CLASS ?? 'ploop';
const SNAPSHOT_CLASS = process.env.E2E_SNAPSHOT_CLASS ?? 'ploop';
const IMAGE = process.env.E2E_BUSYBOX ?? 'busybox:1.36';

const kc = new KubeConfig();
kc.loadFromDefault();
const core = kc.makeApiClient(CoreV1Api);
const custom = kc.makeApiClient(CustomObjectsApi);
const ns = `ploop-e2e-${randomBytes(3).toString('hex')}`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | null | undefined | false>,
  timeoutMs = 180_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await sleep(2_000);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}

async function createPvc(
  name: string,
  size: string,
  opts: { block?: boolean; fromSnapshot?: string } = {},
): Promise<void> {
  const pvc: V1PersistentVolumeClaim = {
    metadata: { name },
    spec: {
      accessModes: ['ReadWriteOnce'],
      storageClassName: STORAGE_CLASS,
      volumeMode: opts.block ? 'Block' : 'Filesystem',
      resources: { requests: { storage: size } },
      ...(opts.fromSnapshot
        ? {
            dataSource: {
              apiGroup: 'snapshot.storage.k8s.io',
              kind: 'VolumeSnapshot',
              name: opts.fromSnapshot,
            },
          }
        : {}),
    },
  };
  await core.createNamespacedPersistentVolumeClaim({ namespace: ns, body: pvc });
}

/** A busybox pod running `script` with the claim at /data (or as /dev/xvda for block). */
async function startPod(
  name: string,
  claim: string,
  script: string,
  opts: { block?: boolean; node?: string } = {},
): Promise<void> {
  const pod: V1Pod = {
    metadata: { name },
    spec: {
      restartPolicy: 'Never',
      terminationGracePeriodSeconds: 1,
      ...(opts.node ? { nodeName: opts.node } : {}),
      containers: [
        {
          name: 'main',
          image: IMAGE,
          command: ['sh', '-c', script],
          ...(opts.block
            ? { volumeDevices: [{ name: 'vol', devicePath: '/dev/xvda' }] }
            : { volumeMounts: [{ name: 'vol', mountPath: '/data' }] }),
        },
      ],
      volumes: [{ name: 'vol', persistentVolumeClaim: { claimName: claim } }],
    },
  };
  await core.createNamespacedPod({ namespace: ns, body: pod });
}

const getPod = (name: string) => core.readNamespacedPod({ name, namespace: ns });
const logs = (name: string) => core.readNamespacedPodLog({ name, namespace: ns });

/** Runs a pod to completion and returns its output; throws when it fails. */
async function runPod(name: string, claim: string, script: string, block = false) {
  await startPod(name, claim, script, { block });
  const phase = await waitFor(`pod ${name} to finish`, async () => {
    const p = (await getPod(name)).status?.phase;
    return p === 'Succeeded' || p === 'Failed' ? p : null;
  });
  const out = await logs(name);
  if (phase !== 'Succeeded') throw new Error(`pod ${name} failed:\n${out}`);
  await core.deleteNamespacedPod({ name, namespace: ns });
  return out;
}

async function waitRunning(name: string): Promise<V1Pod> {
  return waitFor(`pod ${name} to run`, async () => {
    const p = await getPod(name);
    return p.status?.phase === 'Running' ? p : null;
  });
}

/** The last counter a writer pod printed ("ok N" lines). */
async function lastCount(name: string): Promise<number> {
  const m = [...(await logs(name)).matchAll(/^ok (\d+)$/gm)];
  return m.length ? Number(m[m.length - 1]![1]) : -1;
}

/** Writes a counter to /data/log with a sync per line; stops on the first error. */
const WRITER =
  'i=0; while true; do echo "$i" >> /data/log && sync && echo "ok $i" || exit 1; ' +
  'i=$((i+1)); sleep 0.2; done';

/** Deletes the driver pod of `component` on `node` while `writer` writes; checks it goes on. */
async function replaceWhileWriting(component: string, writer: string, node: string) {
  const selector = `app.kubernetes.io/instance=${RELEASE},app.kubernetes.io/component=${component}`;
  const list = await core.listNamespacedPod({
    namespace: DRIVER_NAMESPACE,
    labelSelector: selector,
    fieldSelector: `spec.nodeName=${node}`,
  });
  const old = list.items[0]?.metadata?.name;
  expect(old, `${component} pod on ${node}`).toBeDefined();
  const before = await waitFor('the writer to make progress', async () => {
    const n = await lastCount(writer);
    return n >= 5 ? n : null;
  });
  await core.deleteNamespacedPod({ name: old!, namespace: DRIVER_NAMESPACE });
  await waitFor(`a new ${component} pod on ${node}`, async () => {
    const l = await core.listNamespacedPod({
      namespace: DRIVER_NAMESPACE,
      labelSelector: selector,
      fieldSelector: `spec.nodeName=${node}`,
    });
    return l.items.find(
      (p) =>
        p.metadata?.name !== old &&
        p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'),
    );
  });
  // Writes went on across the replacement and still go on.
  const after = await waitFor('the writer to go on', async () => {
    const n = await lastCount(writer);
    return n >= before + 25 ? n : null;
  });
  expect(after).toBeGreaterThan(before);
  const pod = await getPod(writer);
  expect(pod.status?.phase).toBe('Running');
  expect(pod.status?.containerStatuses?.[0]?.restartCount ?? 0).toBe(0);
}

beforeAll(async () => {
  await core.createNamespace({ body: { metadata: { name: ns } } });
});

afterAll(async () => {
  if (process.env.E2E_KEEP_NAMESPACE !== '1') await core.deleteNamespace({ name: ns });
});

describe('ploop-csi on a cluster', () => {
  it('gives a pod a file system that keeps its data', async () => {
    await createPvc('data', '1Gi');
    expect(await runPod('write', 'data', 'echo hello > /data/file && sync && cat /data/file')).toBe(
      'hello\n',
    );
    expect(await runPod('read', 'data', 'cat /data/file')).toBe('hello\n');
    const pvc = await core.readNamespacedPersistentVolumeClaim({ name: 'data', namespace: ns });
    expect(pvc.status?.phase).toBe('Bound');
  });

  it('restores a VolumeSnapshot into a new claim with the data', async () => {
    await custom.createNamespacedCustomObject({
      group: 'snapshot.storage.k8s.io',
      version: 'v1',
      namespace: ns,
      plural: 'volumesnapshots',
      body: {
        apiVersion: 'snapshot.storage.k8s.io/v1',
        kind: 'VolumeSnapshot',
        metadata: { name: 'data-snap' },
        spec: {
          volumeSnapshotClassName: SNAPSHOT_CLASS,
          source: { persistentVolumeClaimName: 'data' },
        },
      },
    });
    await waitFor('the snapshot to be ready', async () => {
      const s = (await custom.getNamespacedCustomObject({
        group: 'snapshot.storage.k8s.io',
        version: 'v1',
        namespace: ns,
        plural: 'volumesnapshots',
        name: 'data-snap',
      })) as { status?: { readyToUse?: boolean } };
      return s.status?.readyToUse === true;
    });
    // Changes after the snapshot stay out of the restored claim.
    await runPod('change', 'data', 'echo changed > /data/file && sync');
    await createPvc('restored', '1Gi', { fromSnapshot: 'data-snap' });
    expect(await runPod('read-restored', 'restored', 'cat /data/file')).toBe('hello\n');
  });

  it('grows a volume while a pod uses it', async () => {
    await createPvc('grow', '1Gi');
    await startPod('grower', 'grow', 'while true; do df -k /data | tail -1; sleep 2; done');
    await waitRunning('grower');
    await core.patchNamespacedPersistentVolumeClaim({
      name: 'grow',
      namespace: ns,
      body: [{ op: 'replace', path: '/spec/resources/requests/storage', value: '2Gi' }],
    });
    await waitFor('the claim to report 2Gi', async () => {
      const c = await core.readNamespacedPersistentVolumeClaim({ name: 'grow', namespace: ns });
      return c.status?.capacity?.storage === '2Gi';
    });
    // df inside the running pod sees the bigger file system.
    await waitFor('the pod to see the new size', async () => {
      const lines = (await logs('grower')).trim().split('\n');
      const kib = Number(lines[lines.length - 1]!.trim().split(/\s+/)[1]);
      return kib > 1.5 * 1024 * 1024;
    });
    await core.deleteNamespacedPod({ name: 'grower', namespace: ns });
  });

  it('serves a raw block volume', async () => {
    await createPvc('raw', '64Mi', { block: true });
    const out = await runPod(
      'block',
      'raw',
      'head -c 4194304 /dev/urandom > /tmp/x && dd if=/tmp/x of=/dev/xvda bs=1M count=4 conv=fsync 2>/dev/null && ' +
        'dd if=/dev/xvda bs=1M count=4 2>/dev/null | md5sum && md5sum < /tmp/x',
      true,
    );
    const [a, b] = out.trim().split('\n');
    expect(a!.split(' ')[0]).toBe(b!.split(' ')[0]);
  });

  for (const component of ['node', 'blockd']) {
    it(`keeps writes going while the ${component} pod of the node is replaced`, async () => {
      const claim = `writes-${component}`;
      const writer = `writer-${component}`;
      await createPvc(claim, '1Gi');
      await startPod(writer, claim, WRITER);
      const node = (await waitRunning(writer)).spec!.nodeName!;
      await replaceWhileWriting(component, writer, node);
      await core.deleteNamespacedPod({ name: writer, namespace: ns });
    });
  }
});
