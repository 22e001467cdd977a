// The ublk data path as an operator drives it, inside a test VM (run by data-path.sh): the real
// `ploop-csi blockd` daemon and the `ploop-csi device` / `ploop-csi image` commands.
//
//   node test/vm/data-path.mjs WORKDIR      WORKDIR/pool must be a directory on a real file system
//
// Phases (each verified with checksums after dropping caches):
//   X  xfs: attach, mkfs.xfs, mount, files written with fsync, unmount, detach; the images are
//      clean for the library, qemu-img and ploop; attach again and every file is there
//   T  fstrim releases clusters (the image's allocated size drops); after detach, `image compact`
//      shrinks the file and the files kept are intact
//   G  online grow + xfs_growfs where the kernel has UPDATE_SIZE; elsewhere the clear error, and
//      the image is grown for the next attach
//   M  online snapshot, then online merge of it into the live top while a writer keeps writing
//   S  online snapshot of a raw device under synchronous writes: the snapshot holds exactly a
//      prefix of the writes, at least those acknowledged before it began
//   D  reads over 128 KiB bypass the image's page cache, smaller ones fill it; a large read
//      right after a write (still dirty in the image's cache) returns what was written
//   R  blockd stopped with SIGTERM (hand-over), then killed with SIGKILL, each during an O_DIRECT
//      write of 32 MiB and a verified fio load (16 writes of 1 MiB in flight); a new blockd
//      recovers the device; the writers see no error; xfs_repair finds nothing
//   C  corrupted images are refused at attach with a clear error and are left byte for byte as
//      they were; blockd keeps serving
// A summary goes to $PLOOP_CSI_VM_RESULTS/data-path.json.
import { Buffer } from 'node:buffer';
import { spawn, spawnSync } from 'node:child_process';
import console from 'node:console';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { dropCaches, expect, fail, sh, sleep, suite, verifiedWrites } from './lib.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const main = path.join(repo, 'dist/src/cli/main.js');
const M = 1 << 20;
const results = process.env.PLOOP_CSI_VM_RESULTS || '/tmp';
const summary = { kernel: '', onlineResize: null, steps: [], ok: false };
const { log, step, t0 } = suite('data-path', summary);

const sha = (buf) => createHash('sha256').update(buf).digest('hex');
const fileSha = (p) => sha(fs.readFileSync(p));

