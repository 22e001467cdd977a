/**
 * blockd's local control API: JSON over HTTP on a unix socket (root-only permissions), so any
 * local tool (`curl --unix-socket`) can talk to it and no port is exposed.
 */
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { Blockd } from './daemon.js';
import { BlockdError, BlockdErrorCode } from './errors.js';

export const API_VERSION = 'v1';

const STATUS: Record<BlockdErrorCode, number> = {
  NOT_FOUND: 404,
  INVALID_ARGUMENT: 400,
  UNAVAILABLE: 503,
  FAILED_PRECONDITION: 412,
  BUSY: 409,
  INTERNAL: 500,
};

export function statusFor(code: BlockdErrorCode): number {
  return STATUS[code];
}

export function codeForStatus(status: number): BlockdErrorCode {
  const hit = (Object.entries(STATUS) as [BlockdErrorCode, number][]).find(([, s]) => s === status);
  return hit ? hit[0] : 'INTERNAL';
}

type Body = Record<string, unknown>;

function str(b: Body, key: string): string {
  const v = b[key];
  if (typeof v !== 'string' || v.length === 0)
    throw new BlockdError('INVALID_ARGUMENT', `"${key}" is required`);
  return v;
}

function num(b: Body, key: string): number {
  const v = b[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new BlockdError('INVALID_ARGUMENT', `"${key}" must be a positive integer`);
  }
  return v;
}

async function readBody(req: http.IncomingMessage): Promise<Body> {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 1 << 20) throw new BlockdError('INVALID_ARGUMENT', 'request too large');
  }
  if (!text) return {};
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Body;
  } catch {
    throw new BlockdError('INVALID_ARGUMENT', 'body is not a JSON object');
  }
}

/** Routes: POST /v1/<op> with a JSON body; the answer is JSON, errors are {code, message}. */
async function route(d: Blockd, op: string, b: Body): Promise<unknown> {
  switch (op) {
    case 'probe': {
      const p = d.probe();
      return { ...p, features: p.features.toString() };
    }
    case 'attach':
      return d.attach(str(b, 'path'));
    case 'detach':
      await d.detach(str(b, 'device'));
      return {};
    case 'list':
      return JSON.parse(
        JSON.stringify(await d.list(), (_k, v) => (typeof v === 'bigint' ? v.toString() : v)),
      );
    case 'stats':
      return d.stats(str(b, 'device'));
    case 'snapshot':
      return { guid: await d.snapshot(str(b, 'device')) };
    case 'grow':
      return { sizeBytes: await d.grow(str(b, 'device'), num(b, 'sizeBytes')) };
    case 'merge':
      await d.merge(str(b, 'device'), str(b, 'id'));
      return {};
    default:
      throw new BlockdError('NOT_FOUND', `unknown operation "${op}"`);
  }
}

async function socketInUse(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export async function serve(d: Blockd, socketPath: string): Promise<http.Server> {
  if (await socketInUse(socketPath)) {
    throw new BlockdError('BUSY', `another server is listening on ${socketPath}`);
  }
  await fsp.rm(socketPath, { force: true });
  const server = http.createServer((req, res) => {
    const m = new RegExp(`^/${API_VERSION}/([a-z-]+)$`).exec(req.url ?? '');
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    void (async () => {
      try {
        if (!m || req.method !== 'POST')
          throw new BlockdError('NOT_FOUND', `no such endpoint ${req.method} ${req.url}`);
        reply(200, await route(d, m[1]!, await readBody(req)));
      } catch (err) {
        const e =
          err instanceof BlockdError ? err : new BlockdError('INTERNAL', (err as Error).message);
        reply(statusFor(e.code), { code: e.code, message: e.message });
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  await fsp.chmod(socketPath, 0o600);
  return server;
}
