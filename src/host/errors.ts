/** Errors of node-side host operations (tools, mounts, devices), with a code callers map. */
export type HostErrorCode =
  /** A required tool is not installed (or not in PATH). */
  | 'TOOL_MISSING'
  /** A tool did not finish within its time limit and was killed. */
  | 'TIMEOUT'
  /** A tool ran and failed. */
  | 'FAILED'
  /** The mount, device or path is in use (umount: target is busy; an exclusive open failed). */
  | 'BUSY'
  /** A path or device that should exist does not. */
  | 'NOT_FOUND'
  /** A caller's argument is unusable (a relative path, an unsupported file system type). */
  | 'INVALID_ARGUMENT'
  /** The device holds data (a file system, partition table, …): it is never formatted. */
  | 'HAS_DATA'
  /** A path exists with the wrong type (a file where a directory is wanted, …). */
  | 'WRONG_TYPE';

export class HostError extends Error {
  constructor(
    readonly code: HostErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'HostError';
  }
}