/** Runs a command without blocking this process (blockd or a writer may need it meanwhile). */
function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
/** `ploop-csi ARGS...`; fails unless it exits 0 (or `allowFail`). */
async function cli(args, { allowFail = false } = {}) {
  const r = await run(process.execPath, [main, ...args]);
  if (r.code !== 0 && !allowFail) {
    fail(`ploop-csi ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  }
  return r;
}

const work = path.resolve(process.argv[2] || fail('usage: data-path.mjs WORKDIR'));
const pool = path.join(work, 'pool');
const socket = path.join(work, 'blockd.sock');
const state = path.join(work, 'blockd-state');
const mnt = path.join(work, 'mnt');
const blockdLog = fs.openSync(path.join(results, 'data-path-blockd.log'), 'a');
const dev = (args) => cli(['device', ...args, '--socket', socket]);

// ---- blockd --------------------------------------------------------------------------------

let blockd = null;
/** `ploop-csi blockd` as an operator starts it (it puts itself into its own mount namespace). */
async function startBlockd() {
  const t = Date.now();
  const stale = await cli(['device', 'list', '--socket', socket], { allowFail: true });
  expect(stale.code !== 0, 'an earlier blockd still answers on the socket');
  // Its own process group: SIGKILL reaches the daemon under `unshare` too, as when a container
  // is killed. SIGTERM goes to the command only, which passes it on.
  const child = spawn(
    process.execPath,
    [main, 'blockd', '--socket', socket, '--state-dir', state],
    {
      detached: true,
      stdio: ['ignore', blockdLog, blockdLog],
    },
  );
  let exited = null;
  child.once('exit', (code, signal) => (exited = { code, signal }));
  for (;;) {
    if (exited) fail(`blockd exited while starting: ${JSON.stringify(exited)}`);
    const r = await cli(['device', 'list', '--json', '--socket', socket], { allowFail: true });
    if (r.code === 0) break;
    if (Date.now() - t > 180_000) fail(`blockd did not answer within 180 s: ${r.stderr}`);
    await sleep(300);
  }
  blockd = { child, exited: () => exited };
  log(`blockd ${child.pid} serving after ${Date.now() - t} ms`);
}
function dumpStacks(file) {
  const out = [];
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
    } catch {
      continue;
    }
    if (!cmd.includes('node')) continue;
    out.push(`== ${pid} ${cmd}`);
    for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
      const read = (f) => {
        try {
          return fs.readFileSync(`/proc/${pid}/task/${t}/${f}`, 'utf8').trim();
        } catch {
          return '?';
        }
      };
      out.push(`-- ${t} ${read('comm')} wchan=${read('wchan')}`, read('stack'));
    }
  }
  fs.writeFileSync(file, out.join('\n'));
}

async function stopBlockd(signal) {
  const b = blockd;
  blockd = null;
  if (signal === 'SIGKILL') process.kill(-b.child.pid, signal);
  else b.child.kill(signal);
  for (let i = 0; i < 600 && !b.exited(); i++) {
    // A slow stop is worth a look: where every thread of every Node process is.
    if (i === 80) dumpStacks(path.join(results, `data-path-stop-${signal}.txt`));
    await sleep(100);
  }
  expect(b.exited(), `blockd did not exit after ${signal}`);
  // The daemon itself (below unshare) is gone once its socket no longer answers.
  for (let i = 0; ; i++) {
    const r = await cli(['device', 'list', '--socket', socket], { allowFail: true });
    if (r.code !== 0) break;
    expect(i < 100, `blockd still answers after ${signal}`);
    await sleep(200);
  }
  return b.exited();
}

// ---- images and files ----------------------------------------------------------------------

/** The disk as `image info --json` reports it; `top` is the live delta's file. */
async function infoOf(dd) {
  const info = JSON.parse((await cli(['image', 'info', dd, '--json'])).stdout);
  expect(info.deltas?.length > 0, `image info ${dd} lists no deltas`);
  return { info, top: info.deltas[info.deltas.length - 1].path, depth: info.deltas.length };
}
const allocated = (file) => fs.statSync(file).blocks * 512;
// ploop's tools need a large environment block on some builds (see test/support/interop-tools.ts).
const ploopEnv = { ...process.env, PAD: 'x'.repeat(16384) };

/** Every delta of a disk is clean for the library, qemu-img, and ploop where it is installed. */
async function checkClean(dd) {
  await cli(['image', 'check', dd]);
  const hasPloop = sh('sh', ['-c', 'command -v ploop'], { allowFail: true }).status === 0;
  for (const d of (await infoOf(dd)).info.deltas) {
    sh('qemu-img', ['check', '-f', 'parallels', d.path]);
    if (hasPloop) sh('ploop', ['check', '-f', '-c', d.path], { env: ploopEnv });
  }
}

const files = new Map(); // name -> sha256 of what was written
function writeFile(name, bytes) {
  const buf = randomBytes(bytes);
  const fd = fs.openSync(path.join(mnt, name), 'w');
  fs.writeSync(fd, buf);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  files.set(name, sha(buf));
}
function verifyFiles(what) {
  dropCaches();
  for (const [name, want] of files) {
    expect(
      fileSha(path.join(mnt, name)) === want,
      `${what}: ${name} differs from what was written`,
    );
  }
  log(`   ${files.size} files verified (${what})`);
}
async function attachAndMount(dd) {
  const r = await dev(['attach', dd, '--json']);
  const { blockPath } = JSON.parse(r.stdout);
  expect(/^\/dev\/ublkb\d+$/.test(blockPath), `attach printed ${r.stdout}`);
  fs.mkdirSync(mnt, { recursive: true });
  sh('mount', [blockPath, mnt]);
  return blockPath;
}
async function unmountAndDetach(blockPath) {
  sh('umount', [mnt]);
  await dev(['detach', blockPath]);
}

// ---- phases ----------------------------------------------------------------------------------

async function phaseXfs(dd) {
  const blockPath = await step('X: attach, mkfs.xfs, mount, write with fsync', async () => {
    const r = await dev(['attach', dd]);
    const b = r.stdout.trim();
    expect(/^\/dev\/ublkb\d+$/.test(b), `attach printed "${r.stdout}"`);
    const list = JSON.parse((await dev(['list', '--json'])).stdout);
    expect(
      list.some((e) => e.blockPath === b && path.resolve(e.target) === path.resolve(dd)),
      `device list does not show ${b}: ${JSON.stringify(list)}`,
    );
    // blockd selects no block-layer scheduler for its disks (the kernel would pick mq-deadline).
    const sched = fs.readFileSync(`/sys/block/${path.basename(b)}/queue/scheduler`, 'utf8');
    expect(/\[none\]/.test(sched), `I/O scheduler of ${b}: ${sched.trim()}`);
    sh('mkfs.xfs', ['-q', b]);
    fs.mkdirSync(mnt, { recursive: true });
    sh('mount', [b, mnt]);
    for (let i = 0; i < 8; i++) writeFile(`x${i}`, 4 * M + i * 4096);
    return b;
  });
  await step('X: unmount, detach; images clean', async () => {
    await unmountAndDetach(blockPath);
    await checkClean(dd);
  });
  return step('X: attach again; every fsynced byte is there', async () => {
    const b = await attachAndMount(dd);
    verifyFiles('after detach and attach');
    return b;
  });
}

async function phaseTrim(dd, blockPath) {
  let before = 0;
  await step('T: fstrim releases clusters', async () => {
    // The trimmed file lies in the middle of the image: data written after it keeps the file
    // long, so only compaction (not the tail truncation at close) can shrink it.
    writeFile('big', 64 * M);
    writeFile('after-big', 8 * M);
    const { top } = await infoOf(dd);
    before = allocated(top);
    fs.rmSync(path.join(mnt, 'big'));
    files.delete('big');
    sh('fstrim', [mnt]);
    // Released clusters are punched once the release is durable: at the next flush.
    writeFile('after-trim', 4096);
    let now = allocated(top);
    for (let i = 0; i < 50 && before - now < 48 * M; i++) {
      await sleep(200);
      sh('sync', ['-f', path.join(mnt, 'after-trim')]);
      now = allocated(top);
    }
    log(`   allocated ${before / M} MiB -> ${(now / M).toFixed(1)} MiB`);
    expect(before - now >= 48 * M, `fstrim released ${(before - now) / M} MiB, want ≥ 48 MiB`);
  });
  return step('T: detach, compact shrinks the file, attach, files intact', async () => {
    await unmountAndDetach(blockPath);
    const { top } = await infoOf(dd);
    const size = fs.statSync(top).size;
    await cli(['image', 'compact', dd]);
    const after = fs.statSync(top).size;
    log(`   file size ${(size / M).toFixed(1)} MiB -> ${(after / M).toFixed(1)} MiB`);
    expect(after < size, `compact did not shrink the file (${size} -> ${after})`);
    await checkClean(dd);
    const b = await attachAndMount(dd);
    verifyFiles('after compaction');
    return b;
  });
}

async function phaseGrow(dd, blockPath) {
  return step('G: online grow', async () => {
    const want = 768 * M;
    const r = await cli(['device', 'grow', blockPath, '--size', '768M', '--socket', socket], {
      allowFail: true,
    });
    const virtual = (await infoOf(dd)).info.virtualSize;
    expect(virtual === want, `the image is ${virtual} bytes after grow, want ${want}`);
    if (r.code === 0) {
      summary.onlineResize = true;
      expect(Number(sh('blockdev', ['--getsize64', blockPath]).stdout) === want, 'device size');
      sh('xfs_growfs', [mnt]);
      const df = sh('df', ['-B1', '--output=size', mnt]).stdout.trim().split('\n').pop();
      expect(Number(df) > 700 * M, `xfs is ${df} bytes after xfs_growfs`);
      verifyFiles('after online grow');
      return blockPath;
    }
    summary.onlineResize = false;
    expect(/6\.16/.test(r.stderr), `grow failed without the kernel explanation: ${r.stderr}`);
    log(`   ${r.stderr.trim()}`);
    // The next attach has the new size.
    await unmountAndDetach(blockPath);
    const b = await attachAndMount(dd);
    expect(Number(sh('blockdev', ['--getsize64', b]).stdout) === want, 'size after re-attach');
    sh('xfs_growfs', [mnt]);
    verifyFiles('after grow and re-attach');
    return b;
  });
}

/** Deltas in the chain, from the descriptor alone (the live top is not opened). */
const depthOf = (dd) => (fs.readFileSync(dd, 'utf8').match(/<Image>/g) ?? []).length;

async function phaseMerge(dd, blockPath) {
  await step('M: online snapshot, then online merge while a writer writes', async () => {
    const depth = depthOf(dd);
    let stop = false;
    let written = 0;
    const writer = (async () => {
      while (!stop || written < 12) {
        writeFile(`m${written}`, M);
        written++;
        await sleep(20);
      }
    })();
    while (written < 3) await sleep(50);
    const guid = (await dev(['snapshot', blockPath])).stdout.trim();
    expect(/^\{?[0-9a-f-]{36}\}?$/i.test(guid), `snapshot printed "${guid}"`);
    expect(depthOf(dd) === depth + 1, 'the snapshot added no delta');
    const before = written;
    await dev(['merge', blockPath, '--id', guid]);
    stop = true;
    await writer;
    log(`   ${before} files before the merge started, ${written} in all`);
    expect(depthOf(dd) === depth, 'the merged delta is still in the chain');
    verifyFiles('after online merge');
  });
}

/**
 * An O_DIRECT writer (dd, fed through a pipe) is writing when blockd goes away with SIGNAL: the
 * first 8 MiB go before, the rest is fed from the moment the signal is sent, so dd has writes
 * queued on the device while no server runs. Alongside, fio keeps 16 large O_DIRECT writes in
 * flight and reads every block back with its checksum after each pass. A new blockd recovers
 * the device; dd and fio must finish without an error and every byte must be there.
 */
async function phaseRestart(dd, blockPath, signal) {
  await step(`R: blockd ${signal} during O_DIRECT writes; a new blockd recovers`, async () => {
    const fioFile = path.join(mnt, `fio-${signal}`);
    const fio = verifiedWrites(fioFile, '32M', 4, work);
    const pattern = randomBytes(32 * M);
    const name = `direct-${signal}`;
    const child = spawn(
      'dd',
      [`of=${path.join(mnt, name)}`, 'bs=256K', 'iflag=fullblock', 'oflag=direct', 'conv=fsync'],
      { stdio: ['pipe', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const ddExit = new Promise((resolve) => child.once('close', (code) => resolve(code)));
    let ddDone = false;
    void ddExit.then(() => (ddDone = true));
    let release;
    const released = new Promise((r) => (release = r));
    const feeder = (async () => {
      const chunk = 256 * 1024;
      for (let off = 0; off < pattern.length; off += chunk) {
        if (off === 8 * M) await released;
        if (!child.stdin.write(pattern.subarray(off, off + chunk))) {
          await new Promise((r) => child.stdin.once('drain', r));
        }
      }
      child.stdin.end();
    })();
    await sleep(500);
    release();
    expect(fio.running(), 'fio finished before blockd went away');
    const exit = await stopBlockd(signal);
    log(`   blockd exited ${JSON.stringify(exit)}`);
    if (signal === 'SIGTERM') expect(exit.code === 0, 'blockd did not hand over cleanly');
    await sleep(1000);
    // With no server its writes wait: dd finishing now would mean it never depended on recovery.
    expect(!ddDone, 'dd finished while no blockd ran: its writes did not wait for recovery');
    await startBlockd();
    await feeder;
    const code = await ddExit;
    expect(code === 0, `dd failed (${code}): ${stderr}`);
    files.set(name, sha(pattern));
    const f = await fio.done;
    expect(f.ok, `fio failed (${f.code}): ${f.out}`);
    fs.rmSync(fioFile);
    const list = JSON.parse((await dev(['list', '--json'])).stdout);
    const e = list.find((x) => x.blockPath === blockPath);
    expect(e && e.state === 'live', `after recovery: ${JSON.stringify(list)}`);
    verifyFiles(`after blockd ${signal}`);
  });
}

/** The file of the delta with GUID in a descriptor (the frozen state of a snapshot). */
function deltaFileOf(dd, guid) {
  const want = guid.replace(/[{}]/g, '').toLowerCase();
  for (const m of fs.readFileSync(dd, 'utf8').matchAll(/<Image>([\s\S]*?)<\/Image>/g)) {
    const g = /<GUID>\{?([0-9a-f-]+)\}?<\/GUID>/i.exec(m[1])?.[1]?.toLowerCase();
    const file = /<File>([^<]+)<\/File>/.exec(m[1])?.[1];
    if (g === want && file) return path.resolve(path.dirname(dd), file);
  }
  return fail(`no delta ${guid} in ${dd}`);
}

/**
 * Online snapshot of a raw device under a synchronous writer (O_DSYNC, one 64 KiB block at a
 * time, block i filled with a pattern of i): the snapshot must hold exactly a prefix of the
 * writes (no later block without every earlier one), at least every write acknowledged before
 * the snapshot began; the live device keeps all of them.
 */
async function phaseSnapshotUnderWrites() {
  const dd2 = path.join(pool, 'raw', 'DiskDescriptor.xml');
  const block = 64 * 1024;
  const blocks = 1024;
  const stopFile = path.join(work, 'stop-writer');
  const patternOf = (i) => {
    const b = Buffer.alloc(block, (i % 251) + 1);
    b.writeUInt32LE(i, 0);
    return b;
  };
  await step('S: online snapshot of a raw device under O_DSYNC writes', async () => {
    await cli(['image', 'create', dd2, '--size', `${(blocks * block) / M}M`]);
    const b2 = JSON.parse((await dev(['attach', dd2, '--json'])).stdout).blockPath;
    // Writes block after block (20 ms apart) until told to stop, printing each one done.
    const writer = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('node:fs');
         const fd = fs.openSync(process.argv[1], fs.constants.O_WRONLY | fs.constants.O_DSYNC);
         const nap = new Int32Array(new SharedArrayBuffer(4));
         for (let i = 0; i < ${blocks} && !fs.existsSync(process.argv[2]); i++) {
           const b = Buffer.alloc(${block}, (i % 251) + 1);
           b.writeUInt32LE(i, 0);
           fs.writeSync(fd, b, 0, b.length, i * ${block});
           process.stdout.write(i + 1 + '\\n');
           Atomics.wait(nap, 0, 0, 20);
         }
         fs.closeSync(fd);`,
        b2,
        stopFile,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let acked = 0;
    let werr = '';
    writer.stdout.on('data', (d) => {
      const lines = String(d).trim().split('\n');
      acked = Number(lines[lines.length - 1]);
    });
    writer.stderr.on('data', (d) => (werr += d));
    const wexit = new Promise((r) => writer.once('close', r));
    while (acked < 40) await sleep(20);
    const lo = acked;
    const guid = (await dev(['snapshot', b2])).stdout.trim();
    const atReturn = acked;
    await sleep(1500);
    fs.writeFileSync(stopFile, '');
    expect((await wexit) === 0, `the writer failed: ${werr}`);
    const total = acked;
    expect(total > atReturn, 'the writer did not go on after the snapshot');
    // The frozen delta alone is the snapshot's state.
    const out = path.join(work, 'snap.raw');
    await cli(['image', 'export', deltaFileOf(dd2, guid), out]);
    const snap = fs.readFileSync(out);
    fs.rmSync(out);
    let n = 0;
    while (n < blocks && snap.subarray(n * block, (n + 1) * block).equals(patternOf(n))) n++;
    expect(
      snap.subarray(n * block).every((x) => x === 0),
      `the snapshot holds later blocks without block ${n}: not a prefix of the writes`,
    );
    expect(
      // (+ a few: the write in flight at the cut, and lines still in the pipe at the return)
      n >= lo && n <= atReturn + 4,
      `the snapshot holds ${n} writes; acknowledged before it began: ${lo}, when it returned: ${atReturn}`,
    );
    log(
      `   snapshot holds writes 0..${n - 1} (${lo} done before it began, ${atReturn} when it returned, ${total} in all)`,
    );
    dropCaches();
    const live = fs.readFileSync(b2);
    for (let i = 0; i < blocks; i++) {
      const want = i < total ? patternOf(i) : Buffer.alloc(block);
      expect(live.subarray(i * block, (i + 1) * block).equals(want), `live block ${i}`);
    }
    await dev(['detach', b2]);
    await checkClean(dd2);
  });
}

