/**
 * Loading csi.proto (the official CSI v1.12.0 definition shipped in `csi-proto/`), and the one
 * place where int64 fields cross between the wire (decimal strings) and JavaScript numbers.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CsiError, invalidArgument } from './errors.js';

/** How every message is decoded; types.ts describes the resulting shapes. */
export const LOADER_OPTIONS: protoLoader.Options = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** Finds `rel` in the directory of this module or the closest ancestor holding it. */
export function findUp(rel: string, from = path.dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, rel);
    if (existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) throw new Error(`cannot find ${rel} above ${from}`);
  }
}

export interface CsiServices {
  Identity: grpc.ServiceDefinition;
  Controller: grpc.ServiceDefinition;
  Node: grpc.ServiceDefinition;
  /** Client constructors, for tests and tools talking to a CSI endpoint. */
  clients: {
    Identity: grpc.ServiceClientConstructor;
    Controller: grpc.ServiceClientConstructor;
    Node: grpc.ServiceClientConstructor;
  };
}

let cached: CsiServices | null = null;

export function loadCsi(): CsiServices {
  if (cached) return cached;
  const def = protoLoader.loadSync(findUp(path.join('csi-proto', 'csi.proto')), LOADER_OPTIONS);
  const v1 = (grpc.loadPackageDefinition(def) as { csi: { v1: grpc.GrpcObject } }).csi.v1;
  const ctor = (name: string): grpc.ServiceClientConstructor => {
    const c = v1[name];
    if (typeof c !== 'function') throw new Error(`csi.proto has no service ${name}`);
    return c as grpc.ServiceClientConstructor;
  };
  const clients = {
    Identity: ctor('Identity'),
    Controller: ctor('Controller'),
    Node: ctor('Node'),
  };
  cached = {
    Identity: clients.Identity.service,
    Controller: clients.Controller.service,
    Node: clients.Node.service,
    clients,
  };
  return cached;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Converts a decoded int64 (a decimal string; numbers are accepted too) to a number, exactly.
 * Negative values are invalid (every int64 in CSI is a size); values past 2^53 − 1 cannot be
 * represented exactly and no pool is that large, so they are OUT_OF_RANGE.
 */
export function int64ToNumber(value: string | number, field: string): number {
  let n: bigint;
  try {
    n = BigInt(value);
  } catch {
    throw invalidArgument(`${field} is not an integer: ${String(value)}`);
  }
  if (n < 0n) throw invalidArgument(`${field} must not be negative`);
  if (n > MAX_SAFE) {
    throw new CsiError(
      grpc.status.OUT_OF_RANGE,
      `${field} ${n} is larger than this driver supports (${Number.MAX_SAFE_INTEGER})`,
    );
  }
  return Number(n);
}
