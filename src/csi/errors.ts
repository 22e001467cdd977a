/**
 * CSI errors: a typed error carrying a gRPC status code, and the mapping of the lower layers'
 * typed errors (PoolError, PloopError, HostError, BlockdError, system errors) to the codes the
 * CSI spec prescribes.
 */
import { status } from '@grpc/grpc-js';
import { BlockdError } from '../blockdev/errors.js';
import { HostError } from '../host/errors.js';
import { PloopError } from '../ploop/index.js';
import { PoolError } from '../pool/index.js';

export { status };

export class CsiError extends Error {
  constructor(
    readonly code: status,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CsiError';
  }
}

export const invalidArgument = (message: string): CsiError =>
  new CsiError(status.INVALID_ARGUMENT, message);
export const notFound = (message: string): CsiError => new CsiError(status.NOT_FOUND, message);
export const failedPrecondition = (message: string): CsiError =>
  new CsiError(status.FAILED_PRECONDITION, message);

const POOL_CODES: Record<PoolError['code'], status> = {
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  OUT_OF_RANGE: status.OUT_OF_RANGE,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  INTERNAL: status.INTERNAL,
};

const PLOOP_CODES: Record<PloopError['code'], status> = {
  // A damaged image is the driver's problem, not the caller's: retrying may follow a repair.
  CORRUPT: status.INTERNAL,
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  // Held by another process or operation: the spec's "operation pending", retried with backoff.
  BUSY: status.ABORTED,
  NOT_FOUND: status.NOT_FOUND,
  // A source whose format this implementation cannot stack on ("source not supported").
  UNSUPPORTED: status.INVALID_ARGUMENT,
  IO: status.INTERNAL,
};

const HOST_CODES: Record<HostError['code'], status> = {
  // The node lacks a tool it needs: fixed by installing it, not by retrying.
  TOOL_MISSING: status.FAILED_PRECONDITION,
  TIMEOUT: status.DEADLINE_EXCEEDED,
  FAILED: status.INTERNAL,
  // A mount or device still in use, a path or device missing, a device holding data that is
  // never formatted, a path of the wrong type: the state of the node must change first.
  BUSY: status.FAILED_PRECONDITION,
  NOT_FOUND: status.FAILED_PRECONDITION,
  HAS_DATA: status.FAILED_PRECONDITION,
  WRONG_TYPE: status.FAILED_PRECONDITION,
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
};

const BLOCKD_CODES: Record<BlockdError['code'], status> = {
  NOT_FOUND: status.NOT_FOUND,
  // The node service sends blockd what it built itself: a refusal is the driver's fault.
  INVALID_ARGUMENT: status.INTERNAL,
  UNAVAILABLE: status.UNAVAILABLE,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  // Another operation on the same device: retried with backoff like any pending operation.
  BUSY: status.ABORTED,
  INTERNAL: status.INTERNAL,
};

/** System error codes anywhere in the cause chain that mean "out of space". */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

function causes(err: unknown): unknown[] {
  const out: unknown[] = [];
  for (let e = err, depth = 0; e && depth < 8; depth++) {
    out.push(e);
    e = e instanceof Error ? e.cause : undefined;
  }
  return out;
}

/** The gRPC status code for any error thrown while serving a request. */
export function statusOf(err: unknown): status {
  if (err instanceof CsiError) return err.code;
  for (const e of causes(err)) {
    const code = (e as NodeJS.ErrnoException | null)?.code;
    if (typeof code === 'string' && NO_SPACE.has(code)) return status.RESOURCE_EXHAUSTED;
  }
  if (err instanceof PoolError) return POOL_CODES[err.code] ?? status.INTERNAL;
  if (err instanceof PloopError) return PLOOP_CODES[err.code] ?? status.INTERNAL;
  if (err instanceof HostError) return HOST_CODES[err.code] ?? status.INTERNAL;
  if (err instanceof BlockdError) return BLOCKD_CODES[err.code] ?? status.INTERNAL;
  return status.INTERNAL;
}

/** Converts anything thrown into a CsiError with a one-line message (never a stack trace). */
export function toCsiError(err: unknown): CsiError {
  if (err instanceof CsiError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new CsiError(statusOf(err), message.split('\n')[0] || 'internal error', { cause: err });
}

/** The name of a status code, for logs and metric labels ("NOT_FOUND"). */
export function statusName(code: status): string {
  return status[code] ?? String(code);
}
