/** `ploop-csi blockd` (the device daemon) and `ploop-csi device …` (its client). */
import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import { Blockd } from '../blockdev/daemon.js';
import { serve } from '../blockdev/api.js';
import { BlockdClient } from '../blockdev/client.js';
import { DEFAULT_SCHEDULER, validSchedulerName } from '../blockdev/io-scheduler.js';
import { parseSize } from '../ploop/index.js';
import { OutputOptions, print } from './output.js';

export const DEFAULT_BLOCKD_SOCKET = '/run/ploop-csi/blockd.sock';
export const DEFAULT_STATE_DIR = '/var/lib/ploop-csi/blockd';
const NS_MARK = 'PLOOP_CSI_BLOCKD_PRIVATE_NS';
/** Longest a graceful stop waits for devices to quiesce (kubelet's grace period is 30 s). */
const HAND_OVER_DEADLINE_MS = 15_000;

/**
 * blockd must not share the mount namespace in which its devices are mounted (ublk.md §0.4):
 * re-run itself under `unshare --mount --propagation slave` unless told not to. Slave, not
 * private: unmounts on the host must reach blockd's copy, or a device stays busy after unstage.
 * This process stays as a thin parent that passes SIGTERM, SIGINT and SIGHUP on (a graceful
 * stop must reach the daemon, not just end the parent) and exits with the daemon's status.
 * Resolves to null when this process is the daemon itself.
 */
async function runInOwnMountNamespace(): Promise<number | null> {
  if (process.env[NS_MARK] === '1' || process.env[NS_MARK] === 'off') return null;
  const child = spawn(
    'unshare',
    [
      '--mount',
      '--propagation',
      'slave',
      process.execPath,
      ...process.execArgv,
      ...process.argv.slice(1),
    ],
    { stdio: 'inherit', env: { ...process.env, [NS_MARK]: '1' } },
  );
  const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
  const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];
  const handlers = signals.map((sig) => [sig, forward(sig)] as const);
  for (const [sig, h] of handlers) process.on(sig, h);
  return new Promise<number>((resolve) => {
    child.once('error', (err) => {
      process.stderr.write(
        `ploop-csi blockd: cannot enter its own mount namespace (${err.message}); set ${NS_MARK}=off to run without one\n`,
      );
      resolve(1);
    });
    child.once('exit', (code, signal) => {
      for (const [sig, h] of handlers) process.off(sig, h);
      resolve(code ?? (signal ? 128 + (osConstants.signals[signal] ?? 0) : 1));
    });
  });
}

