import { describe, expect, it } from 'vitest';
import {
  CIF_EMPTY,
  HEADER_SIZE,
  Header,
  IN_USE,
  InvalidArgumentError,
  MAX_CLUSTER,
  MIN_CLUSTER,
  SIG_V1,
  SIG_V2,
  batClusters,
  checkClusterSize,
  chs,
  decodeHeader,
  effectiveDataOff,
  encodeHeader,
  formatSize,
  headerProblems,
  newHeader,
  parseSize,
  virtualSize,
} from '../../src/ploop/index.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const TiB = 2 ** 40;

/** `ploop init -s 1G -t none` header (ploop-format.md §6 hexdump). */
const PLOOP_1G_V1 =
  '576974686f7574467265655370616365' +
  '02000000100000002008000000080000' +
  '00040000000020000000000000000000' +
  '00080000010000000000000000000000';

function hexToBuf(hex: string): Buffer {
  return Buffer.from(hex, 'hex');
}

describe('newHeader golden values (R1)', () => {
  it('1 GiB, 1 MiB clusters, v2', () => {
    const h = newHeader(GiB, MiB, 2);
    expect(h).toEqual({
      version: 2,
      type: 2,
      heads: 16,
      cylinders: 2080,
      clusterSectors: 2048,
      batEntries: 1024,
      sizeSectors: 2097152,
      inUse: 0,
      dataOff: 2048,
      flags: CIF_EMPTY,
      extOff: 0,
    });
  });

  it('1 GiB v1 encodes byte for byte like ploop init', () => {
    const b = encodeHeader(newHeader(GiB, MiB, 1));
    expect(b.length).toBe(HEADER_SIZE);
    expect(b.toString('hex')).toBe(PLOOP_1G_V1);
  });

  it('v2 differs from v1 only in the signature', () => {
    const v1 = encodeHeader(newHeader(GiB, MiB, 1));
    const v2 = encodeHeader(newHeader(GiB, MiB, 2));
    expect(v2.toString('latin1', 0, 16)).toBe(SIG_V2);
    expect(v1.toString('latin1', 0, 16)).toBe(SIG_V1);
    expect(v2.subarray(16)).toEqual(v1.subarray(16));
  });

  it('decodes the ploop 1.15 hexdump', () => {
    const h = decodeHeader(hexToBuf(PLOOP_1G_V1))!;
    expect(h.version).toBe(1);
    expect(h.batEntries).toBe(1024);
    expect(h.sizeSectors).toBe(2097152);
    expect(h.dataOff).toBe(2048);
    expect(h.clusterSectors).toBe(2048);
    expect(h.flags).toBe(CIF_EMPTY);
    expect(headerProblems(h, MiB)).toEqual([]);
  });

  it('decodes the qemu-img create header (v2, CHS as QEMU writes it)', () => {
    const q =
      '576974686f754672655370616345787402000000100000000010000000080000' +
      '0004000000002000000000000000000000080000000000000000000000000000';
    const h = decodeHeader(hexToBuf(q))!;
    expect(h.version).toBe(2);
    expect(h.cylinders).toBe(4096);
    expect(h.flags).toBe(0);
    expect(headerProblems(h, MiB)).toEqual([]);
  });

  it('data_off is the exact number of BAT clusters', () => {
    // 64 KiB clusters: the first cluster holds (65536 - 64) / 4 = 16368 entries.
    expect(newHeader(16368 * 64 * 1024, 64 * 1024, 2).dataOff).toBe(128);
    expect(newHeader(16369 * 64 * 1024, 64 * 1024, 2).dataOff).toBe(256);
    // 1 MiB clusters: 262128 entries fit the first cluster.
    expect(batClusters(262128, MiB)).toBe(1);
    expect(batClusters(262129, MiB)).toBe(2);
    const h = newHeader(300 * GiB, MiB, 2);
    expect(h.batEntries).toBe(307200);
    expect(h.sizeSectors).toBe(629145600);
    expect(h.dataOff).toBe(4096);
    expect(h.cylinders).toBe(1228800);
  });
});

