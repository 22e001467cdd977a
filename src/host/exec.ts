/**
 * Running host tools: an argument array (never a shell string), stdin from /dev/null (a tool
 * that asks a question gets end-of-file and gives up instead of proceeding), the C locale (so
 * messages can be matched), a bounded run time and bounded captured output.
 */
import { spawn } from 'node:child_process';
import { HostError } from './errors.js';

export interface RunOptions {
  /** Kill the tool (SIGKILL) after this many milliseconds. Default 60 s. */
  timeoutMs?: number;
  /** Exit codes that count as success (default [0]). */
  okCodes?: readonly number[];
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export const DEFAULT_TIMEOUT_MS = 60_000;
/** Captured output per stream; the rest is dropped (the tail is what explains a failure). */
const MAX_OUTPUT = 1 << 20;
/** Where the tools live on every distribution, whatever PATH the process was given. */
const SYSTEM_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

function toolPath(): string {
  const own = (process.env.PATH ?? '').split(':').filter(Boolean);
  return [...new Set([...own, ...SYSTEM_PATH])].join(':');
}

/** The last non-empty lines of a tool's output, for an error message. */
export function tail(text: string, lines = 3): string {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(-lines)
    .join('; ');
}

function append(buf: string, chunk: string): string {
  const s = buf + chunk;
  return s.length > MAX_OUTPUT ? s.slice(s.length - MAX_OUTPUT) : s;
}

/**
 * Runs `cmd args…` and resolves with its output when it exits with an accepted code. A missing
 * tool is TOOL_MISSING, a tool that is killed for taking too long TIMEOUT, any other exit
 * FAILED (with the tail of its output in the message and the result in `cause`).
 */
export function run(
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const okCodes = opts.okCodes ?? [0];
  const what = [cmd, ...args].join(' ');
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PATH: toolPath(), LC_ALL: 'C', LANG: 'C' },
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout = append(stdout, c)));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr = append(stderr, c)));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ENOENT') {
        reject(new HostError('TOOL_MISSING', `${cmd} is not installed (not found in PATH)`));
      } else {
        reject(new HostError('FAILED', `${what}: ${err.message}`, { cause: err }));
      }
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) {
        reject(new HostError('TIMEOUT', `${what} did not finish within ${timeoutMs} ms`));
        return;
      }
      const result: RunResult = { code: code ?? -1, stdout, stderr };
      if (code !== null && okCodes.includes(code)) {
        resolve(result);
        return;
      }
      const how = signal ? `was killed by ${signal}` : `exited with ${code}`;
      const detail = tail(stderr) || tail(stdout);
      reject(
        new HostError('FAILED', `${what} ${how}${detail ? `: ${detail}` : ''}`, {
          cause: result,
        }),
      );
    });
  });
}
