/**
 * The CSI part of `npm run bench`: latency of CreateVolume, CreateSnapshot and
 * CreateVolume-from-snapshot over gRPC on a unix socket, for volumes holding 64 MiB, 1 GiB and
 * 4 GiB of written data, next to what copying that data costs on the same file system (what a
 * driver that copies volumes for snapshots or clones would pay); then 100 parallel
 * CreateVolume calls, repeated to check idempotency.
 *
 *   node dist/bench/csi.js [--json]
 *
 * Environment: PLOOP_BENCH_CSI_SIZES (default "64M,1G,4G"), PLOOP_BENCH_CSI_RUNS (5),
 * PLOOP_BENCH_DIR (scratch parent, as for the image benchmark).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import process from 'node:process';
import * as grpc from '@grpc/grpc-js';
import { createLogger } from '../src/csi/log.js';
import { loadCsi } from '../src/csi/proto.js';
import { CsiServer } from '../src/csi/server.js';
import { parseSize } from '../src/ploop/index.js';
import { Pool } from '../src/pool/index.js';
import { writeRandomToDisk } from './image.js';
import {
  MiB,
  cpBaseline,
  formatBytes,
  makeScratch,
  median,
  scratchParent,
  settle,
} from './util.js';

/** "Tens of milliseconds at most", and flat: the largest size within this factor of the smallest. */
const LATENCY_GOAL_MS = 100;
const FLAT_FACTOR = 1.5;
const PARALLEL = 100;

