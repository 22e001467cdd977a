// The CSI node service end to end inside a test VM (run by csi-node.sh), against the real blockd
// and ublk devices, over gRPC on a unix socket.
//
//   node test/vm/csi-node.mjs WORKDIR      WORKDIR/pool must be a directory on a real file system
//
// One Node process: the CSI server runs in it (restarted in-process between steps) and blockd
// runs as its child under `unshare --mount --propagation slave`, so blockd never shares the
// mount namespace in which the volumes are mounted (ublk.md §0.4).
//
// For ext4, xfs and raw block volumes:
//   create → stage (x2, plus an incompatible stage: ALREADY_EXISTS, plus concurrent stages:
//   ABORTED) → publish (x2) → write data → stats (target, staging; NOT_FOUND elsewhere) → expand
//   (online on ≥ 6.16; FAILED_PRECONDITION below, completed by unstage + stage) → snapshot
//   (online: the file system frozen, blockd cuts the live top) → more data → restore into a new
//   volume → stage/publish it read-only and verify the snapshot's data → unpublish/unstage it.
// Then, with all three source volumes staged and published: blockd is killed with SIGKILL,
//   writers start on every published path while no server runs (their I/O waits), stats report
//   the condition as abnormal, blockd is started again, recovers the devices, the writers finish
//   and every byte is verified after dropping caches.
// Finally unpublish (x2), unstage (x2), a read-only fsck of each file system through a fresh
// attach, qemu-img check of every image, delete snapshots and volumes (x2).
// The CSI server restarts between the steps. A summary goes to $PLOOP_CSI_VM_RESULTS/csi-node.json.
import { Buffer } from 'node:buffer';
import { spawn } from 'node:child_process';
import console from 'node:console';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { dropCaches, expect, fail, sh, sleep, suite } from './lib.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dist = (p) => import(path.join(repo, 'dist/src', p));
const { CsiServer } = await dist('csi/server.js');
const { createLogger } = await dist('csi/log.js');
const { loadCsi } = await dist('csi/proto.js');
const { BlockdClient } = await dist('blockdev/client.js');
const grpc = await import('@grpc/grpc-js');
const { pino } = await import('pino');

const M = 1 << 20;
const results = process.env.PLOOP_CSI_VM_RESULTS || '/tmp';
const summary = { kernel: '', onlineResize: null, steps: [], problems: [], timings: {}, ok: false };
const { log, step } = suite('csi-node', summary);
const NODE = 'vm-node';

// ---- processes: blockd (child) and the CSI server (in this process) --------------------------

const work = path.resolve(process.argv[2] || fail('usage: csi-node.mjs WORKDIR'));
const poolDir = path.join(work, 'pool');
const blockdSocket = path.join(work, 'blockd.sock');
const blockdState = path.join(work, 'blockd-state');
const csiSocket = path.join(work, 'csi.sock');
const blockdLog = fs.openSync(path.join(results, 'csi-node-blockd.log'), 'a');
const csiLog = pino.destination({ dest: path.join(results, 'csi-node-server.log'), sync: true });

let blockd = null;
/**
 * blockd in its own mount namespace, a slave of this one: a blockd started while volumes are
 * mounted gets copies of those mounts, and only with slave propagation do the copies go away
 * when the volumes are unmounted here. (With `--propagation private` the copies keep every file
 * system of a restarted blockd alive after unstaging, and the device stays busy.)
 */
async function startBlockd() {
  const t = Date.now();
  const child = spawn(
    'unshare',
    [
      '--mount',
      '--propagation',
      'slave',
      process.execPath,
      path.join(repo, 'dist/src/cli/main.js'),
      'blockd',
      '--socket',
      blockdSocket,
      '--state-dir',
      blockdState,
    ],
    {
      // Already in its own namespace: the CLI need not re-exec itself (one Node start less).
      env: { ...process.env, PLOOP_CSI_BLOCKD_PRIVATE_NS: '1' },
      stdio: ['ignore', blockdLog, blockdLog],
    },
  );
  let exited = null;
  child.once('exit', (code, signal) => (exited = { code, signal }));
  const client = new BlockdClient(blockdSocket, 5_000);
  for (;;) {
    if (exited) fail(`blockd exited while starting: ${JSON.stringify(exited)}`);
    try {
      const p = await client.probe();
      if (!p.available) fail(`blockd says ublk is unavailable: ${p.reason}`);
      summary.kernel = p.kernel;
      break;
    } catch (err) {
      if (Date.now() - t > 180_000) fail(`blockd did not answer within 180 s: ${err.message}`);
      await sleep(200);
    }
  }
  blockd = { child, exited: () => exited };
  summary.timings[`blockd start ${Object.keys(summary.timings).length}`] = Date.now() - t;
  log(`blockd ${child.pid} serving after ${Date.now() - t} ms`);
}
async function killBlockd(signal) {
  const b = blockd;
  blockd = null;
  b.child.kill(signal);
  for (let i = 0; i < 600 && !b.exited(); i++) await sleep(100);
  if (!b.exited()) fail('blockd did not exit');
}

