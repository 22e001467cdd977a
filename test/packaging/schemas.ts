/**
 * Offline validation of Kubernetes objects against the API's schemas, without an API server.
 *
 * - Built-in kinds: the OpenAPI schemas of the Kubernetes API, compiled by the kubernetes-models
 *   package (types, required fields, enums, formats). Those schemas allow unknown fields, which
 *   an API server drops or refuses, so every field name is also checked against the model
 *   attribute tables of @kubernetes/client-node (generated from the same OpenAPI).
 * - prometheus-operator kinds (ServiceMonitor, PodMonitor): the schemas of
 *   @kubernetes-models/prometheus-operator, generated from the upstream CRDs. They do not refuse
 *   unknown fields.
 * - VolumeSnapshotClass and kind's Cluster configuration: the strict schemas below, written
 *   from the upstream CRD (external-snapshotter client/config/crd, snapshot.storage.k8s.io v1)
 *   and kind's v1alpha4 configuration types.
 * - Any other kind is an error: nothing passes unchecked.
 * Object names and labels are checked the way the API server checks them.
 */
import * as k8s from '@kubernetes/client-node';
import { Ajv, type ValidateFunction } from 'ajv';

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

type ModelClass = new (data: unknown) => { validate(): void };

const STRING_MAP = { type: 'object', additionalProperties: { type: 'string' } };
const METADATA = { type: 'object' };

/** snapshot.storage.k8s.io/v1 VolumeSnapshotClass, after the upstream CRD. */
const VOLUME_SNAPSHOT_CLASS = {
  type: 'object',
  required: ['apiVersion', 'kind', 'driver', 'deletionPolicy'],
  additionalProperties: false,
  properties: {
    apiVersion: { const: 'snapshot.storage.k8s.io/v1' },
    kind: { const: 'VolumeSnapshotClass' },
    metadata: METADATA,
    driver: { type: 'string', minLength: 1 },
    deletionPolicy: { enum: ['Delete', 'Retain'] },
    parameters: STRING_MAP,
  },
};

const KIND_MOUNT = {
  type: 'object',
  required: ['containerPath', 'hostPath'],
  additionalProperties: false,
  properties: {
    containerPath: { type: 'string', pattern: '^/' },
    hostPath: { type: 'string', pattern: '^/' },
    readOnly: { type: 'boolean' },
    selinuxRelabel: { type: 'boolean' },
    propagation: { enum: ['None', 'HostToContainer', 'Bidirectional'] },
  },
};

/** kind.x-k8s.io/v1alpha4 Cluster (kind's configuration file). */
const KIND_CLUSTER = {
  type: 'object',
  required: ['apiVersion', 'kind'],
  additionalProperties: false,
  properties: {
    apiVersion: { const: 'kind.x-k8s.io/v1alpha4' },
    kind: { const: 'Cluster' },
    name: { type: 'string' },
    featureGates: { type: 'object', additionalProperties: { type: 'boolean' } },
    runtimeConfig: STRING_MAP,
    kubeadmConfigPatches: { type: 'array', items: { type: 'string' } },
    kubeadmConfigPatchesJSON6902: { type: 'array', items: { type: 'object' } },
    containerdConfigPatches: { type: 'array', items: { type: 'string' } },
    containerdConfigPatchesJSON6902: { type: 'array', items: { type: 'string' } },
    networking: { type: 'object' },
    nodes: {
      type: 'array',
      items: {
        type: 'object',
        required: ['role'],
        additionalProperties: false,
        properties: {
          role: { enum: ['control-plane', 'worker'] },
          image: { type: 'string' },
          labels: STRING_MAP,
          extraMounts: { type: 'array', items: KIND_MOUNT },
          extraPortMappings: { type: 'array', items: { type: 'object' } },
          kubeadmConfigPatches: { type: 'array', items: { type: 'string' } },
          kubeadmConfigPatchesJSON6902: { type: 'array', items: { type: 'object' } },
        },
      },
    },
  },
};

const ajv = new Ajv({ allErrors: true, strict: true });
const OWN_SCHEMAS: Record<string, ValidateFunction> = {
  'snapshot.storage.k8s.io/v1/VolumeSnapshotClass': ajv.compile(VOLUME_SNAPSHOT_CLASS),
  'kind.x-k8s.io/v1alpha4/Cluster': ajv.compile(KIND_CLUSTER),
};

/** Which package holds the model of an apiVersion's group. */
function modelModule(apiVersion: string, kind: string): string | null {
  const group = apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : '';
  if (group === 'monitoring.coreos.com') {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  }
  // Kubernetes' own groups: the core group, names without dots, and *.k8s.io.
  if (group === '' || !group.includes('.') || group.endsWith('.k8s.io')) {
    return `kubernetes-models/${apiVersion}/${kind}`;
  }
  return null;
}

