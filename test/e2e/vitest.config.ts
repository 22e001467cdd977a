import { defineConfig } from 'vitest/config';

// The kind end-to-end tests (test/e2e/run.sh); never part of `npm test`.
export default defineConfig({
  test: {
    include: ['test/e2e/**/*.e2e.ts'],
    testTimeout: 600_000,
    hookTimeout: 600_000,
    // One cluster: the disruptive tests must not overlap.
    fileParallelism: false,
    maxWorkers: 1,
  },
});
