/**
 * The block layer's I/O scheduler of a ublk disk. The kernel gives a single-queue ublk disk
 * mq-deadline, which sends requests through kblockd and wakes the submitter once per request;
 * the backing file's own device is scheduled already, so a ploop disk is better off without
 * one, as loop and NVMe disks are by default. Set once at attach: the setting lives with the
 * disk, which outlives blockd restarts.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/** What blockd selects unless told otherwise. */
export const DEFAULT_SCHEDULER = 'none';
/** `keep` leaves the kernel's choice alone. */
export const KEEP_SCHEDULER = 'keep';

const NAME = /^[a-z0-9_-]{1,32}$/;

export function validSchedulerName(name: string): boolean {
  return NAME.test(name);
}

function schedulerFile(blockPath: string, sysfs: string): string {
  return path.join(sysfs, path.basename(blockPath), 'queue', 'scheduler');
}

/** Selects `name` for the disk at `blockPath` (e.g. /dev/ublkb0); returns the file written. */
export async function setIoScheduler(
  blockPath: string,
  name: string,
  sysfs = '/sys/block',
): Promise<string> {
  if (!validSchedulerName(name)) throw new RangeError(`invalid I/O scheduler name "${name}"`);
  const file = schedulerFile(blockPath, sysfs);
  await fsp.writeFile(file, name);
  return file;
}

/** The scheduler in effect (the bracketed entry of the sysfs file), or null. */
export async function ioScheduler(blockPath: string, sysfs = '/sys/block'): Promise<string | null> {
  const text = await fsp.readFile(schedulerFile(blockPath, sysfs), 'utf8');
  return /\[([^\]]+)\]/.exec(text)?.[1] ?? null;
}
