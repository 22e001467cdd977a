/** The block layer: blockd (the daemon owning ublk devices), its API and client, the engine. */
export * from './errors.js';
export * from './client.js';
export type { DeviceRecord } from './table.js';
