/**
 * `ploop-csi csi`: the CSI server of one node's pool: identity and controller services, and the
 * node service when `--blockd-socket` names the block daemon.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { CsiServer, CsiServerOptions } from '../csi/server.js';
import { DEFAULT_DRIVER_NAME } from '../csi/identity.js';
import { LOG_LEVELS, LogLevel, createLogger, isLogLevel } from '../csi/log.js';
import type { Logger } from '../csi/log.js';

export interface CsiCommandOptions {
  endpoint: string;
  nodeId: string;
  pool: string;
  blockdSocket?: string;
  driverName: string;
  metricsAddress?: string;
  overProvisioning: number;
  logLevel: LogLevel;
}

function ratio(v: string): number {
  const n = Number(v);
  if (!(Number.isFinite(n) && n > 0)) {
    throw new InvalidArgumentError('must be a positive number (1 = no over-provisioning)');
  }
  return n;
}

function level(v: string): LogLevel {
  if (!isLogLevel(v)) throw new InvalidArgumentError(`must be one of ${LOG_LEVELS.join(', ')}`);
  return v;
}

/** Starts the server and resolves once SIGTERM or SIGINT has shut it down. */
export async function runCsi(opts: CsiCommandOptions, log?: Logger): Promise<void> {
  const logger = log ?? createLogger(opts.logLevel);
  const serverOptions: CsiServerOptions = {
    endpoint: opts.endpoint,
    nodeId: opts.nodeId,
    pool: opts.pool,
    driverName: opts.driverName,
    overProvisioning: opts.overProvisioning,
    metricsAddress: opts.metricsAddress ?? null,
    blockdSocket: opts.blockdSocket ?? null,
    logger,
  };
  const server = await CsiServer.start(serverOptions);
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      logger.info({ signal }, 'shutting down');
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      // A second signal while draining ends the process at once.
      const force = (): void => process.exit(1);
      process.once('SIGTERM', force);
      process.once('SIGINT', force);
      server.stop().then(resolve, (err: unknown) => {
        logger.error({ err }, 'unclean shutdown');
        resolve();
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

export function csiCommand(run: (opts: CsiCommandOptions) => Promise<void> = runCsi): Command {
  return new Command('csi')
    .description(
      'Serve the CSI identity and controller services for the pool of this node on a unix socket,\n' +
        'and the node service when --blockd-socket is given.\n' +
        'Every option can also be set through the environment variable shown with it.',
    )
    .addOption(
      new Option('--endpoint <unix:///path>', 'CSI endpoint to listen on')
        .env('CSI_ENDPOINT')
        .makeOptionMandatory(),
    )
    .addOption(
      new Option('--node-id <id>', "this node's id (normally the Kubernetes node name)")
        .env('NODE_ID')
        .makeOptionMandatory(),
    )
    .addOption(
      new Option('--pool <dir>', 'pool directory holding the volumes and snapshots')
        .env('PLOOP_CSI_POOL')
        .makeOptionMandatory(),
    )
    .addOption(
      new Option(
        '--blockd-socket <path>',
        'control socket of the block daemon; enables the node service',
      ).env('PLOOP_CSI_BLOCKD_SOCKET'),
    )
    .addOption(
      new Option('--driver-name <name>', 'CSI driver name (also the topology key prefix)')
        .env('PLOOP_CSI_DRIVER_NAME')
        .default(DEFAULT_DRIVER_NAME),
    )
    .addOption(
      new Option('--metrics-address <host:port>', 'serve Prometheus metrics at /metrics').env(
        'PLOOP_CSI_METRICS_ADDRESS',
      ),
    )
    .addOption(
      new Option(
        '--over-provisioning <ratio>',
        'sum of volume sizes allowed per byte of pool space (thin provisioning)',
      )
        .env('PLOOP_CSI_OVER_PROVISIONING')
        .argParser(ratio)
        .default(1),
    )
    .addOption(
      new Option('--log-level <level>', 'log level')
        .env('PLOOP_CSI_LOG_LEVEL')
        .choices(LOG_LEVELS)
        .argParser(level)
        .default('info' as LogLevel),
    )
    .action(async (opts: CsiCommandOptions) => {
      await run(opts);
    });
}
