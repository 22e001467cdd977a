/** The CSI layer's small modules on their own: int64, validation, locks, paging, errors, topology. */
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { CsiError, statusOf, toCsiError } from '../../src/csi/errors.js';
import { InFlight } from '../../src/csi/locks.js';
import { parseHostPort } from '../../src/csi/metrics.js';
import { paginate } from '../../src/csi/paging.js';
import { int64ToNumber } from '../../src/csi/proto.js';
import { redact } from '../../src/csi/rpc.js';
import { NodeTopology, checkDriverName } from '../../src/csi/topology.js';
import type { VolumeCapability } from '../../src/csi/types.js';
import {
  checkOptionalId,
  unsupportedReason,
  validateCapabilities,
  validateCapacityRange,
  validateId,
  validateName,
} from '../../src/csi/validate.js';
import { PloopError } from '../../src/ploop/index.js';
import { PoolError } from '../../src/pool/index.js';

function codeOf(fn: () => unknown): number {
  try {
    fn();
  } catch (err) {
    return (err as CsiError).code;
  }
  return status.OK;
}

const cap = (
  mode: string | number,
  type: 'mount' | 'block' = 'mount',
  fsType = '',
): VolumeCapability =>
  ({
    accessMode: { mode },
    ...(type === 'mount'
      ? { mount: { fsType, mountFlags: [], volumeMountGroup: '' }, accessType: 'mount' }
      : { block: {}, accessType: 'block' }),
  }) as VolumeCapability;

describe('int64', () => {
  it('converts exactly up to 2^53 - 1', () => {
    expect(int64ToNumber('0', 'x')).toBe(0);
    expect(int64ToNumber('9007199254740991', 'x')).toBe(Number.MAX_SAFE_INTEGER);
    expect(int64ToNumber(1024, 'x')).toBe(1024);
  });

  it('refuses what a number cannot hold exactly, negatives and garbage', () => {
    expect(codeOf(() => int64ToNumber('9007199254740992', 'x'))).toBe(status.OUT_OF_RANGE);
    expect(codeOf(() => int64ToNumber('9223372036854775807', 'x'))).toBe(status.OUT_OF_RANGE);
    expect(codeOf(() => int64ToNumber('-1', 'x'))).toBe(status.INVALID_ARGUMENT);
    expect(codeOf(() => int64ToNumber('1e3', 'x'))).toBe(status.INVALID_ARGUMENT);
  });

  it('validates capacity ranges', () => {
    expect(validateCapacityRange(null)).toEqual({ requiredBytes: 0, limitBytes: 0 });
    expect(validateCapacityRange({ requiredBytes: '5', limitBytes: '0' })).toEqual({
      requiredBytes: 5,
      limitBytes: 0,
    });
    expect(codeOf(() => validateCapacityRange({ requiredBytes: '6', limitBytes: '5' }))).toBe(
      status.INVALID_ARGUMENT,
    );
  });
});

describe('names and ids', () => {
  it('names: required, 128 bytes, no banned control characters', () => {
    expect(validateName('a'.repeat(128))).toHaveLength(128);
    expect(validateName('tab\tand\nnewline\rok')).toBeTruthy();
    expect(validateName('../../etc')).toBe('../../etc');
    for (const bad of ['', 'a'.repeat(129), 'ü'.repeat(65), 'a\0', '\u001f', '\u007f', '\u0085']) {
      expect(codeOf(() => validateName(bad))).toBe(status.INVALID_ARGUMENT);
    }
  });

  it('ids: required, 128 bytes, no separators or control characters', () => {
    expect(validateId('fake-vol-id-1234', 'id')).toBe('fake-vol-id-1234');
    for (const bad of ['', '../../etc', 'a/b', 'a\\b', 'a\0', 'x'.repeat(129)]) {
      expect(codeOf(() => validateId(bad, 'id'))).toBe(status.INVALID_ARGUMENT);
    }
    expect(codeOf(() => checkOptionalId('', 'id'))).toBe(status.OK);
    expect(codeOf(() => checkOptionalId('..', 'id'))).toBe(status.OK);
  });
});