type Callback = (err: grpc.ServiceError | null, res?: unknown) => void;
type Unary = (req: object, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => void;

interface Row {
  dataBytes: number;
  createMs: number;
  snapshotMs: number;
  cloneMs: number;
  copyMs: number;
}

function log(msg: string): void {
  process.stderr.write(`[bench csi] ${msg}\n`);
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const sizes = (process.env['PLOOP_BENCH_CSI_SIZES'] ?? '64M,1G,4G').split(',').map(parseSize);
  const runs = Number(process.env['PLOOP_BENCH_CSI_RUNS'] ?? 5);
  const scratch = await makeScratch(scratchParent());
  const poolDir = path.join(scratch.dir, 'pool');
  const socket = path.join(scratch.dir, 'csi.sock');
  const server = await CsiServer.start({
    endpoint: `unix://${socket}`,
    nodeId: 'bench-node',
    logger: createLogger('silent'),
    pool: await Pool.open(poolDir, { overProvisioning: 1000 }),
  });
  const csi = loadCsi();
  const controller = new csi.clients.Controller(
    `unix://${socket}`,
    grpc.credentials.createInsecure(),
  );
  const call = <T>(method: string, req: object): Promise<T> =>
    new Promise((resolve, reject) => {
      const fn = (controller as unknown as Record<string, Unary>)[method]!.bind(controller);
      fn(req, new grpc.Metadata(), { deadline: Date.now() + 600_000 }, (err, res) =>
        err ? reject(err) : resolve(res as T),
      );
    });
  const mountCap = { mount: { fsType: 'ext4' }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
  const createVolume = (name: string, bytes: number, extra: object = {}) =>
    call<{ volume: { volumeId: string } }>('CreateVolume', {
      name,
      capacityRange: { requiredBytes: bytes },
      volumeCapabilities: [mountCap],
      ...extra,
    }).then((r) => r.volume.volumeId);
  const timed = async <T>(fn: () => Promise<T>): Promise<[number, T]> => {
    const t = process.hrtime.bigint();
    const v = await fn();
    return [Number(process.hrtime.bigint() - t) / 1e6, v];
  };

  const rows: Row[] = [];
  try {
    // The first call pays for connecting; it is not part of any row.
    await call('GetCapacity', {});
    for (const size of sizes) {
      const label = formatBytes(size);
      const capacity = size + 64 * MiB;
      const creates: number[] = [];
      for (let i = 0; i < runs; i++) {
        const [ms, id] = await timed(() => createVolume(`empty-${size}-${i}`, capacity));
        creates.push(ms);
        await call('DeleteVolume', { volumeId: id });
      }
      const src = await createVolume(`src-${size}`, capacity);
      const dd = path.join(poolDir, 'volumes', src, 'DiskDescriptor.xml');
      log(`${label}: writing the data`);
      await writeRandomToDisk(dd, 0, size);

      const image = path.join(path.dirname(dd), 'root.hds');
      await settle(false);
      const [copyMs] = await timed(() => cpBaseline(image, path.join(scratch.dir, 'copy')));
      await fsp.rm(path.join(scratch.dir, 'copy'));

      const snaps: number[] = [];
      const clones: number[] = [];
      // The data is on disk before the snapshots; each call then runs as it would in a
      // cluster (a sync right before every call would charge it the flush of everything else).
      await settle(false);
      for (let i = 0; i < runs; i++) {
        const [sMs, snap] = await timed(() =>
          call<{ snapshot: { snapshotId: string } }>('CreateSnapshot', {
            name: `snap-${size}-${i}`,
            sourceVolumeId: src,
          }).then((r) => r.snapshot.snapshotId),
        );
        snaps.push(sMs);
        const [cMs, clone] = await timed(() =>
          createVolume(`clone-${size}-${i}`, capacity, {
            volumeContentSource: { snapshot: { snapshotId: snap } },
          }),
        );
        clones.push(cMs);
        await call('DeleteVolume', { volumeId: clone });
        await call('DeleteSnapshot', { snapshotId: snap });
      }
      await call('DeleteVolume', { volumeId: src });
      const row = {
        dataBytes: size,
        createMs: median(creates),
        snapshotMs: median(snaps),
        cloneMs: median(clones),
        copyMs,
      };
      rows.push(row);
      log(
        `${label}: create ${row.createMs.toFixed(1)} ms, snapshot ${row.snapshotMs.toFixed(1)} ms, ` +
          `clone ${row.cloneMs.toFixed(1)} ms, cp ${copyMs.toFixed(0)} ms`,
      );
    }

    // 100 parallel CreateVolume calls, then the same 100 again (idempotent: the same IDs).
    const names = Array.from({ length: PARALLEL }, (_, i) => `parallel-${i}`);
    const attempt = () =>
      Promise.allSettled(names.map((n) => createVolume(n, 64 * MiB))).then((rs) => ({
        ids: rs.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])),
        errors: rs.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : [])),
      }));
    const [firstMs, first] = await timed(attempt);
    const [againMs, again] = await timed(attempt);
    const parallel = {
      calls: PARALLEL,
      succeeded: first.ids.length,
      distinctIds: new Set(first.ids).size,
      errors: first.errors.slice(0, 3),
      totalMs: firstMs,
      repeatSameIds:
        again.ids.length === PARALLEL && again.ids.every((id, i) => id === first.ids[i]),
      repeatMs: againMs,
    };

    const maxOf = (k: 'createMs' | 'snapshotMs' | 'cloneMs') => Math.max(...rows.map((r) => r[k]));
    const goals = {
      tensOfMs: (['createMs', 'snapshotMs', 'cloneMs'] as const).every(
        (k) => maxOf(k) <= LATENCY_GOAL_MS,
      ),
      // Flat: the largest data size costs no more than the smallest (within noise).
      flat: (['snapshotMs', 'cloneMs'] as const).every((k) => {
        const first = rows[0]![k];
        const last = rows[rows.length - 1]![k];
        return last <= FLAT_FACTOR * first || last - first < 5;
      }),
      parallel:
        parallel.succeeded === PARALLEL &&
        parallel.distinctIds === PARALLEL &&
        parallel.repeatSameIds,
    };

    if (json) {
      process.stdout.write(`${JSON.stringify({ rows, parallel, goals }, null, 2)}\n`);
    } else {
      const f = (n: number) => n.toFixed(1).padStart(10);
      const lines = [
        'CSI controller over gRPC (median ms of ' + runs + ' runs; cp = copying the data once)',
        `${'data'.padEnd(10)}${'Create'.padStart(10)}${'Snapshot'.padStart(10)}${'Clone'.padStart(10)}${'cp'.padStart(10)}  snapshot/cp`,
        ...rows.map(
          (r) =>
            `${formatBytes(r.dataBytes).padEnd(10)}${f(r.createMs)}${f(r.snapshotMs)}${f(r.cloneMs)}${f(r.copyMs)}  ${(r.snapshotMs / r.copyMs).toFixed(4)}`,
        ),
        `${PARALLEL} parallel CreateVolume: ${parallel.succeeded} ok, ${parallel.distinctIds} distinct IDs, ` +
          `${parallel.totalMs.toFixed(0)} ms; repeated: ${parallel.repeatSameIds ? 'same IDs' : 'DIFFERENT IDs'}, ` +
          `${parallel.repeatMs.toFixed(0)} ms`,
        `goals: ≤ ${LATENCY_GOAL_MS} ms ${goals.tensOfMs ? 'met' : 'MISSED'}; ` +
          `flat in data size ${goals.flat ? 'met' : 'MISSED'}; parallel ${goals.parallel ? 'met' : 'MISSED'}`,
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    }
    if (!goals.parallel) process.exitCode = 1;
  } finally {
    controller.close();
    await server.stop();
    scratch.remove();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(
    `bench csi: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(1);
});
