/** A client of blockd's control API (used by the CLI and by the CSI node service). */
import * as http from 'node:http';
import { API_VERSION, codeForStatus } from './api.js';
import { BlockdError } from './errors.js';
import type { DeviceRecord } from './table.js';

export interface DeviceListEntry extends DeviceRecord {
  state: string;
  stats: Record<string, unknown> | null;
}

export class BlockdClient {
  constructor(
    readonly socketPath: string,
    readonly timeoutMs = 120_000,
  ) {}

  private call<T>(op: string, body: Record<string, unknown> = {}): Promise<T> {
    const payload = JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socketPath,
          path: `/${API_VERSION}/${op}`,
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(payload),
          },
          timeout: this.timeoutMs,
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => {
            let parsed: unknown;
            try {
              parsed = JSON.parse(text);
            } catch {
              reject(new BlockdError('INTERNAL', `blockd answered ${res.statusCode} with no JSON`));
              return;
            }
            if (res.statusCode === 200) resolve(parsed as T);
            else {
              const e = parsed as { code?: string; message?: string };
              reject(
                new BlockdError(
                  codeForStatus(res.statusCode ?? 500),
                  e.message ?? `blockd error ${res.statusCode}`,
                ),
              );
            }
          });
        },
      );
      req.on('timeout', () =>
        req.destroy(new Error(`blockd did not answer within ${this.timeoutMs} ms`)),
      );
      req.on('error', (err) =>
        reject(
          new BlockdError(
            'UNAVAILABLE',
            `blockd at ${this.socketPath} is not reachable: ${err.message}`,
          ),
        ),
      );
      req.end(payload);
    });
  }

  probe(): Promise<{ available: boolean; reason?: string; kernel: string; features: string }> {
    return this.call('probe');
  }
  attach(path: string): Promise<DeviceRecord> {
    return this.call('attach', { path });
  }
  async detach(device: string): Promise<void> {
    await this.call('detach', { device });
  }
  list(): Promise<DeviceListEntry[]> {
    return this.call('list');
  }
  stats(device: string): Promise<Record<string, unknown>> {
    return this.call('stats', { device });
  }
  async snapshot(device: string): Promise<string> {
    return (await this.call<{ guid: string }>('snapshot', { device })).guid;
  }
  async grow(device: string, sizeBytes: number): Promise<number> {
    return (await this.call<{ sizeBytes: number }>('grow', { device, sizeBytes })).sizeBytes;
  }
  async merge(device: string, id: string): Promise<void> {
    await this.call('merge', { device, id });
  }
}
