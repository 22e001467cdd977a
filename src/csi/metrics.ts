/**
 * Prometheus metrics: requests by method and status code, their durations, the pool's capacity,
 * and the process defaults; served over HTTP at /metrics when a metrics address is given.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import client from 'prom-client';
import type { Logger } from 'pino';
import type { PoolCapacity } from '../pool/index.js';

export class CsiMetrics {
  readonly registry = new client.Registry();
  private readonly requests: client.Counter<'method' | 'code'>;
  private readonly duration: client.Histogram<'method' | 'code'>;

  constructor(capacity: () => Promise<PoolCapacity>) {
    client.collectDefaultMetrics({ register: this.registry });
    this.requests = new client.Counter({
      name: 'ploop_csi_requests_total',
      help: 'CSI requests served, by method and gRPC status code.',
      labelNames: ['method', 'code'],
      registers: [this.registry],
    });
    this.duration = new client.Histogram({
      name: 'ploop_csi_request_duration_seconds',
      help: 'Time to serve a CSI request, by method and gRPC status code.',
      labelNames: ['method', 'code'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120],
      registers: [this.registry],
    });
    new client.Gauge({
      name: 'ploop_csi_pool_bytes',
      help:
        'Pool space: "total" and "free" of its file system, "provisioned" (sum of volume sizes), ' +
        '"available" (what new volumes may still use, after over-provisioning).',
      labelNames: ['kind'],
      registers: [this.registry],
      async collect() {
        const c = await capacity();
        this.set({ kind: 'total' }, c.totalBytes);
        this.set({ kind: 'free' }, c.freeBytes);
        this.set({ kind: 'provisioned' }, c.provisionedBytes);
        this.set({ kind: 'available' }, c.availableBytes);
      },
    });
  }

  observe(method: string, code: string, seconds: number): void {
    this.requests.inc({ method, code });
    this.duration.observe({ method, code }, seconds);
  }
}

/** Splits "HOST:PORT", "[V6]:PORT" or ":PORT" (all interfaces). */
export function parseHostPort(address: string): { host: string | undefined; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new Error(`metrics address "${address}" is not HOST:PORT`);
  }
  return { host: m[1] ?? (m[2] || undefined), port };
}

export interface MetricsServer {
  /** "host:port" actually bound (useful with port 0). */
  address: string;
  close(): Promise<void>;
}

export async function serveMetrics(
  address: string,
  metrics: CsiMetrics,
  log: Logger,
): Promise<MetricsServer> {
  const { host, port } = parseHostPort(address);
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
    } else if (url === '/metrics') {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        (err: unknown) => {
          log.error({ err }, 'cannot collect metrics');
          res.writeHead(500).end('cannot collect metrics\n');
        },
      );
    } else if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  const bound = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  log.info({ address: bound }, 'serving metrics');
  return {
    address: bound,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
