/**
 * The per-request pipeline around every CSI handler: a request id and a child logger carrying
 * it with the RPC name and the volume/snapshot involved, the request logged with its secrets
 * redacted, errors turned into gRPC statuses (a one-line message, never a stack), and the
 * outcome counted in the metrics.
 */
import { randomBytes } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { CsiError, status, statusName, toCsiError } from './errors.js';
import type { CsiMetrics } from './metrics.js';

export interface RequestContext {
  requestId: string;
  log: Logger;
}

// Handlers take the decoded request (typed per service) and a context; `never` lets any
// request type stand in for the parameter.
export type Handler = (req: never, ctx: RequestContext) => Promise<object>;
export type Handlers = Record<string, Handler>;

export interface Pipeline {
  log: Logger;
  metrics: CsiMetrics | null;
}

/** RPCs that change nothing: logged at debug level, so probes and polls do not flood the log. */
const READ_ONLY = new Set([
  'GetPluginInfo',
  'GetPluginCapabilities',
  'Probe',
  'ControllerGetCapabilities',
  'GetCapacity',
  'ListVolumes',
  'ListSnapshots',
  'GetSnapshot',
  'ControllerGetVolume',
  'ValidateVolumeCapabilities',
  'NodeGetCapabilities',
  'NodeGetInfo',
  'NodeGetVolumeStats',
]);

const SERVER_FAULTS = new Set([status.INTERNAL, status.UNKNOWN, status.DATA_LOSS]);

const boot = randomBytes(3).toString('hex');
let counter = 0;

function nextRequestId(): string {
  return `${boot}-${(++counter).toString(36)}`;
}

/** A copy of a request fit for a log: secret values and mount flags replaced. */
export function redact(value: unknown, key = ''): unknown {
  if (Array.isArray(value)) {
    if (key === 'mountFlags') return value.map(() => '[REDACTED]');
    return value.map((v) => redact(v));
  }
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (/secret/i.test(k) && v && typeof v === 'object') {
        out[k] = Object.fromEntries(Object.keys(v).map((s) => [s, '[REDACTED]']));
      } else if (/secret/i.test(k) && typeof v === 'string' && v) {
        out[k] = '[REDACTED]';
      } else {
        out[k] = redact(v, k);
      }
    }
    return out;
  }
  return value;
}

/** The objects a request is about, for the child logger's bindings. */
function subjects(req: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (!req || typeof req !== 'object') return out;
  const r = req as Record<string, unknown>;
  for (const k of ['volumeId', 'snapshotId', 'sourceVolumeId', 'name'] as const) {
    const v = r[k];
    if (typeof v === 'string' && v) out[k] = v.length > 160 ? `${v.slice(0, 160)}…` : v;
  }
  return out;
}

function unimplemented(method: string): Handler {
  return async () => {
    throw new CsiError(status.UNIMPLEMENTED, `${method} is not implemented by this plugin`);
  };
}

/** Wraps `handlers` into a grpc-js implementation of every method of `service`. */
export function implement(
  service: grpc.ServiceDefinition,
  handlers: Handlers,
  pipeline: Pipeline,
): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  for (const method of Object.keys(service)) {
    const handler = handlers[method] ?? unimplemented(method);
    const quiet = READ_ONLY.has(method);
    impl[method] = (
      call: grpc.ServerUnaryCall<unknown, unknown>,
      callback: grpc.sendUnaryData<unknown>,
    ) => {
      const started = process.hrtime.bigint();
      const requestId = nextRequestId();
      const log = pipeline.log.child({ requestId, rpc: method, ...subjects(call.request) });
      log.debug({ request: redact(call.request) }, 'request');
      const finish = (code: status): number => {
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        pipeline.metrics?.observe(method, statusName(code), seconds);
        return Math.round(seconds * 1e6) / 1e3;
      };
      let result: Promise<object>;
      try {
        result = (handler as (req: unknown, ctx: RequestContext) => Promise<object>)(call.request, {
          requestId,
          log,
        });
      } catch (err) {
        result = Promise.reject(err);
      }
      result.then(
        (response) => {
          const ms = finish(status.OK);
          log[quiet ? 'debug' : 'info']({ code: 'OK', ms, response }, 'done');
          callback(null, response);
        },
        (err: unknown) => {
          const e = toCsiError(err);
          const ms = finish(e.code);
          const fields = { code: statusName(e.code), ms, error: e.message };
          if (SERVER_FAULTS.has(e.code)) log.error({ ...fields, err }, 'failed');
          else log[quiet ? 'debug' : 'info'](fields, 'failed');
          callback({ code: e.code, details: e.message, name: e.name, message: e.message });
        },
      );
    };
  }
  return impl;
}
