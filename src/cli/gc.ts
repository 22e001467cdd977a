/**
 * `ploop-csi gc`: lists the pool's volumes that no PersistentVolume names and its snapshots that
 * no VolumeSnapshotContent names; deletes them only with --delete. Runs on the node that holds
 * the pool (in the node plugin's csi container, where the pool and driver name are in the
 * environment), with the kubeconfig kubectl would use or the pod's service account.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_DRIVER_NAME } from '../csi/identity.js';
import { OutputOptions, print } from './output.js';

interface GcCommandOptions extends OutputOptions {
  pool: string;
  driverName: string;
  minAge: number;
  blockdSocket?: string;
  delete?: boolean;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "90s", "15m", "2h", "1d", "0" → milliseconds. */
export function parseDuration(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m || (m[2] === undefined && Number(m[1]) !== 0)) {
    throw new InvalidArgumentError('must be a duration such as 30s, 15m, 2h or 0');
  }
  return Number(m[1]) * UNITS[m[2] ?? 'ms']!;
}

function size(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function gcCommand(): Command {
  return new Command('gc')
    .description(
      'list pool volumes with no PersistentVolume and snapshots with no VolumeSnapshotContent ' +
        '(delete them with --delete); reads the cluster with the default kubeconfig: ' +
        'KUBECONFIG, ~/.kube/config, or the in-cluster service account',
    )
    .addOption(
      new Option('--pool <dir>', 'pool directory of this node')
        .env('PLOOP_CSI_POOL')
        .makeOptionMandatory(),
    )
    .addOption(
      new Option('--driver-name <name>', 'CSI driver name of the PersistentVolumes')
        .env('PLOOP_CSI_DRIVER_NAME')
        .default(DEFAULT_DRIVER_NAME),
    )
    .addOption(
      new Option('--min-age <duration>', 'leave entries younger than this alone')
        .argParser(parseDuration)
        .default(parseDuration('15m'), '15m'),
    )
    .addOption(
      new Option(
        '--blockd-socket <path>',
        "blockd's control socket: volumes attached on this node are never collected",
      ).env('PLOOP_CSI_BLOCKD_SOCKET'),
    )
    .option('--delete', 'delete the orphans found')
    .option('--json', 'machine-readable output')
    .action(async (o: GcCommandOptions) => {
      const { Pool } = await import('../pool/index.js');
      const { collectOrphans, defaultKubeConfig, listReferences } = await import('../k8s/index.js');
      // Never create a pool here: a mistyped --pool would otherwise look empty and clean.
      const { existsSync } = await import('node:fs');
      const path = await import('node:path');
      if (!existsSync(path.join(o.pool, 'volumes'))) throw new Error(`no pool at ${o.pool}`);
      const pool = await Pool.open(o.pool);
      let targets: string[] = [];
      if (o.blockdSocket) {
        const { BlockdClient } = await import('../blockdev/client.js');
        targets = (await new BlockdClient(o.blockdSocket, 10_000).list()).map((r) => r.target);
      }
      const kc = defaultKubeConfig();
      const report = await collectOrphans(pool, () => listReferences(kc, o.driverName), {
        delete: Boolean(o.delete),
        minAgeMs: o.minAge,
        inUse: (id) => targets.some((t) => t.startsWith(`${pool.volumeDir(id)}/`)),
      });
      print(o, { pool: pool.root, driverName: o.driverName, ...report }, () => {
        const lines = report.orphans.map(
          (x) =>
            `${x.kind}\t${x.id}\t${x.name}\t${size(x.sizeBytes)}\t${x.createdAt}` +
            (x.deleted ? '\tdeleted' : x.error ? `\tnot deleted: ${x.error}` : ''),
        );
        lines.push(
          `${report.orphans.length} orphan(s) among ${report.volumes} volume(s) and ` +
            `${report.snapshots} snapshot(s)` +
            (report.tooYoung ? `; ${report.tooYoung} younger than --min-age left alone` : '') +
            (report.inUse ? `; ${report.inUse} attached volume(s) without a PV left alone` : ''),
        );
        if (!report.snapshotsChecked) {
          lines.push(`snapshots not checked: ${report.snapshotsUnknown ?? 'unknown reason'}`);
        }
        if (report.orphans.length > 0 && !o.delete)
          lines.push('run again with --delete to delete them');
        return lines.join('\n');
      });
      if (report.orphans.some((x) => x.error)) process.exitCode = 1;
    });
}
