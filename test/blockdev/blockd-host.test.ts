/**
 * blockd on a host without ublk (the usual CI and development host): the control API answers
 * over its unix socket, reports why devices cannot be served, and leaves images untouched.
 * Attaching for real is covered by the VM suites (test/vm).
 */
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, truncate } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Blockd } from '../../src/blockdev/daemon.js';
import { serve } from '../../src/blockdev/api.js';
import { BlockdClient } from '../../src/blockdev/client.js';
import { BlockdError } from '../../src/blockdev/errors.js';
import { UblkUnavailableError, createDevice, probe } from '../../src/blockdev/native.js';
import { PloopImage, createDisk, isDirty } from '../../src/ploop/index.js';

const hostHasUblk = existsSync('/dev/ublk-control');

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
async function patch(file: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await open(file, 'r+');
  await fh.write(bytes, 0, bytes.length, offset);
  await fh.close();
}

describe('native engine on this host', () => {
  it('probes ublk and explains when it is unavailable', () => {
    const p = probe();
    if (hostHasUblk) {
      expect(p.available).toBe(true);
    } else {
      expect(p.available).toBe(false);
      expect(p.reason).toMatch(/ublk/);
    }
  });

  it.runIf(!hostHasUblk)('refuses to create a device with a typed error', async () => {
    await expect(createDevice({ deltas: [], sizeBytes: 1 << 20 })).rejects.toBeInstanceOf(
      UblkUnavailableError,
    );
  });
});

describe('blockd control API', () => {
  let dir: string;
  let server: Server;
  let client: BlockdClient;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ploop-blockd-'));
    const d = new Blockd({ stateDir: path.join(dir, 'state') });
    await d.start();
    server = await serve(d, path.join(dir, 'blockd.sock'));
    client = new BlockdClient(path.join(dir, 'blockd.sock'));
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  it('answers probe and list', async () => {
    const p = await client.probe();
    expect(p.available).toBe(hostHasUblk);
    expect(await client.list()).toEqual([]);
  });

  it('refuses a second server on the same socket', async () => {
    const d = new Blockd({ stateDir: path.join(dir, 'state2') });
    await expect(serve(d, path.join(dir, 'blockd.sock'))).rejects.toBeInstanceOf(BlockdError);
  });

  it.runIf(!hostHasUblk)('reports UNAVAILABLE on attach and leaves the image clean', async () => {
    const { descriptorPath, imagePath } = await createDisk(path.join(dir, 'disk'), {
      size: 64 << 20,
    });
    const err = await client.attach(descriptorPath).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlockdError);
    expect((err as BlockdError).code).toBe('UNAVAILABLE');
    expect((err as BlockdError).message).toMatch(/ublk unavailable/);
    expect(await isDirty(imagePath)).toBe(false);
    const img = await PloopImage.open(imagePath, { readOnly: true });
    await img.close();
  });

  it('refuses a damaged image at attach and leaves it byte for byte as it was', async () => {
    const damages: [string, (file: string) => Promise<void>][] = [
      ['a BAT entry past the end of the file', (f) => patch(f, 64, u32(0x7fff0000))],
      ['a bad signature', (f) => patch(f, 0, Buffer.from('NotAPloopImage!!'))],
      ['a truncated header', (f) => truncate(f, 40)],
    ];
    for (const [what, damage] of damages) {
      const { descriptorPath, imagePath } = await createDisk(
        path.join(dir, `damaged-${damages.findIndex((d) => d[0] === what)}`),
        { size: 64 << 20 },
      );
      await damage(imagePath);
      const before = await readFile(imagePath);
      const err = await client.attach(descriptorPath).catch((e: unknown) => e);
      expect(err, what).toBeInstanceOf(BlockdError);
      expect((err as BlockdError).message, what).toMatch(
        /beyond eof|signature|shorter than|corrupt/i,
      );
      expect((await readFile(imagePath)).equals(before), `${what}: image modified`).toBe(true);
      expect(await client.list()).toEqual([]);
    }
  });

  it('gives NOT_FOUND for unknown devices and operations, OK for detaching one', async () => {
    await expect(client.snapshot('/dev/ublkb99')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(client.stats('7')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(client.detach('/dev/ublkb99')).resolves.toBeUndefined();
  });

  it('rejects malformed requests with INVALID_ARGUMENT', async () => {
    await expect(client.attach('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(client.grow('/dev/ublkb0', -5)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
  });
});
