/**
 * The Helm chart and the deploy/ manifests: `helm lint` and `helm template` with the default
 * values and every example values file, `kubectl kustomize deploy/`, every object validated
 * offline against the Kubernetes API schemas, deploy/ kept equal to the chart's defaults, and
 * what the manifests ask of the driver (flags, StorageClass parameters) checked against the
 * driver's own code.
 */
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { parseAllDocuments } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { blockdCommand } from '../../src/cli/blockd.js';
import { csiCommand, type CsiCommandOptions } from '../../src/cli/csi.js';
import { parseParameters } from '../../src/pool/index.js';
import { K8sObject, NAMESPACED_KINDS, validateObject } from './schemas.js';
import { K8sTools, REPO, k8sTools, run } from './tools.js';

const CHART = path.join(REPO, 'charts', 'ploop-csi');
const EXAMPLES = path.join(CHART, 'examples');
const NAMESPACE = 'ploop-csi';
const RELEASE = 'ploop-csi';

const valueFiles: (string | null)[] = [
  null,
  ...readdirSync(EXAMPLES)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => path.join(EXAMPLES, f)),
];
const label = (f: string | null) => (f ? `examples/${path.basename(f)}` : 'default values');

function parseObjects(text: string): K8sObject[] {
  const out: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(doc.errors.map((e) => e.message).join('\n'));
    const o = doc.toJS() as K8sObject | null;
    if (o !== null) out.push(o);
  }
  return out;
}

async function problems(objects: K8sObject[]): Promise<string[]> {
  const out: string[] = [];
  for (const o of objects) {
    for (const e of await validateObject(o)) out.push(`${o.kind}/${o.metadata?.name}: ${e}`);
  }
  return out;
}

interface Container {
  name: string;
  args?: string[];
  env?: { name: string; value?: string }[];
}

function containers(objects: K8sObject[], daemonSet: string): Container[] {
  const ds = objects.find((o) => o.kind === 'DaemonSet' && o.metadata?.name === daemonSet);
  if (!ds) throw new Error(`no DaemonSet ${daemonSet}`);
  return (ds as unknown as { spec: { template: { spec: { containers: Container[] } } } }).spec
    .template.spec.containers;
}

/** The `--flag` names of args that the command does not define. */
function unknownFlags(cmd: Command, args: string[]): string[] {
  const known = new Set(cmd.options.map((o) => o.long));
  return args
    .filter((a) => a.startsWith('--'))
    .map((a) => a.split('=')[0]!)
    .filter((f) => !known.has(f));
}

let tools: K8sTools;
const rendered = new Map<string | null, K8sObject[]>();

beforeAll(() => {
  tools = k8sTools();
  for (const f of valueFiles) {
    const args = ['template', RELEASE, CHART, '--namespace', NAMESPACE];
    if (f) args.push('--values', f);
    rendered.set(f, parseObjects(run(tools.helm, args)));
  }
});