let server = null;
let clients = null;
async function startServer() {
  server = await CsiServer.start({
    endpoint: `unix://${csiSocket}`,
    nodeId: NODE,
    pool: poolDir,
    overProvisioning: 20,
    blockdSocket,
    logger: createLogger('debug', csiLog),
    shutdownTimeoutMs: 30_000,
  });
}
async function restartServer() {
  if (clients) for (const c of Object.values(clients)) c.close();
  clients = null;
  await server.stop();
  await startServer();
}

function call(service, method, req = {}) {
  if (!clients) {
    const csi = loadCsi();
    const creds = grpc.credentials.createInsecure();
    clients = {
      Identity: new csi.clients.Identity(`unix://${csiSocket}`, creds),
      Controller: new csi.clients.Controller(`unix://${csiSocket}`, creds),
      Node: new csi.clients.Node(`unix://${csiSocket}`, creds),
    };
  }
  const client = clients[service];
  return new Promise((resolve, reject) => {
    client[method](
      req,
      new grpc.Metadata(),
      { deadline: new Date(Date.now() + 600_000) },
      (err, res) => (err ? reject(err) : resolve(res)),
    );
  });
}
async function code(service, method, req) {
  try {
    await call(service, method, req);
    return grpc.status.OK;
  } catch (err) {
    if (typeof err.code !== 'number') throw err;
    return err.code;
  }
}
async function expectCode(want, service, method, req, what) {
  const got = await code(service, method, req);
  expect(
    got === want,
    `${what}: ${method} answered ${grpc.status[got]}, expected ${grpc.status[want]}`,
  );
}
async function twice(fn) {
  const a = await fn();
  const b = await fn();
  expect(
    JSON.stringify(a) === JSON.stringify(b),
    `a repeated call answered differently: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`,
  );
  return a;
}

// ---- helpers ----------------------------------------------------------------------------------

const mountCap = (fsType, mode = 'SINGLE_NODE_WRITER', mountFlags = []) => ({
  mount: { fsType, mountFlags },
  accessMode: { mode },
});
const blockCap = (mode = 'SINGLE_NODE_WRITER') => ({ block: {}, accessMode: { mode } });
const capOf = (kind) => (kind === 'block' ? blockCap() : mountCap(kind));
const sizeOf = (kind) => (kind === 'xfs' ? 320 * M : 128 * M);

function total(stats, unit = 'BYTES') {
  return Number(stats.usage.find((u) => u.unit === unit).total);
}
async function stats(volumeId, volumePath) {
  return call('Node', 'NodeGetVolumeStats', { volumeId, volumePath });
}
function mounted(p) {
  const lines = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  return lines.some((l) => l.split(' ')[4] === p);
}

