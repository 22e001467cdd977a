/** `ploop-csi csi`: flags, environment variables and their documentation. */
import { afterEach, describe, expect, it } from 'vitest';
import { Command } from 'commander';
import { CsiCommandOptions, csiCommand } from '../../src/cli/csi.js';

const ENV = [
  'CSI_ENDPOINT',
  'NODE_ID',
  'PLOOP_CSI_POOL',
  'PLOOP_CSI_BLOCKD_SOCKET',
  'PLOOP_CSI_DRIVER_NAME',
  'PLOOP_CSI_METRICS_ADDRESS',
  'PLOOP_CSI_OVER_PROVISIONING',
  'PLOOP_CSI_LOG_LEVEL',
];
const saved = new Map(ENV.map((k) => [k, process.env[k]]));

afterEach(() => {
  for (const [k, v] of saved) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

async function parse(args: string[]): Promise<CsiCommandOptions> {
  let got: CsiCommandOptions | null = null;
  const cmd = csiCommand(async (o) => {
    got = o;
  });
  cmd.exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  await cmd.parseAsync(args, { from: 'user' });
  if (!got) throw new Error('action did not run');
  return got;
}

describe('csi command', () => {
  it('takes flags', async () => {
    for (const k of ENV) delete process.env[k];
    const o = await parse([
      '--endpoint',
      'unix:///run/csi.sock',
      '--node-id',
      'w1',
      '--pool',
      '/var/lib/ploop',
      '--blockd-socket',
      '/run/blockd.sock',
      '--driver-name',
      'ploop.example.com',
      '--metrics-address',
      ':9808',
      '--over-provisioning',
      '2.5',
      '--log-level',
      'debug',
    ]);
    expect(o).toEqual({
      endpoint: 'unix:///run/csi.sock',
      nodeId: 'w1',
      pool: '/var/lib/ploop',
      blockdSocket: '/run/blockd.sock',
      driverName: 'ploop.example.com',
      metricsAddress: ':9808',
      overProvisioning: 2.5,
      logLevel: 'debug',
    });
  });

  it('takes every option from the environment, flags winning', async () => {
    Object.assign(process.env, {
      CSI_ENDPOINT: 'unix:///env.sock',
      NODE_ID: 'env-node',
      PLOOP_CSI_POOL: '/env/pool',
      PLOOP_CSI_BLOCKD_SOCKET: '/env/blockd.sock',
      PLOOP_CSI_DRIVER_NAME: 'env.example.com',
      PLOOP_CSI_METRICS_ADDRESS: '0.0.0.0:1',
      PLOOP_CSI_OVER_PROVISIONING: '3',
      PLOOP_CSI_LOG_LEVEL: 'warn',
    });
    expect(await parse([])).toEqual({
      endpoint: 'unix:///env.sock',
      nodeId: 'env-node',
      pool: '/env/pool',
      blockdSocket: '/env/blockd.sock',
      driverName: 'env.example.com',
      metricsAddress: '0.0.0.0:1',
      overProvisioning: 3,
      logLevel: 'warn',
    });
    expect((await parse(['--node-id', 'flag-node'])).nodeId).toBe('flag-node');
  });

  it('has defaults, requires endpoint, node id and pool, checks values', async () => {
    for (const k of ENV) delete process.env[k];
    const o = await parse(['--endpoint', 'unix:///a', '--node-id', 'n', '--pool', '/p']);
    expect(o).toMatchObject({ driverName: 'csi.ploop.dev', overProvisioning: 1, logLevel: 'info' });
    expect(o.metricsAddress).toBeUndefined();
    await expect(parse(['--node-id', 'n', '--pool', '/p'])).rejects.toThrow(/endpoint/);
    await expect(parse(['--endpoint', 'unix:///a', '--pool', '/p'])).rejects.toThrow(/node-id/);
    await expect(parse(['--endpoint', 'unix:///a', '--node-id', 'n'])).rejects.toThrow(/pool/);
    await expect(
      parse([
        '--endpoint',
        'unix:///a',
        '--node-id',
        'n',
        '--pool',
        '/p',
        '--over-provisioning',
        '0',
      ]),
    ).rejects.toThrow(/positive/);
    await expect(
      parse(['--endpoint', 'unix:///a', '--node-id', 'n', '--pool', '/p', '--log-level', 'loud']),
    ).rejects.toThrow();
  });

  it('documents the environment variables in --help', () => {
    const help = (csiCommand() as Command).helpInformation();
    for (const k of ENV) expect(help).toContain(k);
  });
});
