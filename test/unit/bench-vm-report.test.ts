import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const report = path.resolve('bench/vm/report.mjs');

interface Row {
  name: string;
  error?: string;
  passes: number;
  ublk: number;
  copy: number | null;
  loop: number;
  ratio: number;
  passRatios: { min: number; max: number };
  meetsGoal: boolean;
}

/** fio's JSON for one run, as much of it as the report reads. */
function fioJson(dirn: 'read' | 'write', value: { bwKiB?: number; iops?: number }): string {
  const side = {
    bw: value.bwKiB ?? 0,
    iops: value.iops ?? 0,
    clat_ns: { percentile: { '99.000000': 2e6 } },
  };
  return JSON.stringify({ jobs: [{ [dirn]: side }] });
}

// The report turns the VM benchmark's fio files into the README's table: fed files with known
// rates, its ratios must come out exactly.
describe('VM benchmark report', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bench-report-'));
  });
  afterEach(() => fsp.rm(dir, { recursive: true, force: true }));

  async function put(name: string, kind: string, pass: number, body: string): Promise<void> {
    await fsp.writeFile(path.join(dir, `fio-${name}-${kind}-${pass}.json`), body);
  }

  it('averages the passes per device and gives the per-pass ratio range', async () => {
    // 1 MiB sequential write: ublk 100 and 300 MiB/s against loop 200 and 250.
    await put('seq-write-1m', 'ublk', 1, fioJson('write', { bwKiB: 100 * 1024 }));
    await put('seq-write-1m', 'ublk', 2, fioJson('write', { bwKiB: 300 * 1024 }));
    await put('seq-write-1m', 'loop', 1, fioJson('write', { bwKiB: 200 * 1024 }));
    await put('seq-write-1m', 'loop', 2, fioJson('write', { bwKiB: 250 * 1024 }));
    await put('seq-write-1m', 'copy', 1, fioJson('write', { bwKiB: 45 * 1024 }));
    // 4 KiB random read in one pass, copy mode absent.
    await put('rand-read-4k', 'ublk', 1, fioJson('read', { iops: 9000 }));
    await put('rand-read-4k', 'loop', 1, fioJson('read', { iops: 10000 }));
    await fsp.writeFile(
      path.join(dir, 'bench-devices.json'),
      JSON.stringify([{ dataPath: 'zero-copy' }]),
    );

    const { stdout } = await run(process.execPath, [report, dir, 'tcg', '1']);
    const out = JSON.parse(stdout) as { emulated: boolean; dataPath: string; rows: Row[] };
    expect(out.emulated).toBe(true);
    expect(out.dataPath).toBe('zero-copy');
    const byName = new Map(out.rows.map((r) => [r.name, r]));

    const sw = byName.get('seq-write-1m');
    expect(sw?.passes).toBe(2);
    expect(sw?.ublk).toBeCloseTo(200);
    expect(sw?.loop).toBeCloseTo(225);
    expect(sw?.copy).toBeCloseTo(45);
    expect(sw?.ratio).toBeCloseTo(200 / 225);
    expect(sw?.passRatios.min).toBeCloseTo(0.5);
    expect(sw?.passRatios.max).toBeCloseTo(1.2);
    expect(sw?.meetsGoal).toBe(true);

    const rr = byName.get('rand-read-4k');
    expect(rr?.ratio).toBeCloseTo(0.9);
    expect(rr?.copy).toBeNull();
    expect(rr?.passRatios).toEqual({ min: 0.9, max: 0.9 });

    // Rows fio left no output for are reported as such, not as zeros.
    expect(byName.get('seq-read-1m')?.error).toBe('missing fio output');
    expect(byName.get('rand-write-4k')?.error).toBe('missing fio output');
  });

  it('labels emulated runs and marks rows below the goal in the table', async () => {
    await put('rand-write-4k', 'ublk', 1, fioJson('write', { iops: 5000 }));
    await put('rand-write-4k', 'loop', 1, fioJson('write', { iops: 10000 }));
    const { stdout } = await run(process.execPath, [report, dir, 'tcg', '0', 'max,-erms', 'host']);
    expect(stdout).toContain("EMULATED (qemu TCG, cpu max,-erms, clock: the host's)");
    const line = stdout.split('\n').find((l) => l.startsWith('4 KiB random write'));
    expect(line).toMatch(/0\.50 \(0\.50–0\.50\)/);
    expect(line).toContain('(goal ≥ 0.8)');

    // Under -icount the figures are per executed instruction, and the label says so.
    const icount = await run(process.execPath, [
      report,
      dir,
      'tcg',
      '1',
      'max,-erms',
      'instructions',
    ]);
    expect((JSON.parse(icount.stdout) as { clock: string }).clock).toBe('instructions');
    const icountText = await run(process.execPath, [
      report,
      dir,
      'tcg',
      '0',
      'max,-erms',
      'instructions',
    ]);
    expect(icountText.stdout).toContain('clock: 1 ns per executed instruction');

    // A KVM guest has the host's clock whatever the caller says.
    const kvm = await run(process.execPath, [report, dir, 'kvm', '0', 'host', 'instructions']);
    expect(kvm.stdout).not.toContain('EMULATED');
    const kvmJson = await run(process.execPath, [report, dir, 'kvm', '1', 'host', 'instructions']);
    expect((JSON.parse(kvmJson.stdout) as { clock: string }).clock).toBe('host');
  });

  it("prints a 4 KiB user copy's price from the cached-read probe, when it ran", async () => {
    await put('rand-read-4k', 'ublk', 1, fioJson('read', { iops: 9000 }));
    await put('rand-read-4k', 'loop', 1, fioJson('read', { iops: 10000 }));
    const without = await run(process.execPath, [report, dir, 'tcg', '1']);
    expect((JSON.parse(without.stdout) as { copyProbe: unknown }).copyProbe).toBeNull();

    // 4 KiB reads at 10 µs, 512 B at 3 µs: 7 µs for 3.5 KiB more, 8 µs per 4 KiB.
    const probe = (us: number): string =>
      JSON.stringify({ jobs: [{ read: { clat_ns: { mean: us * 1e3 } } }] });
    await fsp.writeFile(path.join(dir, 'probe-copy-4k.json'), probe(10));
    await fsp.writeFile(path.join(dir, 'probe-copy-512.json'), probe(3));
    const json = await run(process.execPath, [report, dir, 'tcg', '1']);
    const out = JSON.parse(json.stdout) as { copyProbe: { read4kUs: number; read512Us: number } };
    expect(out.copyProbe).toEqual({ read4kUs: 10, read512Us: 3 });
    const text = await run(process.execPath, [report, dir, 'tcg', '0']);
    expect(text.stdout).toContain(
      'a cached read takes 10.0 µs for 4 KiB, 3.0 µs for 512 B: about 8.0 µs per 4 KiB copied',
    );
  });
});
