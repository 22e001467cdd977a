/**
 * Typed errors of the ploop layer. Callers (CLI, pool, CSI) map `code` to exit codes or
 * gRPC status codes; the message is a one-line reason fit for an operator.
 */
export type PloopErrorCode =
  | 'CORRUPT' // the image or descriptor violates the format
  | 'INVALID_ARGUMENT' // the caller asked for something impossible
  | 'BUSY' // locked by another process, or in use
  | 'NOT_FOUND' // a file, snapshot or delta does not exist
  | 'UNSUPPORTED' // valid format, but a feature this implementation does not handle
  | 'IO'; // the operating system refused an operation

export class PloopError extends Error {
  readonly code: PloopErrorCode;
  constructor(code: PloopErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

export class CorruptImageError extends PloopError {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super('CORRUPT', `${path}: ${message}`);
  }
}

export class InvalidArgumentError extends PloopError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
  }
}

export class BusyError extends PloopError {
  constructor(message: string) {
    super('BUSY', message);
  }
}

export class NotFoundError extends PloopError {
  constructor(message: string) {
    super('NOT_FOUND', message);
  }
}

export class UnsupportedError extends PloopError {
  constructor(message: string) {
    super('UNSUPPORTED', message);
  }
}

export class IoError extends PloopError {
  constructor(message: string, cause?: unknown) {
    super('IO', message, { cause });
  }
}

/** Wraps a Node.js system error into a typed error, keeping typed errors as they are. */
export function toPloopError(err: unknown, what: string): PloopError {
  if (err instanceof PloopError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && e.code === 'ENOENT') return new NotFoundError(`${what}: no such file`);
  if (e && (e.code === 'EAGAIN' || e.code === 'EBUSY')) return new BusyError(`${what}: busy`);
  const msg = e && typeof e.message === 'string' ? e.message : String(err);
  return new IoError(`${what}: ${msg}`, err);
}
