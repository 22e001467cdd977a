import { describe, expect, it } from 'vitest';
import {
  MAX_NAME_BYTES,
  PoolError,
  idForName,
  isWellFormedId,
  validateName,
} from '../../src/pool/index.js';

describe('pool ids', () => {
  it('derives a stable, well-formed id from a name', () => {
    const a = idForName('volume', 'pvc-1234');
    expect(a).toBe(idForName('volume', 'pvc-1234'));
    expect(a).toMatch(/^pv-[a-z2-7]{26}$/);
    expect(isWellFormedId('volume', a)).toBe(true);
    const s = idForName('snapshot', 'pvc-1234');
    expect(s).toMatch(/^snap-[a-z2-7]{26}$/);
    expect(isWellFormedId('snapshot', s)).toBe(true);
  });

  it('gives different names and different kinds different ids', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 2000; i++) ids.add(idForName('volume', `vol-${i}`));
    expect(ids.size).toBe(2000);
    expect(idForName('volume', 'x').slice(3)).not.toBe(idForName('snapshot', 'x').slice(5));
  });

  it('keeps hostile names out of ids', () => {
    for (const name of ['../../etc', '/etc/passwd', 'a\0b', '..', 'x'.repeat(MAX_NAME_BYTES)]) {
      const id = idForName('volume', name);
      expect(id).toMatch(/^pv-[a-z2-7]{26}$/);
    }
  });

  it('refuses empty and oversized names', () => {
    expect(() => validateName('', 'volume')).toThrow(PoolError);
    expect(() => idForName('volume', 'x'.repeat(MAX_NAME_BYTES + 1))).toThrow(/longer than/);
    try {
      idForName('snapshot', '');
    } catch (err) {
      expect((err as PoolError).code).toBe('INVALID_ARGUMENT');
    }
  });

  it('recognises only ids of its own shape', () => {
    for (const bad of [
      '',
      'pv-',
      '../../etc',
      'pv-../../../../etc/passwd',
      `pv-${'A'.repeat(26)}`,
      `pv-${'a'.repeat(27)}`,
      `pv-${'a'.repeat(25)}1`,
      'fake-vol-id-1234',
    ]) {
      expect(isWellFormedId('volume', bad)).toBe(false);
    }
    expect(isWellFormedId('snapshot', idForName('volume', 'a'))).toBe(false);
    expect(isWellFormedId('volume', idForName('snapshot', 'a'))).toBe(false);
  });
});
