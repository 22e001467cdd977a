/** Conformance of the Identity service, and of the services this server does not offer. */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Harness, DRIVER, startHarness } from './harness.js';

let h: Harness;

beforeAll(async () => {
  h = await startHarness();
});

afterAll(async () => {
  await h.close();
});

describe('Identity', () => {
  it('GetPluginInfo names the driver and its version', async () => {
    const pkg = JSON.parse(await fsp.readFile('package.json', 'utf8')) as { version: string };
    const r = await h.call('Identity', 'GetPluginInfo');
    expect(r).toEqual({ name: DRIVER, vendorVersion: pkg.version, manifest: {} });
    expect(r.name).toMatch(/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/);
  });

  it('GetPluginCapabilities: controller service and topology, no expansion yet', async () => {
    const r = await h.call<{
      capabilities: { service?: { type: string }; volumeExpansion?: object }[];
    }>('Identity', 'GetPluginCapabilities');
    expect(r.capabilities.map((c) => c.service?.type).sort()).toEqual([
      'CONTROLLER_SERVICE',
      'VOLUME_ACCESSIBILITY_CONSTRAINTS',
    ]);
    expect(r.capabilities.some((c) => c.volumeExpansion)).toBe(false);
  });

  it('Probe is ready, and FAILED_PRECONDITION when the pool is gone', async () => {
    expect(await h.call('Identity', 'Probe')).toEqual({ ready: { value: true } });
    const volumes = path.join(h.poolDir, 'volumes');
    const aside = path.join(h.poolDir, 'volumes-aside');
    await fsp.rename(volumes, aside);
    try {
      expect(await h.code('Identity', 'Probe')).toBe(status.FAILED_PRECONDITION);
    } finally {
      await fsp.rename(aside, volumes);
    }
    expect(await h.code('Identity', 'Probe')).toBe(status.OK);
  });

  it('answers UNIMPLEMENTED for the node service, which this server does not offer', async () => {
    expect(await h.code('Node', 'NodeGetInfo')).toBe(status.UNIMPLEMENTED);
    expect(await h.code('Node', 'NodeGetCapabilities')).toBe(status.UNIMPLEMENTED);
  });
});