/** Writes `data` into a volume: a file on a file system, or bytes at an offset of a device. */
function writeData(kind, target, name, data, offset) {
  if (kind === 'block') {
    const fd = fs.openSync(target, 'r+');
    fs.writeSync(fd, data, 0, data.length, offset);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  } else {
    const fd = fs.openSync(path.join(target, name), 'w');
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
}
function readData(kind, target, name, length, offset) {
  if (kind === 'block') {
    const fd = fs.openSync(target, 'r');
    const buf = Buffer.alloc(length);
    fs.readSync(fd, buf, 0, length, offset);
    fs.closeSync(fd);
    return buf;
  }
  return fs.readFileSync(path.join(target, name));
}

function kernelHasOnlineResize() {
  const m = /^(\d+)\.(\d+)/.exec(sh('uname', ['-r']).stdout.trim());
  return m ? Number(m[1]) > 6 || (Number(m[1]) === 6 && Number(m[2]) >= 16) : false;
}

// ---- the scenario -------------------------------------------------------------------------------

const vols = {};

async function lifecycle(kind) {
  const cap = capOf(kind);
  const size = sizeOf(kind);
  const staging = path.join(work, 'staging', kind);
  const target = path.join(work, 'pods', kind, 'publish');
  fs.mkdirSync(staging, { recursive: true });
  fs.mkdirSync(path.dirname(target), { recursive: true });

  const v = await step(`${kind}: create`, () =>
    twice(
      async () =>
        (
          await call('Controller', 'CreateVolume', {
            name: `vm-${kind}`,
            capacityRange: { requiredBytes: size },
            volumeCapabilities: [cap],
          })
        ).volume,
    ),
  );
  const id = v.volumeId;
  const stageReq = {
    volumeId: id,
    stagingTargetPath: staging,
    volumeCapability: cap,
    volumeContext: v.volumeContext,
  };
  const pubReq = { ...stageReq, targetPath: target, readonly: false };
  vols[kind] = { id, staging, target, stageReq, pubReq, size };
  await restartServer();

  await step(`${kind}: stage (concurrent, then again)`, async () => {
    const both = await Promise.allSettled([
      call('Node', 'NodeStageVolume', stageReq),
      call('Node', 'NodeStageVolume', stageReq),
    ]);
    const codes = both.map((r) => (r.status === 'fulfilled' ? 0 : r.reason.code));
    log(`   concurrent stages answered ${codes.map((c) => grpc.status[c]).join(', ')}`);
    expect(codes.includes(0), 'no concurrent stage succeeded');
    expect(
      codes.every((c) => c === 0 || c === grpc.status.ABORTED),
      `unexpected codes ${codes}`,
    );
    await twice(() => call('Node', 'NodeStageVolume', stageReq));
    const other =
      kind === 'block' ? mountCap('ext4') : mountCap(kind, 'SINGLE_NODE_WRITER', ['noexec']);
    await expectCode(
      grpc.status.ALREADY_EXISTS,
      'Node',
      'NodeStageVolume',
      { ...stageReq, volumeCapability: other },
      'incompatible stage',
    );
    if (kind !== 'block') expect(mounted(staging), 'staging path is not a mount point');
  });
  await restartServer();

  await step(`${kind}: publish`, async () => {
    await twice(() => call('Node', 'NodePublishVolume', pubReq));
    await expectCode(
      grpc.status.ALREADY_EXISTS,
      'Node',
      'NodePublishVolume',
      { ...pubReq, readonly: true },
      'republish read-only',
    );
    expect(mounted(target), 'target is not a mount point');
  });
  await restartServer();

  const before = randomBytes(6 * M);
  vols[kind].before = before;
  await step(`${kind}: write data`, () => writeData(kind, target, 'before', before, 16 * M));

  let st0;
  await step(`${kind}: stats`, async () => {
    st0 = await stats(id, target);
    expect(!st0.volumeCondition.abnormal, `abnormal: ${st0.volumeCondition.message}`);
    if (kind === 'block') expect(total(st0) === size, `block total ${total(st0)}`);
    else expect(total(st0) > size * 0.7 && total(st0) <= size, `fs total ${total(st0)}`);
    await stats(id, staging);
    await expectCode(
      grpc.status.NOT_FOUND,
      'Node',
      'NodeGetVolumeStats',
      { volumeId: id, volumePath: path.join(work, 'some/path') },
      'stats elsewhere',
    );
  });
  await restartServer();

  const bigger = size + 128 * M;
  await step(`${kind}: expand`, async () => {
    const req = {
      volumeId: id,
      volumePath: target,
      stagingTargetPath: staging,
      capacityRange: { requiredBytes: bigger },
      volumeCapability: cap,
    };
    let c = grpc.status.OK;
    let details = '';
    try {
      const r = await call('Node', 'NodeExpandVolume', req);
      expect(Number(r.capacityBytes) === bigger, `capacity ${r.capacityBytes}`);
    } catch (err) {
      c = err.code;
      details = err.details;
    }
    if (summary.onlineResize && c !== grpc.status.OK) {
      // Recorded as a failure of the run, but the rest of the scenario goes on (through the
      // restage path below) so that one problem does not hide the others.
      summary.problems.push(
        `${kind}: online expansion failed on a kernel with UPDATE_SIZE: ${grpc.status[c]} ${details}`,
      );
      log(`   PROBLEM: ${summary.problems[summary.problems.length - 1]}`);
    }
    if (c === grpc.status.OK) {
      await twice(() => call('Node', 'NodeExpandVolume', req));
    } else {
      expect(
        c === grpc.status.FAILED_PRECONDITION,
        `expected FAILED_PRECONDITION, got ${grpc.status[c]} ${details}`,
      );
      log(`   as expected on this kernel: ${details}`);
      // Completed by a new stage: unpublish, unstage, stage, publish.
      await call('Node', 'NodeUnpublishVolume', { volumeId: id, targetPath: target });
      await call('Node', 'NodeUnstageVolume', { volumeId: id, stagingTargetPath: staging });
      await call('Node', 'NodeStageVolume', stageReq);
      await call('Node', 'NodePublishVolume', pubReq);
      const r = await call('Node', 'NodeExpandVolume', req);
      expect(Number(r.capacityBytes) === bigger, `capacity after restage ${r.capacityBytes}`);
    }
    const st1 = await stats(id, target);
    if (kind === 'block') expect(total(st1) === bigger, `block total after expand ${total(st1)}`);
    else expect(total(st1) >= total(st0) + 100 * M, `fs total ${total(st0)} -> ${total(st1)}`);
    const got = await call('Controller', 'ControllerGetVolume', { volumeId: id });
    expect(
      Number(got.volume.capacityBytes) === bigger,
      `recorded capacity ${got.volume.capacityBytes}`,
    );
    expect(
      readData(kind, target, 'before', before.length, 16 * M).equals(before),
      'data changed by expansion',
    );
  });
  await restartServer();

  const snap = await step(`${kind}: snapshot online`, async () => {
    const s = await twice(
      async () =>
        (
          await call('Controller', 'CreateSnapshot', {
            name: `vm-${kind}-snap`,
            sourceVolumeId: id,
          })
        ).snapshot,
    );
    const list = await new BlockdClient(blockdSocket).list();
    const dev = list.find((d) => d.target.includes(`/${id}/`));
    expect(dev && dev.state === 'live', `device after snapshot: ${JSON.stringify(dev)}`);
    return s;
  });
  vols[kind].snapshotId = snap.snapshotId;
  const after = randomBytes(2 * M);
  await step(`${kind}: write after the snapshot`, () =>
    writeData(kind, target, 'after', after, 16 * M),
  );
  await restartServer();

  await step(`${kind}: restore and verify`, async () => {
    const r = (
      await call('Controller', 'CreateVolume', {
        name: `vm-${kind}-restored`,
        capacityRange: { requiredBytes: bigger },
        volumeCapabilities: [cap],
        volumeContentSource: { snapshot: { snapshotId: snap.snapshotId } },
      })
    ).volume;
    vols[kind].restoredId = r.volumeId;
    const rStaging = path.join(work, 'staging', `${kind}-restored`);
    const rTarget = path.join(work, 'pods', `${kind}-restored`, 'publish');
    fs.mkdirSync(rStaging, { recursive: true });
    fs.mkdirSync(path.dirname(rTarget), { recursive: true });
    const rStage = {
      ...stageReq,
      volumeId: r.volumeId,
      stagingTargetPath: rStaging,
      volumeContext: r.volumeContext,
    };
    await twice(() => call('Node', 'NodeStageVolume', rStage));
    await twice(() =>
      call('Node', 'NodePublishVolume', { ...rStage, targetPath: rTarget, readonly: true }),
    );
    dropCaches();
    const back = readData(kind, rTarget, 'before', before.length, 16 * M);
    expect(back.equals(before), 'restored data differs from the data at snapshot time');
    if (kind !== 'block') {
      expect(
        !fs.existsSync(path.join(rTarget, 'after')),
        'data written after the snapshot is in the restore',
      );
      let ro = false;
      try {
        fs.writeFileSync(path.join(rTarget, 'x'), 'x');
      } catch (err) {
        ro = err.code === 'EROFS';
      }
      expect(ro, 'read-only publish is writable');
    }
    // The source, still live, kept its newer data.
    expect(
      readData(kind, target, 'after', after.length, 16 * M).equals(after),
      'source lost data written after the snapshot',
    );
    await twice(() =>
      call('Node', 'NodeUnpublishVolume', { volumeId: r.volumeId, targetPath: rTarget }),
    );
    expect(!fs.existsSync(rTarget), 'unpublish left the target');
    await twice(() =>
      call('Node', 'NodeUnstageVolume', { volumeId: r.volumeId, stagingTargetPath: rStaging }),
    );
    expect(!mounted(rStaging), 'unstage left a mount');
  });
  vols[kind].after = after;
  await restartServer();
}

/** blockd is killed while every volume is staged and published; the data path must survive. */
async function killBlockdPhase() {
  const pattern = randomBytes(8 * M);
  const patternFile = path.join(work, 'pattern');
  fs.writeFileSync(patternFile, pattern);
  const kinds = Object.keys(vols);

  await step('blockd: SIGKILL with volumes staged and published', () => killBlockd('SIGKILL'));
  const writers = kinds.map((kind) => {
    const { target } = vols[kind];
    const args =
      kind === 'block'
        ? [
            `if=${patternFile}`,
            `of=${target}`,
            'bs=1M',
            'seek=64',
            'conv=fsync,notrunc',
            'status=none',
          ]
        : [
            `if=${patternFile}`,
            `of=${path.join(target, 'during-outage')}`,
            'bs=1M',
            'conv=fsync',
            'status=none',
          ];
    const child = spawn('dd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr += c));
    const done = new Promise((resolve) =>
      child.once('exit', (code, signal) => resolve({ kind, code, signal, stderr })),
    );
    return { kind, child, done };
  });
  await sleep(3000);
  await step('while blockd is down: writers wait, conditions are abnormal', async () => {
    const finished = [];
    for (const w of writers) if (w.child.exitCode !== null) finished.push(w.kind);
    log(
      `   writers finished during the outage: ${finished.join(', ') || 'none'} (their I/O is queued)`,
    );
    for (const kind of kinds) {
      const s = await stats(vols[kind].id, vols[kind].target);
      expect(s.volumeCondition.abnormal, `${kind}: condition normal while blockd is down`);
      log(`   ${kind}: ${s.volumeCondition.message}`);
    }
  });
  await step('blockd: restart and recover', () => startBlockd());
  await step('writers finish without error; every byte is there', async () => {
    const outcomes = await Promise.race([
      Promise.all(writers.map((w) => w.done)),
      sleep(300_000).then(() => fail('writers did not finish within 300 s of the restart')),
    ]);
    for (const o of outcomes)
      expect(o.code === 0, `${o.kind}: dd failed (${o.code} ${o.signal}): ${o.stderr}`);
    dropCaches();
    for (const kind of kinds) {
      const { target, before, after } = vols[kind];
      const got =
        kind === 'block'
          ? readData(kind, target, '', pattern.length, 64 * M)
          : readData(kind, target, 'during-outage');
      expect(got.equals(pattern), `${kind}: data written during the outage differs`);
      expect(
        readData(kind, target, 'after', after.length, 16 * M).equals(after),
        `${kind}: older data changed`,
      );
      if (kind !== 'block')
        expect(readData(kind, target, 'before').equals(before), `${kind}: older data changed`);
      const s = await stats(vols[kind].id, target);
      expect(
        !s.volumeCondition.abnormal,
        `${kind}: still abnormal after recovery: ${s.volumeCondition.message}`,
      );
    }
    const io = sh('dmesg', [], { allowFail: true })
      .stdout.split('\n')
      .filter((l) => /I\/O error|EXT4-fs error|XFS.*(error|corrupt)/i.test(l));
    expect(io.length === 0, `kernel reported errors: ${io.join(' | ')}`);
  });
  await restartServer();
}

async function teardown() {
  for (const kind of Object.keys(vols)) {
    const { id, staging, target, snapshotId, restoredId } = vols[kind];
    await step(`${kind}: unpublish, unstage`, async () => {
      await twice(() => call('Node', 'NodeUnpublishVolume', { volumeId: id, targetPath: target }));
      expect(!fs.existsSync(target), 'unpublish left the target');
      await twice(() =>
        call('Node', 'NodeUnstageVolume', { volumeId: id, stagingTargetPath: staging }),
      );
      expect(!mounted(staging), 'unstage left a mount');
      const list = await new BlockdClient(blockdSocket).list();
      expect(!list.some((d) => d.target.includes(`/${id}/`)), 'unstage left the device attached');
    });
    await step(`${kind}: images and file system check`, async () => {
      const dir = path.join(poolDir, 'volumes', id);
      for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.hds') || /\.hds\./.test(n))) {
        const r = sh('qemu-img', ['check', '-f', 'parallels', path.join(dir, f)], {
          allowFail: true,
        });
        expect(r.status === 0, `qemu-img check ${f}: ${r.stdout}${r.stderr}`);
      }
      if (kind !== 'block') {
        const b = new BlockdClient(blockdSocket);
        const dev = await b.attach(path.join(dir, 'DiskDescriptor.xml'));
        try {
          const r =
            kind === 'ext4'
              ? sh('e2fsck', ['-f', '-n', dev.blockPath], { allowFail: true })
              : sh('xfs_repair', ['-n', dev.blockPath], { allowFail: true });
          expect(r.status === 0, `${kind} check: ${r.stdout}${r.stderr}`);
        } finally {
          await b.detach(dev.blockPath);
        }
      }
    });
    await restartServer();
    await step(`${kind}: delete`, async () => {
      await twice(() => call('Controller', 'DeleteVolume', { volumeId: restoredId }));
      await twice(() => call('Controller', 'DeleteSnapshot', { snapshotId }));
      await twice(() => call('Controller', 'DeleteVolume', { volumeId: id }));
      await expectCode(
        grpc.status.NOT_FOUND,
        'Node',
        'NodeStageVolume',
        vols[kind].stageReq,
        'stage after delete',
      );
    });
  }
}

async function main() {
  fs.mkdirSync(poolDir, { recursive: true });
  summary.onlineResize = kernelHasOnlineResize();
  await step('blockd: start', () => startBlockd());
  await startServer();
  await step('identity and node info', async () => {
    const p = await call('Identity', 'Probe');
    expect(p.ready?.value === true, `probe: ${JSON.stringify(p)}`);
    const caps = await call('Identity', 'GetPluginCapabilities');
    expect(
      caps.capabilities.some((c) => c.volumeExpansion?.type === 'ONLINE'),
      'no online expansion',
    );
    const info = await call('Node', 'NodeGetInfo');
    expect(info.nodeId === NODE, `node id ${info.nodeId}`);
  });
  for (const kind of ['ext4', 'xfs', 'block']) await lifecycle(kind);
  await killBlockdPhase();
  await teardown();
  const left = await new BlockdClient(blockdSocket).list();
  expect(left.length === 0, `devices left: ${JSON.stringify(left)}`);
  if (summary.problems.length > 0) fail(`problems: ${summary.problems.join(' | ')}`);
  summary.ok = true;
}

/**
 * After a failure: unmount what the run mounted and detach every device, so that the VM can
 * power off (a device whose server is gone would keep sync waiting forever).
 */
async function cleanUp() {
  const points = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p) => p && p.startsWith(`${work}/`) && p !== poolDir && !p.startsWith(`${poolDir}/`))
    .reverse();
  for (const p of points) {
    if (sh('umount', [p], { allowFail: true }).status !== 0)
      sh('umount', ['-l', p], { allowFail: true });
  }
  // Killed and not restarted: a new blockd recovers the devices so that they can be detached.
  if (!blockd && fs.existsSync(path.join(blockdState, 'devices.json'))) await startBlockd();
  if (!blockd) return;
  const b = new BlockdClient(blockdSocket, 60_000);
  for (const d of await b.list().catch(() => [])) {
    await b
      .detach(d.blockPath)
      .catch((err) => log(`clean-up: detach ${d.blockPath}: ${err.message}`));
  }
}

let rc = 0;
try {
  await main();
  log('result: ok');
} catch (err) {
  rc = 1;
  log(`FAILED: ${err?.stack ?? err}`);
  await cleanUp().catch((e) => log(`clean-up: ${e.message}`));
} finally {
  try {
    if (clients) for (const c of Object.values(clients)) c.close();
    await server?.stop();
  } catch (err) {
    log(`server stop: ${err.message}`);
  }
  if (blockd) await killBlockd('SIGTERM').catch((err) => log(`blockd stop: ${err.message}`));
  fs.writeFileSync(path.join(results, 'csi-node.json'), JSON.stringify(summary, null, 2));
  console.log(
    JSON.stringify({ kernel: summary.kernel, ok: summary.ok, steps: summary.steps.length }),
  );
}
process.exit(rc);
