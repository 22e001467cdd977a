/** Volumes and snapshots of a node pool, over the ploop library. */
export * from './errors.js';
export * from './ids.js';
export * from './pool.js';
