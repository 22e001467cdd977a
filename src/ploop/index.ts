/** The ploop format library: one implementation used by the CLI, the pool and the tests. */
export * from './errors.js';
export * from './header.js';
export * from './io.js';
export * from './lock.js';
export * from './descriptor.js';
export * from './image.js';
export * from './chain.js';
export * from './check.js';
export * from './grow.js';
export * from './compact.js';
export * from './convert.js';
export * from './disk.js';
export * from './info.js';
export * from './copy.js';