describe.each(valueFiles.map((f) => [label(f), f] as const))('chart with %s', (_name, file) => {
  const objects = () => rendered.get(file)!;

  it('passes helm lint --strict', () => {
    const args = ['lint', CHART, '--strict', '--namespace', NAMESPACE];
    if (file) args.push('--values', file);
    expect(run(tools.helm, args)).toContain('0 chart(s) failed');
  });

  it('renders objects that are valid against the Kubernetes API schemas', async () => {
    expect(objects().length).toBeGreaterThan(5);
    expect(await problems(objects())).toEqual([]);
  });

  it('puts every namespaced object in the release namespace', () => {
    for (const o of objects()) {
      if (NAMESPACED_KINDS.has(o.kind)) expect(o.metadata?.namespace, o.kind).toBe(NAMESPACE);
      else expect(o.metadata?.namespace, o.kind).toBeUndefined();
    }
  });

  it('gives the driver only flags it has', async () => {
    const node = containers(objects(), `${RELEASE}-node`).find((c) => c.name === 'csi')!;
    const args = node.args!;
    expect(args[0]).toBe('csi');
    expect(unknownFlags(csiCommand(), args.slice(1))).toEqual([]);
    // Parse them for real, with the container's environment, through the command definition.
    let parsed: CsiCommandOptions | null = null;
    const saved = { ...process.env };
    try {
      for (const e of node.env ?? []) if (e.value !== undefined) process.env[e.name] = e.value;
      const cmd = csiCommand(async (o) => {
        parsed = o;
      }).exitOverride();
      await cmd.parseAsync(args.slice(1), { from: 'user' });
    } finally {
      process.env = saved;
    }
    expect(parsed).not.toBeNull();
    expect(parsed!.pool).toMatch(/^\//);
    expect(parsed!.blockdSocket).toMatch(/blockd\.sock$/);

    const blockd = containers(objects(), `${RELEASE}-blockd`)[0]!;
    expect(blockd.args![0]).toBe('blockd');
    expect(unknownFlags(blockdCommand(), blockd.args!.slice(1))).toEqual([]);
    // Both pods see blockd's socket at the same path.
    expect(blockd.args).toContain(`--socket=${parsed!.blockdSocket}`);
  });

  it('creates StorageClasses whose parameters the driver accepts', () => {
    const classes = objects().filter((o) => o.kind === 'StorageClass');
    expect(classes.length).toBeGreaterThan(0);
    for (const sc of classes) {
      const s = sc as unknown as {
        volumeBindingMode: string;
        parameters: Record<string, string>;
        provisioner: string;
      };
      expect(s.volumeBindingMode).toBe('WaitForFirstConsumer');
      // The sidecar consumes csi.storage.k8s.io/ keys; the driver must accept the rest.
      expect(() => parseParameters(s.parameters, 1 << 20)).not.toThrow();
      const driver = objects().find((o) => o.kind === 'CSIDriver');
      if (driver) expect(s.provisioner).toBe(driver.metadata?.name);
    }
  });
});

describe('chart defaults', () => {
  it('run the sidecars in distributed mode', () => {
    const objects = rendered.get(null)!;
    const byName = new Map(containers(objects, `${RELEASE}-node`).map((c) => [c.name, c]));
    expect([...byName.keys()].sort()).toEqual([
      'csi',
      'csi-provisioner',
      'csi-resizer',
      'csi-snapshotter',
      'livenessprobe',
      'node-driver-registrar',
    ]);
    expect(byName.get('csi-provisioner')!.args).toEqual(
      expect.arrayContaining([
        '--node-deployment=true',
        '--strict-topology=true',
        '--immediate-topology=false',
        '--enable-capacity=true',
      ]),
    );
    expect(byName.get('csi-snapshotter')!.args).toContain('--node-deployment=true');
    expect(byName.get('csi-resizer')!.args).toContain('--leader-election=true');
    const driver = objects.find((o) => o.kind === 'CSIDriver') as unknown as {
      spec: Record<string, unknown>;
    };
    expect(driver.spec).toMatchObject({
      attachRequired: false,
      storageCapacity: true,
      fsGroupPolicy: 'File',
      volumeLifecycleModes: ['Persistent'],
    });
    const blockd = objects.find(
      (o) => o.kind === 'DaemonSet' && o.metadata?.name === `${RELEASE}-blockd`,
    ) as unknown as { spec: { updateStrategy: { type: string } } };
    expect(blockd.spec.updateStrategy.type).toBe('OnDelete');
  });
});

describe('deploy/', () => {
  const kustomize = (dir: string) => parseObjects(run(tools.kubectl, ['kustomize', dir]));

  it('builds with kubectl kustomize and is valid against the API schemas', async () => {
    const objects = kustomize(path.join(REPO, 'deploy'));
    expect(objects.some((o) => o.kind === 'DaemonSet')).toBe(true);
    expect(await problems(objects)).toEqual([]);
    const snapshotClass = kustomize(path.join(REPO, 'deploy', 'snapshot-class'));
    expect(snapshotClass.map((o) => o.kind)).toEqual(['VolumeSnapshotClass']);
    expect(await problems(snapshotClass)).toEqual([]);
  });

  it('equals the chart rendered with its default values', () => {
    const key = (o: K8sObject) => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name}`;
    const fromChart = rendered.get(null)!.map((o) => {
      const copy = structuredClone(o);
      delete copy.metadata?.labels?.['helm.sh/chart'];
      delete copy.metadata?.labels?.['app.kubernetes.io/managed-by'];
      return copy;
    });
    const fromDeploy = kustomize(path.join(REPO, 'deploy')).filter((o) => o.kind !== 'Namespace');
    const sort = (list: K8sObject[]) => [...list].sort((a, b) => key(a).localeCompare(key(b)));
    expect(sort(fromDeploy)).toEqual(sort(fromChart));
  });

  it('has a valid kind cluster configuration with /dev and a pool on every node', async () => {
    const [cluster] = parseObjects(
      readFileSync(path.join(REPO, 'deploy', 'kind', 'cluster.yaml'), 'utf8'),
    );
    expect(await validateObject(cluster!)).toEqual([]);
    const nodes = (
      cluster as unknown as {
        nodes: { extraMounts: { containerPath: string; hostPath: string }[] }[];
      }
    ).nodes;
    const pools = new Set<string>();
    for (const n of nodes) {
      expect(n.extraMounts).toEqual(
        expect.arrayContaining([{ hostPath: '/dev', containerPath: '/dev' }]),
      );
      const pool = n.extraMounts.find((m) => m.containerPath === '/var/lib/ploop-csi/pool');
      expect(pool).toBeDefined();
      pools.add(pool!.hostPath);
    }
    expect(pools.size).toBe(nodes.length);
  });
});

describe('the validator', () => {
  const ds = (): K8sObject =>
    JSON.parse(
      JSON.stringify({
        apiVersion: 'apps/v1',
        kind: 'DaemonSet',
        metadata: { name: 'x', namespace: 'y' },
        spec: {
          selector: { matchLabels: { a: 'b' } },
          template: {
            metadata: { labels: { a: 'b' } },
            spec: { containers: [{ name: 'c', image: 'i', ports: [{ containerPort: 80 }] }] },
          },
        },
      }),
    ) as K8sObject;

  it('accepts a valid object', async () => {
    expect(await validateObject(ds())).toEqual([]);
  });

  it('refuses wrong types, unknown fields, bad names, unknown kinds and bad CRD objects', async () => {
    const wrongType = ds() as unknown as {
      spec: { template: { spec: { containers: { ports: { containerPort: unknown }[] }[] } } };
    };
    wrongType.spec.template.spec.containers[0]!.ports[0]!.containerPort = 'http';
    expect((await validateObject(wrongType as unknown as K8sObject)).join()).toMatch(/integer/);

    const unknown = ds() as unknown as { spec: { template: { spec: { containers: object[] } } } };
    unknown.spec.template.spec.containers[0] = { name: 'c', image: 'i', imagee: 'typo' };
    expect((await validateObject(unknown as unknown as K8sObject)).join()).toMatch(
      /containers\[0\]\.imagee: unknown field/,
    );

    const badName = ds();
    badName.metadata!.name = 'Not_A_Name';
    expect((await validateObject(badName)).join()).toMatch(/DNS subdomain/);

    expect(
      (
        await validateObject({
          apiVersion: 'example.com/v1',
          kind: 'Widget',
          metadata: { name: 'w' },
        })
      ).join(),
    ).toMatch(/no schema/);

    const vsc = {
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshotClass',
      metadata: { name: 's' },
      driver: 'd',
      deletionPolicy: 'Keep',
      parameter: {},
    };
    const vscErrors = (await validateObject(vsc)).join('\n');
    expect(vscErrors).toMatch(/allowed values/);
    expect(vscErrors).toMatch(/additional properties/);

    const monitor = {
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'ServiceMonitor',
      metadata: { name: 'm' },
      spec: { selector: {}, endpoints: [{ port: 'metrics', interval: 30 }] },
    };
    expect((await validateObject(monitor)).join()).toMatch(/must be string/);
  });
});
