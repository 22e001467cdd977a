// Shared by the Node.js drivers of the VM suites (csi-node.mjs, data-path.mjs, native-smoke.mjs):
// logging with the time since start, failing, synchronous commands, a verified fio write load,
// and steps recorded in a summary.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import process from 'node:process';
import { setTimeout } from 'node:timers';

export function fail(msg) {
  throw new Error(msg);
}

export function expect(cond, msg) {
  if (!cond) fail(msg);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const dropCaches = () => fs.writeFileSync('/proc/sys/vm/drop_caches', '3');

/** Runs a command to completion; fails on a non-zero exit unless `opts.allowFail`. */
export function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 600_000, ...opts });
  if (r.error) fail(`${cmd}: ${r.error.message}`);
  if (r.status !== 0 && !opts.allowFail) {
    fail(`${cmd} ${args.join(' ')} exited ${r.status}: ${(r.stderr || '') + (r.stdout || '')}`);
  }
  return r;
}

/**
 * A write-heavy load that checks itself: fio keeps 16 O_DIRECT writes of 1 MiB in flight over
 * FILE (SIZE, e.g. '32M') and reads every block back with its checksum after each of LOOPS
 * passes. `running()` says whether fio is still going; `done` resolves to { ok, code, out }, ok
 * when fio exited 0 with no I/O error.
 */
export function verifiedWrites(file, size, loops, cwd) {
  const args = [
    '--name=w',
    `--filename=${file}`,
    `--size=${size}`,
    `--loops=${loops}`,
    '--rw=randwrite',
    '--bs=1M',
    '--iodepth=16',
    '--ioengine=libaio',
    '--direct=1',
    '--verify=crc32c',
    '--verify_state_save=0',
  ];
  const fio = spawn('fio', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let exited = false;
  fio.stdout.on('data', (d) => (out += d));
  fio.stderr.on('data', (d) => (out += d));
  const done = new Promise((resolve) =>
    fio.once('close', (code) => {
      exited = true;
      resolve({ ok: code === 0 && /err= 0/.test(out), code, out });
    }),
  );
  return { running: () => !exited, done };
}

/**
 * A suite's log line writer and step runner. Every step is recorded in `summary.steps` with its
 * duration, and its error when it fails (the error is passed on).
 */
export function suite(name, summary) {
  const t0 = Date.now();
  const log = (msg) =>
    process.stdout.write(`[${name} +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
  const step = async (title, fn) => {
    const s = Date.now();
    log(`-- ${title}`);
    try {
      const v = await fn();
      const ms = Date.now() - s;
      summary.steps.push({ name: title, ok: true, ms });
      log(`   ${title}: ok (${ms} ms)`);
      return v;
    } catch (err) {
      const error = String(err?.message ?? err);
      summary.steps.push({ name: title, ok: false, ms: Date.now() - s, error });
      throw err;
    }
  };
  return { log, step, t0 };
}