/** Bytes of `file` in the page cache (util-linux fincore). */
function cachedBytes(file) {
  const out = sh('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]).stdout;
  return Number(out.trim());
}

async function phaseDirectRead() {
  const dd3 = path.join(pool, 'direct', 'DiskDescriptor.xml');
  const size = 16 * M;
  await step('D: large reads bypass the image page cache and see the latest write', async () => {
    await cli(['image', 'create', dd3, '--size', '64M']);
    const b3 = JSON.parse((await dev(['attach', dd3, '--json'])).stdout).blockPath;
    const { top } = await infoOf(dd3);
    const src = path.join(work, 'direct.src');
    const back = path.join(work, 'direct.back');
    const data = randomBytes(size);
    fs.writeFileSync(src, data);
    // `size` bytes in blocks of `bs`, with O_DIRECT on the device's side.
    const ddCopy = (from, to, bs, flag) =>
      sh('dd', [`if=${from}`, `of=${to}`, `bs=${bs}`, `count=${size / bs}`, 'status=none', flag]);
    // No flush in between: the writes sit dirty in the image's page cache when read back.
    ddCopy(src, b3, M, 'oflag=direct');
    ddCopy(b3, back, M, 'iflag=direct');
    expect(sha(fs.readFileSync(back)) === sha(data), 'a 1 MiB read right after the write differs');
    dropCaches();
    ddCopy(b3, back, M, 'iflag=direct');
    expect(sha(fs.readFileSync(back)) === sha(data), '1 MiB reads differ from what was written');
    const afterLarge = cachedBytes(top);
    expect(afterLarge < 2 * M, `1 MiB reads left ${afterLarge} bytes of the image in the cache`);
    dropCaches();
    ddCopy(b3, back, 64 * 1024, 'iflag=direct');
    expect(sha(fs.readFileSync(back)) === sha(data), '64 KiB reads differ from what was written');
    const afterSmall = cachedBytes(top);
    expect(
      afterSmall >= size,
      `64 KiB reads left only ${afterSmall} bytes of the image in the cache`,
    );
    log(`   image bytes cached: ${afterLarge} after 1 MiB reads, ${afterSmall} after 64 KiB reads`);
    fs.rmSync(src);
    fs.rmSync(back);
    await dev(['detach', b3]);
    await checkClean(dd3);
  });
}

async function phaseCorrupt() {
  const cases = [
    ['bad signature', (fd) => fs.writeSync(fd, Buffer.from('NotAPloopImage!!'), 0, 16, 0)],
    [
      'BAT entry past the end of the file',
      (fd) => {
        const b = Buffer.alloc(4);
        b.writeUInt32LE(0x7fff0000);
        fs.writeSync(fd, b, 0, 4, 64);
      },
    ],
    ['truncated header', (_fd, file) => fs.truncateSync(file, 40)],
  ];
  for (const [what, damage] of cases) {
    await step(`C: ${what}: refused at attach, image untouched`, async () => {
      const file = path.join(pool, `corrupt-${what.replace(/\W+/g, '-')}.hds`);
      await cli(['image', 'create', file, '--size', '64M']);
      const fd = fs.openSync(file, 'r+');
      damage(fd, file);
      fs.closeSync(fd);
      const before = fileSha(file);
      const r = await cli(['device', 'attach', file, '--socket', socket], { allowFail: true });
      expect(r.code !== 0, `attach of an image with a ${what} succeeded: ${r.stdout}`);
      const msg = r.stderr.trim();
      expect(/beyond eof|not a ploop|shorter than|corrupt/i.test(msg), `unclear error: ${msg}`);
      log(`   ${msg.split('\n')[0]}`);
      expect(fileSha(file) === before, 'the refused image was modified');
      const list = JSON.parse((await dev(['list', '--json'])).stdout);
      expect(!list.some((e) => path.resolve(e.target) === file), 'a device was left attached');
    });
  }
}

async function mainFlow() {
  fs.mkdirSync(pool, { recursive: true });
  const dd = path.join(pool, 'vol', 'DiskDescriptor.xml');
  await step('create a disk and start blockd', async () => {
    await cli(['image', 'create', dd, '--size', '512M']);
    await startBlockd();
    summary.kernel = sh('uname', ['-r']).stdout.trim();
  });
  let b = await phaseXfs(dd);
  b = await phaseTrim(dd, b);
  b = await phaseGrow(dd, b);
  await phaseMerge(dd, b);
  await phaseSnapshotUnderWrites();
  await phaseDirectRead();
  await phaseRestart(dd, b, 'SIGTERM');
  await phaseRestart(dd, b, 'SIGKILL');
  await step('unmount, xfs_repair -n, detach; images clean', async () => {
    sh('umount', [mnt]);
    sh('xfs_repair', ['-n', b]);
    await dev(['detach', b]);
    await checkClean(dd);
  });
  await phaseCorrupt();
  await step('blockd stops on SIGTERM with nothing attached', async () => {
    const e = await stopBlockd('SIGTERM');
    expect(e.code === 0, `blockd exited ${JSON.stringify(e)}`);
  });
  summary.ok = true;
}

try {
  await mainFlow();
} catch (err) {
  console.error(`[data-path] FAILED: ${err?.stack ?? err}`);
  // Take everything apart in order, so nothing waits on a device without a server.
  spawnSync('umount', [mnt]);
  if (blockd) {
    const list = await cli(['device', 'list', '--json', '--socket', socket], { allowFail: true });
    for (const e of list.code === 0 ? JSON.parse(list.stdout) : []) {
      await cli(['device', 'detach', e.blockPath, '--socket', socket], { allowFail: true });
    }
    await stopBlockd('SIGTERM').catch(() => undefined);
  }
} finally {
  summary.seconds = Math.round((Date.now() - t0) / 100) / 10;
  fs.writeFileSync(path.join(results, 'data-path.json'), JSON.stringify(summary, null, 2));
}
process.exit(summary.ok ? 0 : 1);
