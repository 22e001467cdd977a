/**
 * The server as a process component: restarts between every lifecycle step, stale and live
 * sockets, graceful shutdown, request logs and metrics.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/csi/log.js';
import { CsiServer, socketPathOf } from '../../src/csi/server.js';
import { offlineFreezer } from '../../src/pool/index.js';
import {
  Harness,
  M,
  NODE,
  createReq,
  createSnapshot,
  createVolume,
  lifecycle,
  startHarness,
} from './harness.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function harness(opts: Parameters<typeof startHarness>[0] = {}): Promise<Harness> {
  const h = await startHarness(opts);
  cleanup.push(() => h.close());
  return h;
}

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

/** Leaves a socket file nobody listens on, as a killed server would. */
async function staleSocket(p: string): Promise<void> {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(p)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ],
    { stdio: 'ignore' },
  );
  await new Promise((r) => child.once('exit', r));
  expect((await fsp.lstat(p)).isSocket()).toBe(true);
}

describe('endpoint', () => {
  it('parses unix endpoints only', () => {
    expect(socketPathOf('unix:///run/csi/csi.sock')).toBe('/run/csi/csi.sock');
    expect(socketPathOf('unix:/run/csi.sock')).toBe('/run/csi.sock');
    expect(() => socketPathOf('tcp://127.0.0.1:10000')).toThrow(/unix/);
    expect(() => socketPathOf('unix://relative.sock')).toThrow(/unix/);
  });
});

describe('restarts', () => {
  it('completes the lifecycle with a restart between every pair of steps', async () => {
    const h = await harness();
    let restarts = 0;
    await lifecycle(h, 'restart', async () => {
      await h.restart();
      restarts++;
    });
    expect(restarts).toBeGreaterThanOrEqual(10);
  });

  it('replaces a stale socket, refuses a live one and any other file', async () => {
    const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-csi-sock-'));
    cleanup.push(() => fsp.rm(root, { recursive: true, force: true }));
    const sock = path.join(root, 'csi.sock');
    const start = () =>
      CsiServer.start({
        endpoint: `unix://${sock}`,
        nodeId: NODE,
        pool: path.join(root, 'pool'),
        logger: createLogger('silent'),
      });
    await staleSocket(sock);
    const a = await start();
    cleanup.push(() => a.stop());
    await expect(start()).rejects.toThrow(/already listening/);
    await a.stop();
    await expect(fsp.lstat(sock)).rejects.toThrow();
    await fsp.writeFile(sock, 'not a socket');
    await expect(start()).rejects.toThrow(/not a socket/);
    expect(await fsp.readFile(sock, 'utf8')).toBe('not a socket');
  });

  it('lets an in-flight request finish on stop, then stops', async () => {
    let release!: () => void;
    let entered!: () => void;
    const opened = new Promise<void>((r) => (release = r));
    const inside = new Promise<void>((r) => (entered = r));
    const h = await harness({
      freezer: async (id, dd) => {
        entered();
        await opened;
        return offlineFreezer(id, dd);
      },
    });
    const v = await createVolume(h, createReq('drain', 4 * M));
    const pending = createSnapshot(h, 'drain-snap', v.volumeId);
    await inside;
    const stopped = h.server.stop();
    setTimeout(release, 200);
    const s = await pending;
    expect(s.readyToUse).toBe(true);
    await stopped;
    await expect(fsp.lstat(h.socket)).rejects.toThrow();
    await h.restart();
    expect((await createSnapshot(h, 'drain-snap', v.volumeId)).snapshotId).toBe(s.snapshotId);
  });
});

describe('observability', () => {
  it('logs every request with a request id, the RPC and its subject, never secrets', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l));
        done();
      },
    });
    const h = await harness({ logger: createLogger('debug', sink) });
    const v = await createVolume(h, {
      ...createReq('logged', M),
      secrets: { password: 'hunter2-very-secret' },
      volumeCapabilities: [
        { mount: { mountFlags: ['pass=hunter3'] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } },
      ],
    });
    expect(await h.code('Controller', 'DeleteVolume', { volumeId: '' })).toBe(
      status.INVALID_ARGUMENT,
    );
    await new Promise((r) => setTimeout(r, 50));
    const text = JSON.stringify(lines);
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('hunter3');
    const create = lines.filter((l) => l.rpc === 'CreateVolume');
    expect(create.length).toBeGreaterThanOrEqual(2);
    const ids = new Set(create.map((l) => l.requestId));
    expect(ids.size).toBe(1);
    expect(create.every((l) => l.name === 'logged')).toBe(true);
    expect(create.some((l) => l.msg === 'done' && l.code === 'OK')).toBe(true);
    expect(create.some((l) => l.volumeId === v.volumeId)).toBe(true);
    const request = create.find((l) => l.msg === 'request') as { request: { secrets: object } };
    expect(request.request.secrets).toEqual({ password: '[REDACTED]' });
    const failed = lines.find((l) => l.rpc === 'DeleteVolume' && l.msg === 'failed');
    expect(failed).toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(failed?.requestId).not.toBe(create[0]?.requestId);
  });

  it('serves request counts, durations and pool space on the metrics address', async () => {
    const h = await harness({ metricsAddress: '127.0.0.1:0' });
    const addr = h.server.metricsAddress;
    expect(addr).toMatch(/^127\.0\.0\.1:\d+$/);
    await createVolume(h, createReq('metered', M));
    expect(
      await h.code('Controller', 'GetSnapshot', { snapshotId: 'snap-aaaaaaaaaaaaaaaaaaaaaaaaaa' }),
    ).toBe(status.NOT_FOUND);
    const m = await get(`http://${addr}/metrics`);
    expect(m.status).toBe(200);
    expect(m.body).toMatch(/ploop_csi_requests_total\{method="CreateVolume",code="OK"\} 1/);
    expect(m.body).toMatch(/ploop_csi_requests_total\{method="GetSnapshot",code="NOT_FOUND"\} 1/);
    expect(m.body).toMatch(
      /ploop_csi_request_duration_seconds_count\{method="CreateVolume",code="OK"\} 1/,
    );
    expect(m.body).toMatch(/ploop_csi_pool_bytes\{kind="provisioned"\} 1048576/);
    expect(m.body).toMatch(/process_cpu_seconds_total/);
    expect((await get(`http://${addr}/healthz`)).status).toBe(200);
    expect((await get(`http://${addr}/nothing`)).status).toBe(404);
    await h.server.stop();
    await expect(get(`http://${addr}/metrics`)).rejects.toThrow();
  });

  it('refuses a bad metrics address and leaves no socket behind', async () => {
    const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-csi-m-'));
    cleanup.push(() => fsp.rm(root, { recursive: true, force: true }));
    const sock = path.join(root, 'csi.sock');
    await expect(
      CsiServer.start({
        endpoint: `unix://${sock}`,
        nodeId: NODE,
        pool: path.join(root, 'pool'),
        metricsAddress: 'nonsense',
        logger: createLogger('silent'),
      }),
    ).rejects.toThrow(/HOST:PORT/);
    await expect(fsp.lstat(sock)).rejects.toThrow();
  });
});
