// Exercises the native ublk engine end to end inside a test VM (run by native-smoke.sh).
//
//   node test/vm/native-smoke.mjs main IMAGE WORKDIR     the whole scenario (one Node process)
//   node test/vm/native-smoke.mjs serve IMAGE READYFILE  a server that is killed with SIGKILL
//
// Scenario (main):
//   A  device over IMAGE: mkfs.ext4, mount, files written and verified after drop_caches, fstrim
//   S  online snapshot while mounted: pause, new top delta, resume with [old top, new top];
//      more files; background merge of the old top into the new one; resume with [new top]
//   R  raw checks on a second, two-delta chain: copy-on-write, discard and write-zeroes over a
//      lower delta, release of top-only clusters; compared byte for byte with a model and with
//      QEMU's reading of the same chain
//   K  a second process serves the new top; it is killed with SIGKILL while dd writes with
//      O_DIRECT; this process recovers the device; dd must finish without an I/O error
//   G  online grow (UPDATE_SIZE, 7.x) and resize2fs
//   Q  graceful hand-over (QUIESCE_DEV, 7.x) again and again while fio writes and verifies
//   Every image is marked clean afterwards and must pass the library's check (native-smoke.sh
//   also runs qemu-img check). A summary is written to $PLOOP_CSI_VM_RESULTS/native-smoke.json.
import { Buffer } from 'node:buffer';
import { spawn, spawnSync } from 'node:child_process';
import console from 'node:console';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import process from 'node:process';
import { setInterval, setTimeout } from 'node:timers';
import { fileURLToPath } from 'node:url';
import { verifiedWrites } from './lib.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const native = await import(path.join(repo, 'dist/src/blockdev/native.js'));
const ploop = await import(path.join(repo, 'dist/src/ploop/index.js'));
const { PloopImage, checkImage, nodeFileSystem } = ploop;

const MiB = 1 << 20;
const t0 = Date.now();
const results = process.env.PLOOP_CSI_VM_RESULTS || '/tmp';
const summary = { kernel: '', phases: {}, timings: {}, stats: {}, ok: false };