describe('capabilities', () => {
  it('accepts single-node modes, mount (ext4, xfs) and block', () => {
    for (const m of [
      'SINGLE_NODE_WRITER',
      'SINGLE_NODE_READER_ONLY',
      'SINGLE_NODE_SINGLE_WRITER',
      'SINGLE_NODE_MULTI_WRITER',
    ]) {
      expect(unsupportedReason(cap(m), 'c')).toBeNull();
      expect(unsupportedReason(cap(m, 'block'), 'c')).toBeNull();
    }
    expect(
      validateCapabilities([
        cap('SINGLE_NODE_WRITER', 'mount', 'xfs'),
        cap('SINGLE_NODE_WRITER', 'block'),
      ]),
    ).toEqual({
      hasMount: true,
      hasBlock: true,
      fsType: 'xfs',
    });
    expect(validateCapabilities([cap('SINGLE_NODE_WRITER')]).fsType).toBeNull();
  });

  it('refuses multi-node modes, unknown modes, other file systems, missing fields', () => {
    for (const m of [
      'MULTI_NODE_READER_ONLY',
      'MULTI_NODE_SINGLE_WRITER',
      'MULTI_NODE_MULTI_WRITER',
      42,
    ]) {
      expect(unsupportedReason(cap(m), 'c')).toMatch(/not supported/);
      expect(codeOf(() => validateCapabilities([cap(m)]))).toBe(status.INVALID_ARGUMENT);
    }
    expect(unsupportedReason(cap('SINGLE_NODE_WRITER', 'mount', 'zfs'), 'c')).toMatch(/zfs/);
    expect(codeOf(() => validateCapabilities([]))).toBe(status.INVALID_ARGUMENT);
    expect(codeOf(() => validateCapabilities([cap('UNKNOWN')]))).toBe(status.INVALID_ARGUMENT);
    expect(codeOf(() => validateCapabilities([{ accessMode: null } as VolumeCapability]))).toBe(
      status.INVALID_ARGUMENT,
    );
    expect(
      codeOf(() =>
        validateCapabilities([{ accessMode: { mode: 'SINGLE_NODE_WRITER' } } as VolumeCapability]),
      ),
    ).toBe(status.INVALID_ARGUMENT);
    expect(
      codeOf(() =>
        validateCapabilities([
          cap('SINGLE_NODE_WRITER', 'mount', 'ext4'),
          cap('SINGLE_NODE_WRITER', 'mount', 'xfs'),
        ]),
      ),
    ).toBe(status.INVALID_ARGUMENT);
  });
});

describe('in-flight locks', () => {
  it('excludes, shares and releases', async () => {
    const l = new InFlight();
    const a = l.tryAcquire([{ key: 'v/1', mode: 'exclusive' }], 'a');
    expect('release' in a).toBe(true);
    expect(l.tryAcquire([{ key: 'v/1', mode: 'shared' }], 'b')).toMatchObject({
      busy: expect.stringContaining('v/1'),
    });
    // All or nothing: the free key is not taken when another one is busy.
    expect(
      'busy' in
        l.tryAcquire(
          [
            { key: 'v/2', mode: 'exclusive' },
            { key: 'v/1', mode: 'exclusive' },
          ],
          'c',
        ),
    ).toBe(true);
    expect(l.size).toBe(1);
    if ('release' in a) a.release();
    expect(l.size).toBe(0);
    const s1 = l.tryAcquire([{ key: 's/1', mode: 'shared' }], 'r1');
    const s2 = l.tryAcquire([{ key: 's/1', mode: 'shared' }], 'r2');
    expect('release' in s1 && 'release' in s2).toBe(true);
    expect('busy' in l.tryAcquire([{ key: 's/1', mode: 'exclusive' }], 'w')).toBe(true);
    if ('release' in s1) s1.release();
    if ('release' in s1) s1.release();
    expect('busy' in l.tryAcquire([{ key: 's/1', mode: 'exclusive' }], 'w')).toBe(true);
    if ('release' in s2) s2.release();
    expect(l.size).toBe(0);
    await expect(
      l.run([{ key: 'x', mode: 'exclusive' }], 'outer', () =>
        l.run([{ key: 'x', mode: 'shared' }], 'inner', async () => 1),
      ),
    ).rejects.toMatchObject({ code: status.ABORTED });
    expect(l.size).toBe(0);
    expect(await l.run([{ key: 'x', mode: 'exclusive' }], 'again', async () => 2)).toBe(2);
  });
});

describe('paging', () => {
  const items = ['pv-e', 'pv-a', 'pv-c', 'pv-b', 'pv-d'];
  const valid = (t: string) => t.startsWith('pv-');
  it('pages in id order with tokens that survive deletions', () => {
    const p1 = paginate(items, (x) => x, 2, '', valid);
    expect(p1).toEqual({ entries: ['pv-a', 'pv-b'], nextToken: 'pv-c' });
    const p2 = paginate(
      items.filter((x) => x !== 'pv-c'),
      (x) => x,
      2,
      p1.nextToken,
      valid,
    );
    expect(p2).toEqual({ entries: ['pv-d', 'pv-e'], nextToken: '' });
    expect(paginate(items, (x) => x, 0, 'pv-b', valid).entries).toEqual([
      'pv-b',
      'pv-c',
      'pv-d',
      'pv-e',
    ]);
    expect(paginate(items, (x) => x, 5, '', valid).nextToken).toBe('');
  });
  it('answers ABORTED for a token it could not have issued', () => {
    expect(codeOf(() => paginate(items, (x) => x, 2, 'garbage', valid))).toBe(status.ABORTED);
  });
});

