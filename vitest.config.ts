import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Interop and crash tests spawn real tools and touch real files; two cores, two workers.
    maxWorkers: 2,
  },
});
