/**
 * The CSI gRPC server: identity and controller services on a unix socket, and the node service
 * when a block daemon (blockd) is configured, started and stopped as a unit with the metrics
 * endpoint. A stale socket file left by a dead server is removed; a socket some live server
 * still answers on is never taken over.
 */
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { BlockdClient } from '../blockdev/client.js';
import { Freezer, Pool } from '../pool/index.js';
import { controllerService } from './controller.js';
import { DEFAULT_DRIVER_NAME, driverVersion, identityService } from './identity.js';
import { InFlight } from './locks.js';
import { createLogger, type Logger } from './log.js';
import { CsiMetrics, MetricsServer, serveMetrics } from './metrics.js';
import { BlockdApi, attachedDevices, nodeFreezer, nodeService } from './node.js';
import { volumeInUse } from './node-record.js';
import { loadCsi } from './proto.js';
import { implement } from './rpc.js';
import { NodeTopology } from './topology.js';

export interface CsiServerOptions {
  /** `unix:///absolute/path.sock` (CSI_ENDPOINT). */
  endpoint: string;
  nodeId: string;
  /** An opened pool, or the directory of one. */
  pool: Pool | string;
  driverName?: string;
  /** Thin provisioning ratio when `pool` is a directory. */
  overProvisioning?: number;
  /** HOST:PORT for /metrics; none when null or empty. */
  metricsAddress?: string | null;
  /**
   * The block daemon's control socket. With it (or `blockd`) the server also serves the Node
   * service, advertises online expansion, takes snapshots of attached volumes online, and its
   * Probe checks that blockd answers and ublk is usable.
   */
  blockdSocket?: string | null;
  /** A blockd client to use instead of one on `blockdSocket` (tests). */
  blockd?: BlockdApi;
  logger?: Logger;
  /** Overrides the freezer (offline, or online through blockd when the node service runs). */
  freezer?: Freezer;
  /** How long in-flight requests may take to finish on stop (default 10 s). */
  shutdownTimeoutMs?: number;
}

/** The socket path of a `unix:` endpoint. */
export function socketPathOf(endpoint: string): string {
  const rest = endpoint.startsWith('unix://')
    ? endpoint.slice('unix://'.length)
    : endpoint.startsWith('unix:')
      ? endpoint.slice('unix:'.length)
      : '';
  if (!rest.startsWith('/') || path.normalize(rest) === '/') {
    throw new Error(`endpoint "${endpoint}" must be unix:///absolute/path`);
  }
  return path.normalize(rest);
}

/** True when a server accepts connections on the unix socket at `p`. */
function isListening(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Makes `p` free to bind: removes a dead socket; refuses a live one or any other file. */
async function claimSocket(p: string, log: Logger): Promise<void> {
  await fsp.mkdir(path.dirname(p), { recursive: true });
  let st;
  try {
    st = await fsp.lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new Error(`${p} exists and is not a socket; not removing it`);
  if (await isListening(p)) throw new Error(`another server is already listening on ${p}`);
  log.info({ socket: p }, 'removing stale socket');
  await fsp.unlink(p);
}

export class CsiServer {
  private stopping: Promise<void> | null = null;

  private constructor(
    private readonly grpcServer: grpc.Server,
    readonly socketPath: string,
    readonly pool: Pool,
    readonly log: Logger,
    private readonly metricsServer: MetricsServer | null,
    readonly metrics: CsiMetrics,
    private readonly shutdownTimeoutMs: number,
  ) {}

  /** "host:port" of the metrics endpoint, or null. */
  get metricsAddress(): string | null {
    return this.metricsServer?.address ?? null;
  }

  static async start(opts: CsiServerOptions): Promise<CsiServer> {
    const log = opts.logger ?? createLogger();
    const driverName = opts.driverName || DEFAULT_DRIVER_NAME;
    const topology = new NodeTopology(driverName, opts.nodeId);
    const socketPath = socketPathOf(opts.endpoint);
    const pool =
      typeof opts.pool === 'string'
        ? await Pool.open(opts.pool, { overProvisioning: opts.overProvisioning ?? 1 })
        : opts.pool;
    const csi = loadCsi();
    const metrics = new CsiMetrics(() => pool.capacity());
    const pipeline = { log, metrics };
    const server = new grpc.Server();
    // One set of in-flight locks for both services: a snapshot and a stage of the same volume
    // never run at once.
    const locks = new InFlight();
    const blockd = opts.blockd ?? (opts.blockdSocket ? new BlockdClient(opts.blockdSocket) : null);
    // Probes are answered quickly or not at all (the CO's liveness check has a short deadline).
    const probeBlockd =
      opts.blockd ?? (opts.blockdSocket ? new BlockdClient(opts.blockdSocket, 5_000) : null);
    const freezer = opts.freezer ?? (blockd ? nodeFreezer(pool, blockd, log) : undefined);
    server.addService(
      csi.Identity,
      implement(
        csi.Identity,
        identityService({
          driverName,
          nodeService: blockd !== null,
          probe: async () => {
            await fsp.access(path.join(pool.root, 'volumes'), fsp.constants.W_OK);
            if (probeBlockd) {
              const p = await probeBlockd.probe();
              if (!p.available) {
                throw new Error(`ublk is not usable on this node: ${p.reason ?? 'unknown reason'}`);
              }
            }
          },
        }),
        pipeline,
      ),
    );
    server.addService(
      csi.Controller,
      implement(
        csi.Controller,
        controllerService({
          pool,
          topology,
          locks,
          ...(freezer ? { freezer } : {}),
          inUse: async (id) =>
            volumeInUse(pool, id, blockd ? await attachedDevices(blockd, id) : null),
        }),
        pipeline,
      ),
    );
    if (blockd) {
      server.addService(
        csi.Node,
        implement(csi.Node, nodeService({ pool, topology, locks, blockd }), pipeline),
      );
    }

    await claimSocket(socketPath, log);
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(new Error(`cannot listen on ${socketPath}: ${err.message}`)) : resolve(),
      );
    });
    let metricsServer: MetricsServer | null = null;
    if (opts.metricsAddress) {
      try {
        metricsServer = await serveMetrics(opts.metricsAddress, metrics, log);
      } catch (err) {
        server.forceShutdown();
        await fsp.rm(socketPath, { force: true });
        throw err;
      }
    }
    log.info(
      {
        endpoint: `unix://${socketPath}`,
        driver: driverName,
        version: driverVersion(),
        nodeId: opts.nodeId,
        pool: pool.root,
        overProvisioning: pool.opts.overProvisioning,
        blockdSocket: opts.blockdSocket || null,
      },
      'CSI server listening',
    );
    return new CsiServer(
      server,
      socketPath,
      pool,
      log,
      metricsServer,
      metrics,
      opts.shutdownTimeoutMs ?? 10_000,
    );
  }

  /**
   * Stops accepting calls, lets in-flight ones finish (cancelling them after the shutdown
   * timeout), removes the socket and closes the metrics endpoint. Safe to call twice.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('CSI server stopping');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.log.warn('requests still in flight after the shutdown timeout; cancelling them');
          this.grpcServer.forceShutdown();
          resolve();
        }, this.shutdownTimeoutMs);
        this.grpcServer.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      await fsp.rm(this.socketPath, { force: true });
      await this.metricsServer?.close();
      this.log.info('CSI server stopped');
    })();
    return this.stopping;
  }
}
