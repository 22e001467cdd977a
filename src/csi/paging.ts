/**
 * Pagination of ListVolumes / ListSnapshots. Entries are ordered by ID and a token is the ID of
 * the first entry of the next page, so a page boundary survives entries being created or
 * deleted between calls (the next page starts at the first ID not below the token). A token
 * this driver cannot have issued is ABORTED, as the spec asks.
 */
import { CsiError, status } from './errors.js';

export interface Page<T> {
  entries: T[];
  nextToken: string;
}

export function paginate<T>(
  items: readonly T[],
  idOf: (item: T) => string,
  maxEntries: number,
  startingToken: string,
  isToken: (token: string) => boolean,
): Page<T> {
  if (startingToken && !isToken(startingToken)) {
    throw new CsiError(status.ABORTED, `starting_token "${startingToken}" is not valid`);
  }
  const sorted = [...items].sort((a, b) => (idOf(a) < idOf(b) ? -1 : idOf(a) > idOf(b) ? 1 : 0));
  const from = startingToken ? sorted.filter((x) => idOf(x) >= startingToken) : sorted;
  if (maxEntries <= 0 || from.length <= maxEntries) return { entries: from, nextToken: '' };
  return { entries: from.slice(0, maxEntries), nextToken: idOf(from[maxEntries]!) };
}