function log(msg) {
  process.stdout.write(`[smoke +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
}
function fail(msg) {
  throw new Error(msg);
}
function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, ...opts });
  if (r.error) fail(`${cmd}: ${r.error.message}`);
  if (r.status !== 0 && !opts.allowFail) {
    fail(`${cmd} ${args.join(' ')} exited ${r.status}: ${(r.stderr || '') + (r.stdout || '')}`);
  }
  return r;
}
async function timed(name, fn) {
  const s = process.hrtime.bigint();
  const v = await fn();
  const ms = Number(process.hrtime.bigint() - s) / 1e6;
  summary.timings[name] = Math.round(ms * 10) / 10;
  log(`${name}: ${ms.toFixed(1)} ms`);
  return v;
}
const sha = (buf) => createHash('sha256').update(buf).digest('hex');
const dropCaches = () => fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The engine's view of one delta file, read from disk now. */
async function deltaOf(file, writable) {
  const img = await PloopImage.openForRepair(file, nodeFileSystem, true);
  const d = {
    fd: fs.openSync(file, writable ? 'r+' : 'r'),
    version: img.version,
    clusterSize: img.clusterSize,
    dataOff: img.dataOffBytes,
    bat: Uint32Array.from(img.bat),
    writable,
  };
  await img.abandon();
  return d;
}
function closeFds(deltas) {
  for (const d of deltas) fs.closeSync(d.fd);
}
/** After the device is gone: re-read the BAT from disk and close cleanly (clears in-use). */
async function markClosed(file) {
  const img = await PloopImage.openForRepair(file, nodeFileSystem, false);
  await img.close();
  const rep = await checkImage(file);
  const errors = rep.findings.filter((f) => f.severity === 'error');
  log(
    `check ${path.basename(file)}: clean=${rep.clean} allocated=${rep.allocatedClusters} ` +
      `unreferenced=${rep.unreferencedClusters}${rep.findings.length ? ' ' + JSON.stringify(rep.findings) : ''}`,
  );
  if (!rep.clean || errors.length) fail(`image check of ${file} failed`);
  return rep;
}
function ioErrorsInDmesg() {
  const out = sh('dmesg', [], { allowFail: true }).stdout || '';
  return out.split('\n').filter((l) => /I\/O error|critical .*error|ublk.*error/i.test(l));
}

// ---- serve (killed by main) ------------------------------------------------------------------
async function serve(image, readyFile) {
  const img = await PloopImage.open(image); // read-write: sets in-use
  const d = {
    fd: fs.openSync(image, 'r+'),
    version: img.version,
    clusterSize: img.clusterSize,
    dataOff: img.dataOffBytes,
    bat: img.bat,
    writable: true,
  };
  const dev = await native.createDevice({
    deltas: [d],
    sizeBytes: img.virtualSize,
    queues: 2,
    depth: 32,
    debugDelayMs: 20,
  });
  fs.closeSync(d.fd);
  fs.writeFileSync(readyFile, JSON.stringify({ devId: dev.devId, pid: process.pid }));
  log(`serve: device ${dev.devId} live (pid ${process.pid})`);
  setInterval(() => {}, 1 << 30);
}

// ---- main --------------------------------------------------------------------------------------
async function main(image, work) {
  const mnt = path.join(work, 'm');
  fs.mkdirSync(mnt, { recursive: true });
  const baseline = ioErrorsInDmesg().length;

  const pr = native.probe();
  summary.kernel = pr.kernel;
  summary.probe = {
    available: pr.available,
    reason: pr.reason,
    features: '0x' + pr.features.toString(16),
    featureNames: native.featureNames(pr.features),
    ioctlEncode: pr.ioctlEncode,
  };
  log(`probe: ${JSON.stringify(summary.probe)}`);
  if (!pr.available) fail(`ublk unavailable: ${pr.reason}`);

  // ---- A: mkfs, mount, files ------------------------------------------------------------------
  const img = await PloopImage.open(image);
  const size = img.virtualSize;
  const cluster = img.clusterSize;
  const top0 = {
    fd: fs.openSync(image, 'r+'),
    version: img.version,
    clusterSize: cluster,
    dataOff: img.dataOffBytes,
    bat: img.bat,
    writable: true,
  };
  const dev = await timed('A.createDevice', () =>
    native.createDevice({ deltas: [top0], sizeBytes: size, queues: 2, depth: 64 }),
  );
  fs.closeSync(top0.fd);
  await img.abandon(); // the engine owns the top now; the handle's BAT is stale from here on
  log(
    `device ${dev.devId}: ${dev.blockPath} flags 0x${dev.flags.toString(16)} ` +
      `[${native.featureNames(dev.flags).join(' ')}] queues ${dev.queues} depth ${dev.depth}`,
  );
  summary.device = {
    flags: '0x' + dev.flags.toString(16),
    flagNames: native.featureNames(dev.flags),
    queues: dev.queues,
    depth: dev.depth,
  };
  const info = await native.getInfo(dev.devId);
  log(
    `info: ${JSON.stringify(info, (k, v) => (typeof v === 'bigint' ? '0x' + v.toString(16) : v))}`,
  );
  if (info.state !== 'live' || info.sizeBytes !== size) fail('device not live or wrong size');
  if (
    !(dev.flags & native.UblkFeature.USER_RECOVERY) ||
    !(dev.flags & native.UblkFeature.USER_RECOVERY_REISSUE)
  )
    fail('recovery flags not granted');

  await timed('A.mkfs.ext4', () => sh('mkfs.ext4', ['-q', '-F', dev.blockPath]));
  sh('mount', [dev.blockPath, mnt]);
  const files = new Map();
  const writeFile = (name, bytes) => {
    const data = randomBytes(bytes);
    fs.writeFileSync(path.join(mnt, name), data);
    files.set(name, sha(data));
  };
  await timed('A.writeFiles', () => {
    writeFile('big.bin', 24 * MiB);
    writeFile('mid.bin', 3 * MiB + 12345);
    for (let i = 0; i < 40; i++) writeFile(`small-${i}.bin`, 1 + i * 997);
  });
  sh('sync', []);
  const verifyFiles = (label) => {
    dropCaches();
    for (const [name, h] of files) {
      if (sha(fs.readFileSync(path.join(mnt, name))) !== h)
        fail(`${label}: ${name} checksum mismatch`);
    }
    log(`${label}: ${files.size} files verified after drop_caches`);
  };
  verifyFiles('A');
  fs.rmSync(path.join(mnt, 'mid.bin'));
  files.delete('mid.bin');
  sh('sync', []);
  const trim = sh('fstrim', ['-v', mnt], { allowFail: true });
  log(`fstrim: ${(trim.stdout || trim.stderr).trim()}`);
  summary.phases.A = 'ok';

  // ---- S: online snapshot + background merge ----------------------------------------------
  const snapTop = path.join(path.dirname(image), 'snap-top.hds');
  await timed('S.pause', () => native.pause(dev.devId));
  await PloopImage.create(snapTop, { size, clusterSize: cluster, version: img.version });
  const newTopImg = await PloopImage.open(snapTop); // sets in-use on the new top
  const chainS = [
    await deltaOf(image, false),
    {
      fd: fs.openSync(snapTop, 'r+'),
      version: newTopImg.version,
      clusterSize: cluster,
      dataOff: newTopImg.dataOffBytes,
      bat: newTopImg.bat,
      writable: true,
    },
  ];
  await newTopImg.abandon();
  await timed('S.resumeWithNewTop', () => native.resume(dev.devId, chainS));
  closeFds(chainS);
  writeFile('after-snap.bin', 5 * MiB);
  // overwrite part of a file written before the snapshot (copy-on-write into the new top)
  {
    const fd = fs.openSync(path.join(mnt, 'big.bin'), 'r+');
    const patch = randomBytes(100_000);
    fs.writeSync(fd, patch, 0, patch.length, 3 * MiB + 777);
    fs.closeSync(fd);
    const whole = fs.readFileSync(path.join(mnt, 'big.bin'));
    files.set('big.bin', sha(whole));
  }
  sh('sync', []);
  verifyFiles('S.afterSnapshot');
  const merged = await timed('S.mergeLower', () => native.mergeLower(dev.devId, 0));
  log(`merge copied ${merged} clusters`);
  await native.pause(dev.devId);
  const chainS2 = [await deltaOf(snapTop, true)];
  await native.resume(dev.devId, chainS2);
  closeFds(chainS2);
  verifyFiles('S.afterMerge');
  summary.phases.S = 'ok';

  sh('umount', [mnt]);
  const fsck = sh('e2fsck', ['-fn', dev.blockPath], { allowFail: true });
  if (fsck.status !== 0) fail(`e2fsck: ${fsck.stdout}${fsck.stderr}`);
  summary.stats.A = native.stats(dev.devId);
  log(
    `stats: ${JSON.stringify(summary.stats.A, (k, v) => (k === 'latencyHistogram' ? undefined : v))}`,
  );
  if (summary.stats.A.ops.discard.ops === 0) log('note: no DISCARD request was seen');
  await timed('A.stopDevice', () => native.stopDevice(dev.devId));
  await timed('A.deleteDevice', () => native.deleteDevice(dev.devId));
  if (fs.existsSync(dev.blockPath)) fail(`${dev.blockPath} still exists after delete`);
  await markClosed(image);
  await markClosed(snapTop);

  // ---- R: raw checks on a two-delta chain, with the legacy opcodes when the kernel has them ---
  const legacy = native.probe({ forceLegacy: true });
  log(`R: legacy opcodes ${legacy.ioctlEncode ? 'not selected' : 'selected'}`);
  // Zero copy where the kernel has it (>= 6.16), and copy mode everywhere.
  const zc = native.isZeroCopy(native.probe().features);
  await rawChecks(work, cluster, zc);
  if (zc) await rawChecks(work, cluster, false);
  summary.phases.R =
    (legacy.ioctlEncode ? 'ok' : 'ok (legacy opcodes)') + (zc ? ', zero copy + copy' : '');
  native.probe();

  // ---- K: kill -9 of a second server process + recovery --------------------------------------
  await killAndRecover(snapTop, work, mnt, files);
  summary.phases.K = 'ok';

  const errs = ioErrorsInDmesg();
  if (errs.length > baseline) fail(`kernel logged I/O errors:\n${errs.slice(baseline).join('\n')}`);
  summary.ok = true;
}

async function rawChecks(work, cluster, zeroCopy) {
  const C = cluster;
  const size = 64 * MiB;
  const mode = zeroCopy ? 'zero copy' : 'copy';
  const base = path.join(work, 'pool', `r-${zeroCopy ? 'z' : 'c'}-base.hds`);
  const top = path.join(work, 'pool', `r-${zeroCopy ? 'z' : 'c'}-top.hds`);
  await PloopImage.create(base, { size, clusterSize: C, version: 2 });
  const baseImg = await PloopImage.open(base);
  await baseImg.abandon(); // in-use stays set while the engine writes it
  const model = Buffer.alloc(size);
  const d0 = [await deltaOf(base, true)];
  const dev = await native.createDevice({
    deltas: d0,
    sizeBytes: size,
    queues: 1,
    depth: 16,
    zeroCopy,
  });
  closeFds(d0);
  if (native.isZeroCopy(dev.flags) !== zeroCopy)
    fail(`R: device flags 0x${dev.flags.toString(16)} do not match the ${mode} mode asked for`);
  log(`R: ${mode} mode, requests up to ${dev.maxIoBytes} bytes`);
  const bdev = dev.blockPath;
  // bs: the size of each request (zero copy serves those over 128 KiB without a copy)
  const pwrite = (off, buf, bs = 4096) => {
    const f = path.join(work, 'chunk.bin');
    fs.writeFileSync(f, buf);
    sh('dd', [
      `if=${f}`,
      `of=${bdev}`,
      `bs=${bs}`,
      `seek=${off}`,
      'oflag=direct,seek_bytes',
      'conv=notrunc',
      'status=none',
    ]);
    buf.copy(model, off);
  };
  // base: clusters 0..9 and 30 with data
  for (const c of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30]) pwrite(c * C, randomBytes(C));
  await native.pause(dev.devId);
  await PloopImage.create(top, { size, clusterSize: C, version: 2 });
  const topImg = await PloopImage.open(top);
  await topImg.abandon();
  const chain = [await deltaOf(base, false), await deltaOf(top, true)];
  await native.resume(dev.devId, chain);
  closeFds(chain);

  pwrite(1 * C + 8192, randomBytes(4096)); // partial write over lower: copy-on-write
  pwrite(6 * C, randomBytes(C)); // whole-cluster overwrite of a lower cluster
  pwrite(40 * C + 4096, randomBytes(8192)); // partial write to a cluster mapped nowhere
  pwrite(3 * C + 65536, randomBytes(256 << 10), 256 << 10); // large partial write over lower
  pwrite(42 * C + 8192, randomBytes(256 << 10), 256 << 10); // large, to a cluster mapped nowhere
  pwrite(41 * C, randomBytes(C)); // top-only cluster, discarded below: released + punched
  // Large writes the queue does not wait for (zero copy): whole clusters mapped nowhere, from
  // four writers at once (reserved in file order, several in flight), then over them in place.
  const big = Math.min(C, 1 << 20);
  const parallel = (first) => {
    const cmds = [];
    for (let w = 0; w < 4; w++) {
      const f = path.join(work, `chunk-${w}.bin`);
      const buf = randomBytes(2 * C);
      fs.writeFileSync(f, buf);
      buf.copy(model, (first + 2 * w) * C);
      cmds.push(
        `dd if=${f} of=${bdev} bs=${big} seek=${(first + 2 * w) * C} oflag=direct,seek_bytes conv=notrunc status=none &`,
      );
    }
    sh('sh', ['-c', `${cmds.join(' ')} wait`]);
  };
  parallel(12);
  parallel(12);
  const zero = (off, len) => model.fill(0, off, off + len);
  // Discard over lower data is a hint the engine does not act on (zeroing it would take space a
  // snapshot already pays for; a hole in a mapped cluster would make ploop check refuse it).
  sh('blkdiscard', ['-o', String(2 * C), '-l', String(C), bdev]);
  sh('blkdiscard', ['-z', '-o', String(3 * C), '-l', String(C), bdev]); // zeroout (NOUNMAP)
  zero(3 * C, C);
  sh('fallocate', ['-p', '-o', String(4 * C), '-l', String(C), bdev]); // write-zeroes, may unmap
  zero(4 * C, C);
  sh('fallocate', ['-z', '-o', String(5 * C + 4096), '-l', String(8192), bdev]); // partial zeroes
  zero(5 * C + 4096, 8192);
  sh('blkdiscard', ['-o', String(41 * C), '-l', String(C), bdev]); // top only: entry cleared
  zero(41 * C, C);
  sh('blkdiscard', ['-o', String(50 * C), '-l', String(2 * C), bdev]); // mapped nowhere: no-op
  sh('dd', [
    'if=/dev/zero',
    `of=${bdev}`,
    'bs=1M',
    'seek=55',
    'count=2',
    'oflag=direct',
    'status=none',
  ]);
  await native.flush(dev.devId);
  const st = native.stats(dev.devId);
  log(
    `R stats (${mode}): alloc=${st.allocatedClusters} copied=${st.copiedClusters} released=${st.releasedClusters} ` +
      `punched=${st.punchedClusters} zeroSkips=${st.zeroWritesSkipped} discard=${st.ops.discard.ops} ` +
      `writeZeroes=${st.ops.writeZeroes.ops} asyncWrites=${st.asyncWrites} errors=${Object.values(st.ops).reduce((a, o) => a + o.errors, 0)}`,
  );
  summary.stats[zeroCopy ? 'Rzc' : 'R'] = st;
  if (st.releasedClusters < 1 || st.punchedClusters < 1)
    fail('discard of a top-only cluster did not release it');
  if (st.copiedClusters < 1) fail('no copy-on-write allocation');
  // Zero copy never sees the data, so it cannot tell a write of zeros from any other.
  if (!zeroCopy && st.zeroWritesSkipped < 1)
    fail('zero writes to unmapped clusters were not skipped');
  if (zeroCopy && big > 128 << 10 && st.asyncWrites < 1)
    fail('no large write was moved by one transfer not waited for');

  const readBack = () => {
    const out = path.join(work, 'r-read.bin');
    sh('dd', [`if=${bdev}`, `of=${out}`, 'bs=1M', 'iflag=direct', 'status=none']);
    const data = fs.readFileSync(out);
    fs.rmSync(out);
    return data;
  };
  const compare = (label, got) => {
    if (got.length !== model.length)
      fail(`${label}: ${got.length} bytes, expected ${model.length}`);
    for (let c = 0; c < size / C; c++) {
      if (!got.subarray(c * C, (c + 1) * C).equals(model.subarray(c * C, (c + 1) * C)))
        fail(`${label}: cluster ${c} differs from the model`);
    }
    log(`${label} (${mode}): ${size / MiB} MiB equal to the model`);
  };
  compare('R.device', readBack());
  await native.deleteDevice(dev.devId);
  await markClosed(base);
  await markClosed(top);
  // QEMU reads the same chain (top with the base as backing file)
  const json = JSON.stringify({
    driver: 'parallels',
    file: { driver: 'file', filename: top },
    backing: { driver: 'parallels', file: { driver: 'file', filename: base } },
  });
  const qraw = path.join(work, 'r-qemu.raw');
  const q = sh('qemu-img', ['convert', '-O', 'raw', `json:${json}`, qraw], { allowFail: true });
  if (q.status === 0) compare('R.qemu', fs.readFileSync(qraw));
  else log(`qemu-img convert not available: ${q.stderr || q.error}`);
  fs.rmSync(qraw, { force: true });
}

function writeFile2(mnt, files, name, bytes) {
  const data = randomBytes(bytes);
  fs.writeFileSync(path.join(mnt, name), data);
  files.set(name, sha(data));
}

async function killAndRecover(image, work, mnt, files) {
  const ready = path.join(work, 'serve-ready.json');
  fs.rmSync(ready, { force: true });
  const tServe = Date.now();
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'serve', image, ready], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  let childExit = null;
  child.on('exit', (code, sig) => (childExit = { code, sig }));
  while (!fs.existsSync(ready)) {
    if (childExit) fail(`server exited early: ${JSON.stringify(childExit)}`);
    if (Date.now() - tServe > 120_000) fail('server did not come up');
    await sleep(100);
  }
  const { devId } = JSON.parse(fs.readFileSync(ready, 'utf8'));
  summary.timings['K.serverStartup'] = Date.now() - tServe;
  const bdev = `/dev/ublkb${devId}`;
  sh('mount', [bdev, mnt]);
  const pattern = randomBytes(16 * MiB);
  const patFile = path.join(work, 'pattern.bin');
  fs.writeFileSync(patFile, pattern);
  const dd = spawn(
    'dd',
    [`if=${patFile}`, `of=${path.join(mnt, 'dd.bin')}`, 'bs=64k', 'oflag=direct', 'conv=fsync'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let ddErr = '';
  dd.stderr.on('data', (b) => (ddErr += b));
  const ddDone = new Promise((res) => dd.on('exit', (code) => res(code)));
  let ddExited = false;
  ddDone.then(() => (ddExited = true));
  await sleep(1500);
  if (ddExited) log('warning: dd finished before the kill (no request was in flight)');
  const tKill = Date.now();
  child.kill('SIGKILL');
  while (!childExit) await sleep(20);
  log(`server killed (${JSON.stringify(childExit)}); dd still running: ${!ddExited}`);
  await sleep(500);
  const q = await native.getInfo(devId);
  log(`after kill: state ${q.state}, server pid ${q.serverPid}`);
  summary.phases.K_stateAfterKill = q.state;
  if (q.state !== 'quiesced') fail(`device state after kill is ${q.state}, expected quiesced`);
  const blocked = !ddExited;

  // the image is still marked in use: open without the in-use check, BAT from the file
  const deltas = [await deltaOf(image, true)];
  const rec = await timed('K.recoverDevice', () =>
    native.recoverDevice(devId, {
      deltas,
      sizeBytes: deltas[0].bat.length * deltas[0].clusterSize,
    }),
  );
  closeFds(deltas);
  summary.timings['K.killToLive'] = Date.now() - tKill;
  log(`recovered device ${rec.devId}; state ${(await native.getInfo(devId)).state}`);
  const code = await ddDone;
  summary.timings['K.ddTotalAfterKill'] = Date.now() - tKill;
  log(
    `dd exit ${code} (was blocked during the outage: ${blocked}) ${ddErr.trim().split('\n').pop()}`,
  );
  if (code !== 0) fail(`dd failed after recovery: ${ddErr}`);
  files.set('dd.bin', sha(pattern));
  fs.rmSync(patFile);
  dropCaches();
  for (const [name, h] of files) {
    if (sha(fs.readFileSync(path.join(mnt, name))) !== h) fail(`K: ${name} checksum mismatch`);
  }
  log(`K: ${files.size} files verified after recovery`);

  // ---- G: online grow (UPDATE_SIZE, kernel >= 6.16) ---------------------------------------
  const newSize = 384 * MiB;
  if (
    rec.flags & native.UblkFeature.UPDATE_SIZE ||
    native.probe().features & native.UblkFeature.UPDATE_SIZE
  ) {
    await native.pause(devId);
    const g = await PloopImage.openForRepair(image, nodeFileSystem, false);
    await ploop.growImage(g, newSize);
    await g.abandon(); // stays in use: the engine serves it
    const grown = [await deltaOf(image, true)];
    await native.resume(devId, grown);
    closeFds(grown);
    await timed('G.updateSize', () => native.updateSize(devId, newSize));
    sh('resize2fs', [bdev]);
    const gi = await native.getInfo(devId);
    const df = sh('df', ['-B1', '--output=size', mnt]).stdout.trim().split('\n').pop().trim();
    log(`G: device ${gi.sizeBytes} bytes, ext4 size ${df}`);
    if (gi.sizeBytes !== newSize) fail('UPDATE_SIZE did not change the size');
    writeFile2(mnt, files, 'after-grow.bin', 40 * MiB);
    summary.phases.G = 'ok';
  } else {
    const e = await native.updateSize(devId, newSize).then(
      () => null,
      (err) => err,
    );
    log(`G: UPDATE_SIZE not offered by this kernel; updateSize -> ${e ? e.code : 'resolved'}`);
    summary.phases.G = `skipped (${e ? e.code : 'no error'})`;
  }

  // ---- Q: graceful hand-over (QUIESCE_DEV, kernel >= 6.16) under writes --------------------
  // fio keeps 16 large O_DIRECT writes in flight (the asynchronous path) and reads every block
  // back with its checksum after each pass, while the device is quiesced and recovered over and
  // over: no request may fail and no hand-over may hang (one that waited for the abort of a fetch
  // re-armed after the kernel's sweep once did).
  if (rec.flags & native.UblkFeature.QUIESCE) {
    const fio = verifiedWrites(path.join(mnt, 'handover.fio'), '48M', 6, work);
    await sleep(500);
    let rounds = 0;
    let worst = 0;
    while (fio.running()) {
      const s = Date.now();
      await native.quiesceDevice(devId, 5000);
      const qs = await native.getInfo(devId);
      if (qs.state !== 'quiesced') fail(`state after QUIESCE_DEV is ${qs.state}`);
      const again = [await deltaOf(image, true)];
      await native.recoverDevice(devId, { deltas: again });
      closeFds(again);
      worst = Math.max(worst, Date.now() - s);
      rounds++;
      await sleep(100 + Math.floor(Math.random() * 300));
    }
    const f = await fio.done;
    log(`Q: ${rounds} hand-overs (quiesce + recover) during fio, the slowest ${worst} ms`);
    summary.timings['Q.slowestHandover'] = worst;
    if (!f.ok) fail(`fio failed across hand-overs (${f.code}): ${f.out}`);
    if (rounds < 3) fail(`fio finished after ${rounds} hand-overs: too few to test them`);
    fs.rmSync(path.join(mnt, 'handover.fio'));
    writeFile2(mnt, files, 'after-handover.bin', 2 * MiB);
    summary.phases.Q = 'ok';
  } else {
    const e = await native.quiesceDevice(devId, 1000).then(
      () => null,
      (err) => err,
    );
    log(`Q: QUIESCE not granted; quiesceDevice -> ${e ? e.code : 'resolved'}`);
    summary.phases.Q = `skipped (${e ? e.code : 'no error'})`;
  }
  sh('sync', []);
  dropCaches();
  for (const [name, h] of files) {
    if (sha(fs.readFileSync(path.join(mnt, name))) !== h) fail(`G/Q: ${name} checksum mismatch`);
  }
  log(`G/Q: ${files.size} files verified`);
  // ---- T: TRY_STOP_DEV refuses while mounted (kernel >= 7.0) -------------------------------
  const safeStop = (await native.getInfo(devId)).flags & native.UblkFeature.SAFE_STOP_DEV;
  const busy = await native.tryStopDevice(devId).then(
    () => null,
    (err) => err,
  );
  log(`T: tryStopDevice while mounted -> ${busy ? busy.code : 'stopped!'}`);
  if (!busy || busy.code !== (safeStop ? 'EBUSY' : 'EOPNOTSUPP'))
    fail('unexpected tryStopDevice result');
  sh('umount', [mnt]);
  const fsck = sh('e2fsck', ['-fn', bdev], { allowFail: true });
  if (fsck.status !== 0) fail(`e2fsck after recovery: ${fsck.stdout}${fsck.stderr}`);
  summary.stats.K = native.stats(devId);
  if (safeStop) {
    await timed('T.tryStopDevice', () => native.tryStopDevice(devId));
    summary.phases.T = 'ok';
  } else {
    summary.phases.T = 'skipped (EOPNOTSUPP)';
  }
  await native.deleteDevice(devId);
  await markClosed(image);
}

const [mode, a1, a2] = process.argv.slice(2);
if (mode === 'serve') {
  serve(a1, a2).catch((e) => {
    log(`serve failed: ${e.stack || e}`);
    process.exit(1);
  });
} else if (mode === 'main') {
  let code = 0;
  try {
    await main(a1, a2);
    log('native smoke: all phases passed');
  } catch (e) {
    log(`FAILED: ${e.stack || e}`);
    summary.error = String(e.message || e);
    code = 1;
  }
  summary.totalSeconds = (Date.now() - t0) / 1000;
  fs.writeFileSync(
    path.join(results, 'native-smoke.json'),
    JSON.stringify(summary, (k, v) => (typeof v === 'bigint' ? '0x' + v.toString(16) : v), 2),
  );
  process.exit(code);
} else {
  console.error('usage: native-smoke.mjs main IMAGE WORKDIR | serve IMAGE READYFILE');
  process.exit(2);
}