async function modelClass(apiVersion: string, kind: string): Promise<ModelClass | null> {
  const spec = modelModule(apiVersion, kind);
  if (!spec) return null;
  try {
    const mod = (await import(spec)) as Record<string, unknown>;
    return typeof mod[kind] === 'function' ? (mod[kind] as ModelClass) : null;
  } catch {
    return null;
  }
}

type AttributeMap = { baseName: string; type: string }[];

function attributes(type: string): AttributeMap | null {
  const cls = (k8s as unknown as Record<string, { getAttributeTypeMap?: () => AttributeMap }>)[
    type
  ];
  return typeof cls?.getAttributeTypeMap === 'function' ? cls.getAttributeTypeMap() : null;
}

/** Reports field names that the client-node model of `type` does not have, recursively. */
function unknownFields(value: unknown, type: string, where: string, out: string[]): void {
  if (value === null || value === undefined) return;
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (Array.isArray(value))
      value.forEach((v, i) => unknownFields(v, array[1]!, `${where}[${i}]`, out));
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) unknownFields(v, map[1]!, `${where}.${k}`, out);
    }
    return;
  }
  const attrs = attributes(type);
  if (!attrs || typeof value !== 'object' || Array.isArray(value)) return;
  const known = new Map(attrs.map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    const t = known.get(k);
    if (t === undefined) out.push(`${where}.${k}: unknown field (not in ${type})`);
    else unknownFields(v, t, `${where}.${k}`, out);
  }
}

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

function metadataErrors(o: K8sObject): string[] {
  const errors: string[] = [];
  const name = o.metadata?.name;
  if (o.apiVersion === 'kind.x-k8s.io/v1alpha4') return errors;
  if (typeof name !== 'string' || !name) errors.push('metadata.name is missing');
  else if (name.length > 253 || !DNS_SUBDOMAIN.test(name)) {
    errors.push(`metadata.name "${name}" is not a DNS subdomain`);
  }
  for (const [k, v] of Object.entries(o.metadata?.labels ?? {})) {
    const slash = k.lastIndexOf('/');
    const prefix = slash >= 0 ? k.slice(0, slash) : '';
    const base = k.slice(slash + 1);
    if (
      (prefix && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) ||
      base.length > 63 ||
      !LABEL_NAME.test(base)
    ) {
      errors.push(`label key "${k}" is invalid`);
    }
    if (typeof v !== 'string' || v.length > 63 || !LABEL_VALUE.test(v)) {
      errors.push(`label ${k}: value ${JSON.stringify(v)} is invalid`);
    }
  }
  return errors;
}

/** The problems of one object; empty when it is valid. */
export async function validateObject(o: K8sObject): Promise<string[]> {
  if (typeof o !== 'object' || o === null || typeof o.apiVersion !== 'string' || !o.kind) {
    return ['not a Kubernetes object (apiVersion and kind are required)'];
  }
  const id = `${o.apiVersion}/${o.kind}`;
  const errors = metadataErrors(o);
  const own = OWN_SCHEMAS[id];
  if (own) {
    if (!own(o)) {
      for (const e of own.errors ?? []) errors.push(`${e.instancePath || '/'} ${e.message ?? ''}`);
    }
    if (o.metadata) unknownFields(o.metadata, 'V1ObjectMeta', 'metadata', errors);
    return errors;
  }
  const Model = await modelClass(o.apiVersion, o.kind);
  if (!Model) return [...errors, `no schema for ${id}: add one to test/packaging/schemas.ts`];
  try {
    new Model(o).validate();
  } catch (err) {
    errors.push(err instanceof Error ? err.message : String(err));
  }
  if (!o.apiVersion.startsWith('monitoring.coreos.com/')) {
    const version = o.apiVersion.slice(o.apiVersion.indexOf('/') + 1);
    const type = version.charAt(0).toUpperCase() + version.slice(1) + o.kind;
    if (!attributes(type))
      errors.push(`no field table for ${id} (${type}) in @kubernetes/client-node`);
    else unknownFields(o, type, o.kind, errors);
  }
  return errors;
}

/** Kinds that live in a namespace, among those the chart and deploy/ create. */
export const NAMESPACED_KINDS = new Set([
  'ServiceAccount',
  'Role',
  'RoleBinding',
  'DaemonSet',
  'Deployment',
  'Service',
  'ConfigMap',
  'Secret',
  'ServiceMonitor',
  'PodMonitor',
]);