describe('error mapping', () => {
  it('maps pool, ploop and system errors to the spec codes', () => {
    expect(statusOf(new PoolError('NOT_FOUND', 'x'))).toBe(status.NOT_FOUND);
    expect(statusOf(new PoolError('ALREADY_EXISTS', 'x'))).toBe(status.ALREADY_EXISTS);
    expect(statusOf(new PoolError('OUT_OF_RANGE', 'x'))).toBe(status.OUT_OF_RANGE);
    expect(statusOf(new PoolError('RESOURCE_EXHAUSTED', 'x'))).toBe(status.RESOURCE_EXHAUSTED);
    expect(statusOf(new PoolError('FAILED_PRECONDITION', 'x'))).toBe(status.FAILED_PRECONDITION);
    expect(statusOf(new PoolError('INVALID_ARGUMENT', 'x'))).toBe(status.INVALID_ARGUMENT);
    expect(statusOf(new PoolError('INTERNAL', 'x'))).toBe(status.INTERNAL);
    expect(statusOf(new PloopError('BUSY', 'x'))).toBe(status.ABORTED);
    expect(statusOf(new PloopError('CORRUPT', 'x'))).toBe(status.INTERNAL);
    expect(statusOf(new PloopError('NOT_FOUND', 'x'))).toBe(status.NOT_FOUND);
    const enospc = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    expect(statusOf(new PoolError('INTERNAL', 'write failed', { cause: enospc }))).toBe(
      status.RESOURCE_EXHAUSTED,
    );
    expect(statusOf(new TypeError('boom'))).toBe(status.INTERNAL);
    const e = toCsiError(new Error('first line\n    at stack frame'));
    expect(e.message).toBe('first line');
    expect(e.code).toBe(status.INTERNAL);
  });
});

describe('topology and names', () => {
  it('builds one segment per node and matches requirements', () => {
    const t = new NodeTopology('csi.ploop.dev', 'worker-1');
    expect(t.segment).toEqual({ segments: { 'csi.ploop.dev/node': 'worker-1' } });
    const here = { segments: { 'csi.ploop.dev/node': 'worker-1' } };
    const there = { segments: { 'csi.ploop.dev/node': 'worker-2' } };
    expect(t.satisfies(null)).toBe(true);
    expect(t.satisfies({ requisite: [there, here], preferred: [] })).toBe(true);
    expect(t.satisfies({ requisite: [there], preferred: [] })).toBe(false);
    expect(t.satisfies({ requisite: [], preferred: [there] })).toBe(true);
  });

  it('checks driver names and node ids', () => {
    expect(checkDriverName('csi.ploop.dev')).toBe('csi.ploop.dev');
    for (const bad of ['', 'Upper.Case', '-x', 'x-', 'a'.repeat(64), 'a_b']) {
      expect(() => checkDriverName(bad)).toThrow(CsiError);
    }
    expect(() => new NodeTopology('csi.ploop.dev', 'n'.repeat(64))).toThrow(/63/);
    expect(() => new NodeTopology('csi.ploop.dev', 'bad/node')).toThrow(CsiError);
  });

  it('parses metrics addresses', () => {
    expect(parseHostPort('127.0.0.1:9808')).toEqual({ host: '127.0.0.1', port: 9808 });
    expect(parseHostPort(':9808')).toEqual({ host: undefined, port: 9808 });
    expect(parseHostPort('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(() => parseHostPort('9808')).toThrow();
    expect(() => parseHostPort('host:99999')).toThrow();
  });
});

describe('log redaction', () => {
  it('hides secret values and mount flags, keeps the rest', () => {
    const r = redact({
      name: 'v',
      secrets: { user: 'bob', password: 'pw' },
      volumeCapabilities: [{ mount: { fsType: 'ext4', mountFlags: ['a', 'b'] } }],
      nested: { nodeStageSecrets: { k: 'v' } },
    });
    expect(r).toEqual({
      name: 'v',
      secrets: { user: '[REDACTED]', password: '[REDACTED]' },
      volumeCapabilities: [{ mount: { fsType: 'ext4', mountFlags: ['[REDACTED]', '[REDACTED]'] } }],
      nested: { nodeStageSecrets: { k: '[REDACTED]' } },
    });
  });
});
