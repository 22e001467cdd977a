import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The kind end-to-end tests need a cluster: test/e2e/run.sh runs them with their own config.
    exclude: [...configDefaults.exclude, 'test/e2e/**'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Interop and crash tests spawn real tools and touch real files; two cores, two workers.
    maxWorkers: 2,
  },
});
