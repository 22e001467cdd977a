/** Errors of the block daemon, with a code its clients map to their own (CSI status, exit code). */
export type BlockdErrorCode =
  'NOT_FOUND' | 'INVALID_ARGUMENT' | 'UNAVAILABLE' | 'FAILED_PRECONDITION' | 'BUSY' | 'INTERNAL';

export class BlockdError extends Error {
  constructor(
    readonly code: BlockdErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BlockdError';
  }
}
