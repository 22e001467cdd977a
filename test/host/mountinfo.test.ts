/** /proc/self/mountinfo parsing, on fixtures and on real mounts at awkward paths. */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ensureDirectory,
  findMount,
  isMountPoint,
  mount,
  parseMountInfo,
  parseMountInfoLine,
  readMountInfo,
  removeMountPoint,
  unescapeMountField,
  unmount,
} from '../../src/host/index.js';
import { loopUnavailable, unmountBelow } from './loop.js';

describe('mountinfo parsing', () => {
  it('reads every field of a line, with and without optional fields', () => {
    const m = parseMountInfoLine(
      '36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue',
    );
    expect(m).toEqual({
      id: 36,
      parentId: 35,
      major: 98,
      minor: 0,
      root: '/mnt1',
      mountPoint: '/mnt/parent',
      options: ['rw', 'noatime'],
      optional: ['master:1', 'shared:7'],
      fsType: 'ext3',
      source: '/dev/root',
      superOptions: ['rw', 'errors=continue'],
    });
    const plain = parseMountInfoLine('21 26 0:20 / /proc rw,relatime - proc proc rw');
    expect(plain?.optional).toEqual([]);
    expect(plain?.mountPoint).toBe('/proc');
  });

  it('undoes the octal escapes of space, tab, newline and backslash', () => {
    expect(unescapeMountField('/a\\040b\\011c\\012d\\134e')).toBe('/a b\tc\nd\\e');
    // A backslash not followed by three octal digits is taken literally.
    expect(unescapeMountField('/x\\9y')).toBe('/x\\9y');
    // Escaped bytes that form UTF-8 are decoded as UTF-8.
    expect(unescapeMountField('/caf\\303\\251')).toBe('/café');
    const m = parseMountInfoLine(
      '40 26 0:50 / /var/lib/kubelet/pods/x/volumes/a\\040b\\012c rw - tmpfs my\\040src rw,size=1k',
    );
    expect(m?.mountPoint).toBe('/var/lib/kubelet/pods/x/volumes/a b\nc');
    expect(m?.source).toBe('my src');
  });

  it('skips malformed lines', () => {
    expect(parseMountInfoLine('garbage')).toBeNull();
    expect(parseMountInfoLine('1 2 x:y / /a rw - t s o')).toBeNull();
    expect(parseMountInfo('\n21 26 0:20 / /proc rw - proc proc rw\nbad line\n')).toHaveLength(1);
  });

  it('reads the table of this process', async () => {
    const table = await readMountInfo();
    expect(table.some((m) => m.mountPoint === '/')).toBe(true);
    expect(await isMountPoint('/')).toBe(true);
    expect(await findMount('/proc')).toMatchObject({ fsType: 'proc' });
  });
});

const skip = loopUnavailable();

describe.skipIf(skip !== null)(
  `mounts at awkward paths${skip ? ` (skipped: ${skip})` : ''}`,
  () => {
    let dir = '';
    beforeAll(async () => {
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ploop-csi-mi-'));
    });
    afterAll(async () => {
      unmountBelow(dir);
      await fsp.rm(dir, { recursive: true, force: true });
    });

    const names = [
      'with space',
      'with\ttab',
      'with\nnewline',
      'back\\slash',
      'trailing\\',
      'octal\\040lookalike',
      'ünïcødé and space',
      ' leading space',
    ];

    for (const name of names) {
      it(`finds, unmounts and removes ${JSON.stringify(name)}`, async () => {
        const p = path.join(dir, name);
        await ensureDirectory(p);
        await ensureDirectory(p); // an existing directory is fine
        expect(await isMountPoint(p)).toBe(false);
        await mount('/dev/null', p, { fsType: 'tmpfs', options: ['size=1m', 'mode=0755'] });
        const m = await findMount(p);
        expect(m?.mountPoint).toBe(p);
        expect(m?.fsType).toBe('tmpfs');
        await fsp.writeFile(path.join(p, 'f'), 'x');
        await expect(removeMountPoint(p)).rejects.toMatchObject({ code: 'BUSY' });
        expect(await unmount(p)).toBe(true);
        expect(await unmount(p)).toBe(false);
        expect(await isMountPoint(p)).toBe(false);
        expect(await removeMountPoint(p)).toBe(true);
        expect(await removeMountPoint(p)).toBe(false);
      });
    }
  },
);
