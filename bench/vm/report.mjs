// Prints the VM benchmark (bench/vm/fio.sh) as a table per fio row: ploop/ublk with the default
// data path (zero copy where the kernel has it) and in copy mode, against the kernel loop device.
// A row run in several passes is averaged per device; the ratio of each pass (ublk against the
// loop run next to it) is shown as a range, which says how much the emulated VM's speed moved.
// CLOCK says what the guest's clock counted under TCG: `instructions` (qemu -icount: the figures
// are per executed instruction, not per second of the host) or `host`.
//   node bench/vm/report.mjs RESULTS_DIR ACCEL JSON(0|1) CPU_MODEL CLOCK
import * as fs from 'node:fs';
import * as path from 'node:path';
import process from 'node:process';

const [dir, accel = 'tcg', asJson = '0', cpu = 'max', clockArg = 'host'] = process.argv.slice(2);
const GOAL = 0.8;
const ROWS = [
  ['seq-write-1m', '1 MiB sequential write', 'write', 'bw'],
  ['seq-read-1m', '1 MiB sequential read', 'read', 'bw'],
  ['rand-write-4k', '4 KiB random write, QD32', 'write', 'iops'],
  ['rand-read-4k', '4 KiB random read, QD32', 'read', 'iops'],
];

/** fio's first job of every pass of a row on a device. */
function jobs(name, kind) {
  const out = [];
  for (let pass = 1; ; pass++) {
    const f = path.join(dir, `fio-${name}-${kind}-${pass}.json`);
    if (!fs.existsSync(f)) break;
    out.push(JSON.parse(fs.readFileSync(f, 'utf8')).jobs[0]);
  }
  return out;
}

/** The ublk data path the default blockd used, from `device list --json`. */
function mode() {
  try {
    const list = JSON.parse(fs.readFileSync(path.join(dir, 'bench-devices.json'), 'utf8'));
    return list[0]?.dataPath ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const rows = [];
for (const [name, label, dirn, metric] of ROWS) {
  const runs = { ublk: jobs(name, 'ublk'), copy: jobs(name, 'copy'), loop: jobs(name, 'loop') };
  if (!runs.ublk.length || !runs.loop.length) {
    rows.push({ name, label, error: 'missing fio output' });
    continue;
  }
  // fio reports bw in KiB/s; shown as MiB/s for 1 MiB rows, IOPS for 4 KiB rows.
  const val = (js) => mean(js.map((j) => (metric === 'bw' ? j[dirn].bw / 1024 : j[dirn].iops)));
  const p99 = (js) => mean(js.map((j) => j[dirn].clat_ns?.percentile?.['99.000000'] / 1e3));
  const loop = val(runs.loop);
  const ratio = val(runs.ublk) / loop;
  const perPass = runs.ublk
    .map((j, i) => (runs.loop[i] ? val([j]) / val([runs.loop[i]]) : null))
    .filter((x) => x !== null);
  rows.push({
    name,
    label,
    unit: metric === 'bw' ? 'MiB/s' : 'IOPS',
    passes: runs.ublk.length,
    ublk: val(runs.ublk),
    copy: runs.copy.length ? val(runs.copy) : null,
    loop,
    ratio,
    passRatios: { min: Math.min(...perPass), max: Math.max(...perPass) },
    copyRatio: runs.copy.length ? val(runs.copy) / loop : null,
    p99UsUblk: p99(runs.ublk),
    p99UsLoop: p99(runs.loop),
    meetsGoal: ratio >= GOAL,
  });
}
/**
 * What one 4 KiB copy between the kernel and user memory costs in this VM (fio.sh: cached reads
 * of 4 KiB against 512 B): the ublk server pays it for each small request, loop does not.
 */
function copyProbe() {
  const lat = (bs) => {
    const f = path.join(dir, `probe-copy-${bs}.json`);
    if (!fs.existsSync(f)) return null;
    return JSON.parse(fs.readFileSync(f, 'utf8')).jobs[0].read.clat_ns.mean / 1e3;
  };
  const [big, small] = [lat('4k'), lat('512')];
  return big === null || small === null ? null : { read4kUs: big, read512Us: small };
}

const emulated = accel !== 'kvm';
// KVM guests always run on the host's clock.
const clock = emulated ? clockArg : 'host';
const dataPath = mode();
const probe = copyProbe();
if (asJson === '1') {
  process.stdout.write(
    `${JSON.stringify({ accel, cpu, clock, emulated, goal: GOAL, dataPath, copyProbe: probe, rows }, null, 2)}\n`,
  );
} else {
  const label = emulated
    ? `EMULATED (qemu TCG, cpu ${cpu}, ${clock === 'instructions' ? 'clock: 1 ns per executed instruction' : "clock: the host's"}): compare the ratios, not the figures`
    : 'KVM';
  const lines = [
    `fio in a VM, ${label}; ploop/ublk data path: ${dataPath}`,
    `${'row'.padEnd(28)}${'ploop/ublk'.padStart(11)}${'copy mode'.padStart(11)}${'loop'.padStart(11)}  unit   ratio (passes)    copy  p99 µs ublk/loop`,
  ];
  const f = (n) => (n === null ? '-' : n >= 100 ? n.toFixed(0) : n.toFixed(1)).padStart(11);
  for (const r of rows) {
    if (r.error) {
      lines.push(`${r.label.padEnd(28)}${r.error}`);
      continue;
    }
    lines.push(
      `${r.label.padEnd(28)}${f(r.ublk)}${f(r.copy)}${f(r.loop)}  ${r.unit.padEnd(5)}` +
        `${r.ratio.toFixed(2).padStart(6)} ${`(${r.passRatios.min.toFixed(2)}–${r.passRatios.max.toFixed(2)})`.padEnd(11)}` +
        `${(r.copyRatio === null ? '-' : r.copyRatio.toFixed(2)).padStart(6)}` +
        `  ${Math.round(r.p99UsUblk)}/${Math.round(r.p99UsLoop)}${r.meetsGoal ? '' : `  (goal ≥ ${GOAL})`}`,
    );
  }
  if (probe) {
    // The 512 B read copies 3.5 KiB less; that difference, scaled to 4 KiB, is the copy's price.
    lines.push(
      `a cached read takes ${probe.read4kUs.toFixed(1)} µs for 4 KiB, ${probe.read512Us.toFixed(1)} µs for 512 B: ` +
        `about ${(((probe.read4kUs - probe.read512Us) * 8) / 7).toFixed(1)} µs per 4 KiB copied to user memory`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}
