export * from './gc.js';
export * from './references.js';
