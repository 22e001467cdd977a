/** How CLI commands talk to people and to scripts: text or `--json`, progress only on a TTY. */
import cliProgress from 'cli-progress';
import { PloopError } from '../ploop/index.js';

export interface OutputOptions {
  json?: boolean;
}

export function print(opts: OutputOptions, data: unknown, text: () => string): void {
  if (opts.json) process.stdout.write(`${JSON.stringify(data, null, 2)}\n`);
  else {
    const t = text();
    if (t) process.stdout.write(t.endsWith('\n') ? t : `${t}\n`);
  }
}

/** A progress callback drawing a bar on stderr when it is a terminal and output is not JSON. */
export function progressBar(
  opts: OutputOptions,
  label: string,
): { update: (done: number, total: number) => void; stop: () => void } {
  if (opts.json || !process.stderr.isTTY) return { update: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% {value}/{total}`, stream: process.stderr },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      if (!started) {
        bar.start(total, 0);
        started = true;
      }
      bar.setTotal(total);
      bar.update(done);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

/** Exit codes: distinct per error class so scripts can tell them apart. */
export const EXIT = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  CORRUPT: 3,
  BUSY: 4,
  NOT_FOUND: 5,
  UNSUPPORTED: 6,
  IO: 7,
} as const;

export function exitCodeFor(err: unknown): number {
  if (!(err instanceof PloopError)) return EXIT.FAILURE;
  switch (err.code) {
    case 'CORRUPT':
      return EXIT.CORRUPT;
    case 'INVALID_ARGUMENT':
      return EXIT.USAGE;
    case 'BUSY':
      return EXIT.BUSY;
    case 'NOT_FOUND':
      return EXIT.NOT_FOUND;
    case 'UNSUPPORTED':
      return EXIT.UNSUPPORTED;
    case 'IO':
      return EXIT.IO;
  }
}

/** One line, no stack: the reason a command failed. */
export function reason(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0]!;
}
