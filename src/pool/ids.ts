/**
 * Volume and snapshot IDs. An ID is derived from the CSI name (a hash), so a repeated
 * CreateVolume with the same name finds the same directory, and no user-supplied text ever
 * becomes a path component.
 */
import { createHash } from 'node:crypto';
import { PoolError } from './errors.js';

export type IdKind = 'volume' | 'snapshot';

const PREFIX: Record<IdKind, string> = { volume: 'pv-', snapshot: 'snap-' };
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
/** CSI names are at most 128 bytes in practice; refuse anything absurd early. */
export const MAX_NAME_BYTES = 1024;

function base32(bytes: Uint8Array, chars: number): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5 && out.length < chars) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  return out;
}

export function validateName(name: string, what: string): void {
  if (typeof name !== 'string' || name.length === 0) {
    throw new PoolError('INVALID_ARGUMENT', `${what} name is required`);
  }
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) {
    throw new PoolError('INVALID_ARGUMENT', `${what} name is longer than ${MAX_NAME_BYTES} bytes`);
  }
}

export function idForName(kind: IdKind, name: string): string {
  validateName(name, kind);
  const digest = createHash('sha256').update(`${kind}\0${name}`, 'utf8').digest();
  return PREFIX[kind] + base32(digest, 26);
}

const ID_RE: Record<IdKind, RegExp> = {
  volume: /^pv-[a-z2-7]{26}$/,
  snapshot: /^snap-[a-z2-7]{26}$/,
};

/** True when `id` has the shape this pool issues (anything else cannot exist here). */
export function isWellFormedId(kind: IdKind, id: string): boolean {
  return typeof id === 'string' && ID_RE[kind].test(id);
}
