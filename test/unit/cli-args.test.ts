import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { imageCommand } from '../../src/cli/image.js';
import { EXIT, exitCodeFor, reason } from '../../src/cli/output.js';
import {
  BusyError,
  CorruptImageError,
  InvalidArgumentError,
  IoError,
  NotFoundError,
  UnsupportedError,
} from '../../src/ploop/index.js';
import { K64, makeTempDir, readHeader, removeDir, writeEntry } from './helpers.js';

let dir: string;
let out: string[];
beforeEach(async () => {
  dir = await makeTempDir();
  out = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  });
});
afterEach(async () => {
  vi.restoreAllMocks();
  await removeDir(dir);
});

async function run(...args: string[]): Promise<unknown> {
  const cmd = imageCommand().exitOverride();
  for (const c of cmd.commands) c.exitOverride();
  out = [];
  await cmd.parseAsync(args, { from: 'user' });
  const text = out.join('');
  return args.includes('--json') ? JSON.parse(text) : text;
}

describe('image create', () => {
  it('takes size, cluster size and format version', async () => {
    const file = path.join(dir, 'a.hds');
    const r = await run(
      'create',
      file,
      '--size',
      '1M',
      '--cluster-size',
      '64K',
      '--version',
      '1',
      '--json',
    );
    expect(r).toEqual({ imagePath: file, virtualSize: 1 << 20 });
    const h = await readHeader(file);
    expect(h.version).toBe(1);
    expect(h.clusterSectors).toBe(128);
    expect(h.batEntries).toBe(16);
  });

  it('creates a disk directory for a trailing slash or DiskDescriptor.xml', async () => {
    const r = (await run('create', `${path.join(dir, 'd1')}/`, '--size', '2M', '--json')) as {
      descriptorPath: string;
    };
    expect(r.descriptorPath).toBe(path.join(dir, 'd1', 'DiskDescriptor.xml'));
    await run('create', path.join(dir, 'd2', 'DiskDescriptor.xml'), '--size', '2M');
    await fsp.access(path.join(dir, 'd2', 'root.hds'));
  });

  it.each<[string[], RegExp]>([
    [['--size', '1X'], /invalid size/],
    [['--size', '1M', '--format', 'qcow2'], /unknown format/],
    [['--size', '1M', '--version', '3'], /unknown version/],
    [['--size', '1M', '--cluster-size', '4K'], /cluster size/],
  ])('rejects %j with InvalidArgumentError', async (args, re) => {
    const file = path.join(dir, 'bad.hds');
    const err = await run('create', file, ...args).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(String((err as Error).message)).toMatch(re);
    expect(exitCodeFor(err)).toBe(EXIT.USAGE);
    await expect(fsp.access(file)).rejects.toThrow();
  });
});

describe('image check', () => {
  it('fails with a corrupt-image exit code on errors, and repairs', async () => {
    const file = path.join(dir, 'c.hds');
    await run('create', file, '--size', '1M', '--cluster-size', '64K');
    await writeEntry(file, 3, 99);
    const err = await run('check', file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorruptImageError);
    expect(exitCodeFor(err)).toBe(EXIT.CORRUPT);
    expect(out.join('')).toMatch(/ERRORS/);
    const r = (await run('check', file, '--repair', '--json')) as { clean: boolean };
    expect(r.clean).toBe(true);
    await run('check', file);
    expect(out.join('')).toMatch(/clean/);
  });
});

describe('info and grow', () => {
  it('reports geometry as JSON and grows', async () => {
    const file = path.join(dir, 'i.hds');
    await run('create', file, '--size', '1M', '--cluster-size', '64K');
    const i = (await run('info', file, '--json')) as { virtualSize: number; clusterSize: number };
    expect(i.virtualSize).toBe(1 << 20);
    expect(i.clusterSize).toBe(K64);
    const g = (await run('grow', file, '--size', '3M', '--json')) as { virtualSize: number };
    expect(g.virtualSize).toBe(3 << 20);
  });
});

describe('exit codes', () => {
  it.each<[unknown, number]>([
    [new CorruptImageError('/x', 'bad'), EXIT.CORRUPT],
    [new InvalidArgumentError('bad'), EXIT.USAGE],
    [new BusyError('busy'), EXIT.BUSY],
    [new NotFoundError('none'), EXIT.NOT_FOUND],
    [new UnsupportedError('no'), EXIT.UNSUPPORTED],
    [new IoError('io'), EXIT.IO],
    [new Error('other'), EXIT.FAILURE],
    ['string', EXIT.FAILURE],
  ])('%s → %d', (err, code) => {
    expect(exitCodeFor(err)).toBe(code);
  });

  it('reasons are one line', () => {
    expect(reason(new Error('a\nb'))).toBe('a');
    expect(reason('plain')).toBe('plain');
  });
});