describe('size rounding', () => {
  it('rounds the virtual size up to whole clusters', () => {
    const h = newHeader(MiB + 1, MiB, 2);
    expect(h.batEntries).toBe(2);
    expect(h.sizeSectors).toBe(4096);
    expect(virtualSize(h)).toBe(2 * MiB);
    const small = newHeader(1, 64 * 1024, 2);
    expect(small.batEntries).toBe(1);
    expect(small.sizeSectors).toBe(128);
    const exact = newHeader(3 * 64 * 1024, 64 * 1024, 1);
    expect(exact.batEntries).toBe(3);
    expect(exact.sizeSectors).toBe(384);
  });

  it('keeps m_Size equal to SizeInSectors / cluster', () => {
    for (const size of [1, 4095, 4096, MiB - 1, 5 * MiB + 3, 7 * GiB + 12345]) {
      for (const cluster of [MIN_CLUSTER, MiB, MAX_CLUSTER]) {
        const h = newHeader(size, cluster, 2);
        expect(h.sizeSectors).toBe(h.batEntries * h.clusterSectors);
        expect(virtualSize(h)).toBeGreaterThanOrEqual(size);
        expect(virtualSize(h) - size).toBeLessThan(cluster);
      }
    }
  });

  it('rejects non-positive and non-integer sizes', () => {
    expect(() => newHeader(0, MiB, 2)).toThrow(InvalidArgumentError);
    expect(() => newHeader(-1, MiB, 2)).toThrow(InvalidArgumentError);
    expect(() => newHeader(1.5, MiB, 2)).toThrow(InvalidArgumentError);
    expect(() => newHeader(Number.MAX_SAFE_INTEGER + 1, MiB, 2)).toThrow(InvalidArgumentError);
  });
});

describe('cluster size limits', () => {
  it('accepts powers of two from 64 KiB to 64 MiB', () => {
    for (let c = MIN_CLUSTER; c <= MAX_CLUSTER; c *= 2) {
      expect(() => checkClusterSize(c)).not.toThrow();
      expect(newHeader(GiB, c, 2).clusterSectors).toBe(c / 512);
    }
  });

  it.each([0, 512, 32 * 1024, 96 * 1024, MiB + 512, 128 * MiB, -MiB, 1.5 * MiB])(
    'rejects %d',
    (c) => {
      expect(() => checkClusterSize(c)).toThrow(InvalidArgumentError);
      expect(() => newHeader(GiB, c, 2)).toThrow(InvalidArgumentError);
    },
  );
});

describe('version 1 limits', () => {
  it('refuses 2 TiB and more for v1', () => {
    expect(() => newHeader(2 * TiB, MiB, 1)).toThrow(InvalidArgumentError);
    expect(() => newHeader(3 * TiB, MiB, 1)).toThrow(/2 TiB/);
    const h = newHeader(2 * TiB - MiB, MiB, 1);
    expect(h.sizeSectors).toBe(0xffffffff - 2047);
  });

  it('allows the same sizes for v2', () => {
    const h = newHeader(3 * TiB, MiB, 2);
    expect(h.sizeSectors).toBe((3 * TiB) / 512);
    const b = encodeHeader(h);
    expect(decodeHeader(b)!.sizeSectors).toBe((3 * TiB) / 512);
  });

  it('ignores the high size word of a v1 header (QEMU masks it)', () => {
    const b = encodeHeader(newHeader(GiB, MiB, 1));
    b.writeUInt32LE(7, 0x28);
    expect(decodeHeader(b)!.sizeSectors).toBe(2097152);
    const v2 = encodeHeader(newHeader(GiB, MiB, 2));
    v2.writeUInt32LE(7, 0x28);
    expect(decodeHeader(v2)!.sizeSectors).toBe(7 * 2 ** 32 + 2097152);
  });
});

describe('CHS (informational)', () => {
  it('follows ploop', () => {
    expect(chs(2097152)).toEqual({ cylinders: 2080, heads: 16, sectors: 63 });
    // 64 MiB: below the 63-sector window, first divisor 32, then 16 heads.
    expect(chs(131072)).toEqual({ cylinders: 256, heads: 16, sectors: 32 });
    // 8 GiB is not below 16777216 sectors.
    expect(chs(16777216)).toEqual({ cylinders: 32768, heads: 16, sectors: 32 });
    expect(chs(63 * 16 * 5)).toEqual({ cylinders: 5, heads: 16, sectors: 63 });
    expect(chs(7)).toEqual({ cylinders: 7, heads: 1, sectors: 1 });
    expect(chs(189)).toEqual({ cylinders: 189, heads: 1, sectors: 1 });
    // A sector divisor without a head divisor falls back to 1/1.
    expect(chs(24)).toEqual({ cylinders: 24, heads: 1, sectors: 1 });
    expect(chs(64)).toEqual({ cylinders: 1, heads: 2, sectors: 32 });
  });

  it('never influences validation', () => {
    const h = { ...newHeader(GiB, MiB, 2), heads: 0, cylinders: 0xffffffff };
    expect(headerProblems(h, MiB)).toEqual([]);
  });
});

