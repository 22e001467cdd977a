// Prints the VM benchmark (bench/vm/fio.sh) as a table: ploop/ublk vs loop per fio row.
//   node bench/vm/report.mjs RESULTS_DIR ACCEL JSON(0|1)
import * as fs from 'node:fs';
import * as path from 'node:path';
import process from 'node:process';

const [dir, accel = 'tcg', asJson = '0'] = process.argv.slice(2);
const GOAL = 0.8;
const ROWS = [
  ['seq-write-1m', '1 MiB sequential write', 'write', 'bw'],
  ['seq-read-1m', '1 MiB sequential read', 'read', 'bw'],
  ['rand-write-4k', '4 KiB random write, QD32', 'write', 'iops'],
  ['rand-read-4k', '4 KiB random read, QD32', 'read', 'iops'],
];

function job(name, kind) {
  const f = path.join(dir, `fio-${name}-${kind}.json`);
  if (!fs.existsSync(f)) return null;
  const j = JSON.parse(fs.readFileSync(f, 'utf8')).jobs[0];
  return j;
}
const rows = [];
for (const [name, label, dirn, metric] of ROWS) {
  const u = job(name, 'ublk');
  const l = job(name, 'loop');
  if (!u || !l) {
    rows.push({ name, label, error: 'missing fio output' });
    continue;
  }
  // fio reports bw in KiB/s; shown as MiB/s for 1 MiB rows, IOPS for 4 KiB rows.
  const val = (j) => (metric === 'bw' ? j[dirn].bw / 1024 : j[dirn].iops);
  const lat = (j) => j[dirn].clat_ns?.percentile?.['99.000000'] / 1e3;
  const ratio = val(u) / val(l);
  rows.push({
    name,
    label,
    unit: metric === 'bw' ? 'MiB/s' : 'IOPS',
    ublk: val(u),
    loop: val(l),
    ratio,
    p99UsUblk: lat(u),
    p99UsLoop: lat(l),
    meetsGoal: ratio >= GOAL,
  });
}
const emulated = accel !== 'kvm';
if (asJson === '1') {
  process.stdout.write(`${JSON.stringify({ accel, emulated, goal: GOAL, rows }, null, 2)}\n`);
} else {
  const label = emulated ? 'EMULATED (qemu TCG): compare the ratios, not the figures' : 'KVM';
  const lines = [
    `fio in a VM, ${label}`,
    `${'row'.padEnd(28)}${'ploop/ublk'.padStart(12)}${'loop'.padStart(12)}  unit    ratio  p99 µs ublk/loop`,
  ];
  for (const r of rows) {
    if (r.error) {
      lines.push(`${r.label.padEnd(28)}${r.error}`);
      continue;
    }
    const f = (n) => (n >= 100 ? n.toFixed(0) : n.toFixed(1)).padStart(12);
    lines.push(
      `${r.label.padEnd(28)}${f(r.ublk)}${f(r.loop)}  ${r.unit.padEnd(6)}${r.ratio
        .toFixed(2)
        .padStart(
          7,
        )}  ${Math.round(r.p99UsUblk)}/${Math.round(r.p99UsLoop)}${r.meetsGoal ? '' : `  (goal ≥ ${GOAL})`}`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}
