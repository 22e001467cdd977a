/** Running host tools: missing tools, time limits, failures and accepted exit codes. */
import { describe, expect, it } from 'vitest';
import { HostError, run, tail } from '../../src/host/index.js';

describe('run', () => {
  it('returns the output of a tool that succeeds, in the C locale', async () => {
    const r = await run('sh', ['-c', 'echo "$LC_ALL"; echo err >&2']);
    expect(r).toEqual({ code: 0, stdout: 'C\n', stderr: 'err\n' });
  });

  it('passes arguments as they are, without a shell', async () => {
    const r = await run('printf', ['%s|', 'a b', '$(x)', ';rm -rf /', '*']);
    expect(r.stdout).toBe('a b|$(x)|;rm -rf /|*|');
  });

  it('gives stdin as /dev/null: a tool asking a question gets end-of-file', async () => {
    const r = await run('sh', ['-c', 'if read x; then echo got; else echo eof; fi']);
    expect(r.stdout).toBe('eof\n');
  });

  it('TOOL_MISSING for a tool that is not installed', async () => {
    await expect(run('no-such-tool-ploop-csi', [])).rejects.toMatchObject({
      name: 'HostError',
      code: 'TOOL_MISSING',
    });
  });

  it('TIMEOUT kills a tool that takes too long', async () => {
    const t = Date.now();
    await expect(run('sleep', ['30'], { timeoutMs: 200 })).rejects.toMatchObject({
      code: 'TIMEOUT',
    });
    expect(Date.now() - t).toBeLessThan(10_000);
  });

  it('FAILED with the tail of the output; accepted codes are not failures', async () => {
    const err = (await run('sh', ['-c', 'echo one >&2; echo two >&2; exit 3']).catch(
      (e: unknown) => e,
    )) as HostError;
    expect(err).toBeInstanceOf(HostError);
    expect(err.code).toBe('FAILED');
    expect(err.message).toMatch(/exited with 3: one; two$/);
    expect((await run('sh', ['-c', 'exit 2'], { okCodes: [0, 2] })).code).toBe(2);
  });

  it('tail keeps the last non-empty lines', () => {
    expect(tail('a\n\nb\nc\nd\n', 2)).toBe('c; d');
  });
});
