/** Node operations on the host: file systems, mounts, devices, usage. */
export * from './errors.js';
export * from './exec.js';
export * from './device.js';
export * from './fs.js';
export * from './mount.js';
export * from './stats.js';
