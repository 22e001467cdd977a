/** The driver's logger: JSON lines on stdout (pino), one child logger per request (rpc.ts). */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(s: string): s is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(s);
}

export function createLogger(level: LogLevel = 'info', destination?: DestinationStream): Logger {
  const opts = {
    level,
    base: { service: 'ploop-csi' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return destination ? pino(opts, destination) : pino(opts);
}