function log(msg: string, fields?: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), msg, ...fields })}\n`);
}

export function blockdCommand(): Command {
  return new Command('blockd')
    .description('run the daemon that owns the ublk devices of this node')
    .option(
      '--state-dir <dir>',
      'where the device table is kept',
      process.env.PLOOP_CSI_BLOCKD_STATE_DIR ?? DEFAULT_STATE_DIR,
    )
    .option(
      '--socket <path>',
      'control socket',
      process.env.PLOOP_CSI_BLOCKD_SOCKET ?? DEFAULT_BLOCKD_SOCKET,
    )
    .option('--queues <n>', 'ublk queues per device', '1')
    .option('--depth <n>', 'requests in flight per queue', '64')
    .option(
      '--no-zero-copy',
      'serve new devices in copy mode even where the kernel has zero copy (>= 6.16)',
    )
    .option(
      '--no-direct-read',
      'serve reads over 128 KiB through the page cache of the image files too',
    )
    .option(
      '--io-scheduler <name>',
      'block-layer I/O scheduler for new devices ("keep" for the kernel default)',
      (v: string) => {
        if (!validSchedulerName(v)) throw new InvalidArgumentError('not a scheduler name');
        return v;
      },
      DEFAULT_SCHEDULER,
    )
    .action(
      async (o: {
        stateDir: string;
        socket: string;
        queues: string;
        depth: string;
        zeroCopy: boolean;
        directRead: boolean;
        ioScheduler: string;
      }) => {
        const status = await runInOwnMountNamespace();
        if (status !== null) {
          process.exitCode = status;
          return;
        }
        const { mkdir } = await import('node:fs/promises');
        const path = await import('node:path');
        await mkdir(path.dirname(o.socket), { recursive: true, mode: 0o700 });
        const d = new Blockd({
          stateDir: o.stateDir,
          queues: Number(o.queues),
          depth: Number(o.depth),
          zeroCopy: o.zeroCopy,
          directRead: o.directRead,
          ioScheduler: o.ioScheduler,
          log,
        });
        const p = d.probe();
        log('starting', { kernel: p.kernel, ublk: p.available, reason: p.reason });
        await d.start();
        const server = await serve(d, o.socket);
        log('serving', { socket: o.socket });
        await new Promise<void>((resolve) => {
          let stopping = false;
          const stop = (sig: string) => {
            // A repeated signal (a parent and a process group both passing it on) changes nothing.
            if (stopping) return;
            stopping = true;
            log('hand-over', { signal: sig });
            server.close();
            // Quiescing drains in-flight I/O; should it not finish, exiting is still safe: the
            // kernel keeps the devices and re-issues their I/O to the next blockd.
            const deadline = setTimeout(() => {
              log('hand-over did not finish in time; exiting, in-flight I/O will be re-issued');
              resolve();
            }, HAND_OVER_DEADLINE_MS);
            void d.handOver().finally(() => {
              clearTimeout(deadline);
              resolve();
            });
          };
          process.on('SIGTERM', () => stop('SIGTERM'));
          process.on('SIGINT', () => stop('SIGINT'));
          process.on('SIGHUP', () => stop('SIGHUP'));
        });
        // Devices stay; their I/O waits for the next blockd, which recovers them.
        process.exit(0);
      },
    );
}

export function deviceCommand(): Command {
  const dev = new Command('device').description('attach and manage ublk devices through blockd');
  const common = (c: Command) =>
    c
      .option(
        '--socket <path>',
        'blockd control socket',
        process.env.PLOOP_CSI_BLOCKD_SOCKET ?? DEFAULT_BLOCKD_SOCKET,
      )
      .option('--json', 'machine-readable output');
  type O = OutputOptions & { socket: string };
  const client = (o: O) => new BlockdClient(o.socket);

  common(
    dev
      .command('attach <path>')
      .description(
        'serve a disk (DiskDescriptor.xml or image) as a block device; prints the device',
      ),
  ).action(async (p: string, o: O) => {
    const r = await client(o).attach(p);
    print(o, r, () => r.blockPath);
  });
  common(
    dev.command('detach <device>').description('stop serving a device and close its image clean'),
  ).action(async (device: string, o: O) => {
    await client(o).detach(device);
    print(o, { detached: device }, () => '');
  });
  common(dev.command('list').description('list attached devices')).action(async (o: O) => {
    const list = await client(o).list();
    print(o, list, () =>
      list.map((r) => `${r.blockPath}\t${r.state}\t${r.sizeBytes}\t${r.target}`).join('\n'),
    );
  });
  common(dev.command('stats <device>').description('I/O counters of a device')).action(
    async (device: string, o: O) => {
      const s = await client(o).stats(device);
      print(o, s, () => JSON.stringify(s, null, 2));
    },
  );
  common(
    dev.command('snapshot <device>').description('online snapshot; prints the snapshot GUID'),
  ).action(async (device: string, o: O) => {
    const guid = await client(o).snapshot(device);
    print(o, { guid }, () => guid);
  });
  common(
    dev
      .command('grow <device>')
      .description('online grow')
      .requiredOption('--size <size>', 'new size (K/M/G/T suffixes)'),
  ).action(async (device: string, o: O & { size: string }) => {
    const size = await client(o).grow(device, parseSize(o.size));
    print(o, { sizeBytes: size }, () => `grown to ${size} bytes`);
  });
  common(
    dev
      .command('merge <device>')
      .description('merge the snapshot right below the live top into it, while I/O goes on')
      .requiredOption('--id <guid>', 'snapshot GUID'),
  ).action(async (device: string, o: O & { id: string }) => {
    await client(o).merge(device, o.id);
    print(o, { merged: o.id }, () => `merged ${o.id}`);
  });
  return dev;
}