describe('encode / decode', () => {
  it('round-trips every field', () => {
    const h: Header = {
      version: 2,
      type: 2,
      heads: 8,
      cylinders: 123456,
      clusterSectors: 128,
      batEntries: 99,
      sizeSectors: 2 ** 40 + 5,
      inUse: IN_USE,
      dataOff: 128,
      flags: 3,
      extOff: 2 ** 33 + 128,
    };
    expect(decodeHeader(encodeHeader(h))).toEqual(h);
  });

  it('returns null for foreign or short data', () => {
    expect(decodeHeader(Buffer.alloc(64))).toBeNull();
    expect(decodeHeader(Buffer.from(SIG_V2))).toBeNull();
    const b = encodeHeader(newHeader(GiB, MiB, 2));
    b[3] ^= 0x20;
    expect(decodeHeader(b)).toBeNull();
  });

  it('maps u64 fields beyond the safe integer range to Infinity', () => {
    const b = encodeHeader(newHeader(GiB, MiB, 2));
    b.writeBigUInt64LE(0xffffffffffffffffn, 0x24);
    b.writeBigUInt64LE(2n ** 60n, 0x38);
    const h = decodeHeader(b)!;
    expect(h.sizeSectors).toBe(Infinity);
    expect(h.extOff).toBe(Infinity);
    expect(headerProblems(h, MiB).join()).toMatch(/virtual size out of range/);
    expect(headerProblems(h, MiB).join()).toMatch(/format extension offset out of range/);
  });
});

describe('headerProblems', () => {
  const good = () => newHeader(64 * MiB, MiB, 2);

  it('accepts a fresh header', () => {
    expect(headerProblems(good(), MiB)).toEqual([]);
    expect(headerProblems(newHeader(64 * MiB, MiB, 1), MiB)).toEqual([]);
  });

  it.each<[string, Partial<Header>, RegExp]>([
    ['type', { type: 1 }, /image type/],
    ['cluster not a power of two', { clusterSectors: 2047 }, /cluster size/],
    ['cluster zero', { clusterSectors: 0 }, /cluster size/],
    ['cluster above 64 MiB', { clusterSectors: 2 ** 18 }, /cluster size/],
    ['BAT too small', { batEntries: 63 }, /does not cover/],
    ['data offset inside BAT', { batEntries: 1024 * 1024 }, /inside the BAT|shorter/],
    ['v2 data offset zero', { dataOff: 0 }, /non-zero cluster multiple/],
    ['v2 data offset unaligned', { dataOff: 2049 }, /non-zero cluster multiple/],
    ['extension out of range', { extOff: Infinity }, /extension/],
  ])('reports %s', (_name, fields, re) => {
    expect(headerProblems({ ...good(), ...fields }, 64 * MiB).join('; ')).toMatch(re);
  });

  it('bounds the BAT by the file size', () => {
    const h = { ...good(), batEntries: 1_000_000, sizeSectors: 2048 };
    expect(headerProblems(h, MiB).join()).toMatch(/shorter than its BAT/);
  });

  it('lets v1 use data_off 0 (right after the BAT, sector aligned)', () => {
    const h = { ...newHeader(64 * MiB, MiB, 1), dataOff: 0 };
    expect(headerProblems(h, MiB)).toEqual([]);
    expect(effectiveDataOff(h)).toBe(Math.ceil((64 + 4 * 64) / 512));
  });
});

describe('parseSize / formatSize', () => {
  it.each<[string, number]>([
    ['512', 512],
    ['64K', 65536],
    ['64k', 65536],
    ['1M', MiB],
    ['10G', 10 * GiB],
    ['2T', 2 * TiB],
    ['1MiB', MiB],
    ['1MB', MiB],
    [' 3 G ', 3 * GiB],
  ])('parses %s', (s, n) => {
    expect(parseSize(s)).toBe(n);
  });

  it.each(['', 'abc', '1.5G', '-1G', '1X', '99999999999P'])('rejects %s', (s) => {
    expect(() => parseSize(s)).toThrow(InvalidArgumentError);
  });

  it('formats exact binary units', () => {
    expect(formatSize(GiB)).toBe('1 GiB');
    expect(formatSize(MiB + 1)).toBe(`${MiB + 1} B`);
    expect(formatSize(3 * TiB)).toBe('3 TiB');
    expect(formatSize(1536 * 1024)).toBe('1536 KiB');
  });
});
