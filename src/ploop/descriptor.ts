/**
 * DiskDescriptor.xml (ploop-format.md §2): the chain of deltas and the snapshot tree. Written the
 * way ploop 1.15 accepts it (geometry present, the constant top GUID, relative paths) and stored
 * atomically.
 */
import { randomUUID } from 'node:crypto';
import * as path from 'node:path';
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { CorruptImageError, InvalidArgumentError } from './errors.js';
import { MAX_CLUSTER, SECTOR, chs } from './header.js';
import { FileSystem, writeFileAtomic } from './io.js';

export const DESCRIPTOR_NAME = 'DiskDescriptor.xml';
/** The top delta always carries this GUID (ploop's TOPDELTA_UUID). */
export const TOP_GUID = '{5fbaabe3-6958-40ff-92a7-860e329aab41}';
export const NONE_GUID = '{00000000-0000-0000-0000-000000000000}';
/** ploop's own limit: 126 snapshots + base + top. */
export const MAX_CHAIN = 128;

export interface DescriptorImage {
  guid: string;
  type: 'Compressed' | 'Plain';
  /** As written in the file: relative to the descriptor's directory, or absolute. */
  file: string;
}

export interface DescriptorSnapshot {
  guid: string;
  parent: string;
  /** Marked for deletion: merged into its only child as soon as possible. */
  temporary: boolean;
}

export interface Descriptor {
  sizeSectors: number;
  clusterSectors: number;
  preallocated: boolean;
  images: DescriptorImage[];
  snapshots: DescriptorSnapshot[];
  topGuid: string;
}

const GUID_RE = /^\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$/i;

export function isGuid(s: string): boolean {
  return GUID_RE.test(s);
}

export function newGuid(): string {
  return `{${randomUUID()}}`;
}

export function isDescriptorPath(p: string): boolean {
  return path.basename(p) === DESCRIPTOR_NAME;
}

type XmlNode = Record<string, unknown>;

function child(node: unknown, name: string, where: string, file: string): XmlNode {
  const v = (node as XmlNode | undefined)?.[name];
  if (v === undefined || v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new CorruptImageError(file, `descriptor lacks a single <${name}> in ${where}`);
  }
  return v as XmlNode;
}

function text(node: XmlNode, name: string, file: string): string {
  const v = node[name];
  if (typeof v === 'string' || typeof v === 'number') return String(v).trim();
  throw new CorruptImageError(file, `descriptor lacks <${name}>`);
}

function int(node: XmlNode, name: string, file: string): number {
  const t = text(node, name, file);
  if (!/^\d+$/.test(t) || !Number.isSafeInteger(Number(t))) {
    throw new CorruptImageError(file, `descriptor <${name}> is not a number: "${t.slice(0, 40)}"`);
  }
  return Number(t);
}

function list(v: unknown): XmlNode[] {
  if (v === undefined || v === null || v === '') return [];
  return (Array.isArray(v) ? v : [v]).filter(
    (x) => typeof x === 'object' && x !== null,
  ) as XmlNode[];
}

const parser = new XMLParser({
  ignoreAttributes: true,
  parseTagValue: false,
  trimValues: true,
  processEntities: true,
  ignoreDeclaration: true,
  isArray: (name) => ['Image', 'Shot', 'Storage'].includes(name),
});

/** Parses and validates a descriptor; `file` names it in errors. */
export function parseDescriptor(xml: string, file: string): Descriptor {
  let doc: XmlNode;
  try {
    doc = parser.parse(xml, true) as XmlNode;
  } catch (err) {
    throw new CorruptImageError(file, `descriptor is not valid XML: ${(err as Error).message}`);
  }
  const rootName = Object.keys(doc).find((k) => !k.startsWith('?') && !k.startsWith('#'));
  if (!rootName) throw new CorruptImageError(file, 'descriptor has no root element');
  const root = child(doc, rootName, 'the document', file);
  const params = child(root, 'Disk_Parameters', rootName, file);
  const storageData = child(root, 'StorageData', rootName, file);
  const storages = list(storageData['Storage']);
  if (storages.length !== 1) {
    throw new CorruptImageError(
      file,
      `descriptor must have exactly one <Storage>, has ${storages.length}`,
    );
  }
  const storage = storages[0]!;
  const snaps = child(root, 'Snapshots', rootName, file);
  const images: DescriptorImage[] = list(storage['Image']).map((im) => {
    const type = text(im, 'Type', file);
    if (type !== 'Compressed' && type !== 'Plain') {
      throw new CorruptImageError(file, `unknown image type "${type.slice(0, 40)}"`);
    }
    return { guid: text(im, 'GUID', file).toLowerCase(), type, file: text(im, 'File', file) };
  });
  const snapshots: DescriptorSnapshot[] = list(snaps['Shot']).map((s) => ({
    guid: text(s, 'GUID', file).toLowerCase(),
    parent: text(s, 'ParentGUID', file).toLowerCase(),
    temporary: 'Temporary' in s,
  }));
  const d: Descriptor = {
    sizeSectors: int(params, 'Disk_size', file),
    clusterSectors: int(storage, 'Blocksize', file),
    preallocated:
      storage['Preallocated'] !== undefined && text(storage, 'Preallocated', file) === '1',
    images,
    snapshots,
    topGuid: text(snaps, 'TopGUID', file).toLowerCase(),
  };
  validateDescriptor(d, file);
  return d;
}

/** Structural rules: GUIDs, one Shot per Image, a tree rooted at NONE, the top present. */
export function validateDescriptor(d: Descriptor, file: string): void {
  const bad = (m: string) => new CorruptImageError(file, `descriptor: ${m}`);
  if (d.images.length === 0) throw bad('no images');
  if (d.images.length > MAX_CHAIN) throw bad(`more than ${MAX_CHAIN} images`);
  const guids = new Set<string>();
  const files = new Set<string>();
  for (const im of d.images) {
    if (!isGuid(im.guid)) throw bad(`invalid GUID "${im.guid.slice(0, 40)}"`);
    if (guids.has(im.guid)) throw bad(`duplicate image GUID ${im.guid}`);
    guids.add(im.guid);
    if (im.file.length === 0 || im.file.includes('\0')) throw bad('empty image file name');
    // A relative name must stay inside the descriptor's directory (absolute ones are checked
    // against it by resolveImagePath).
    const norm = path.normalize(im.file);
    if (!path.isAbsolute(norm) && (norm === '.' || norm === '..' || norm.startsWith('../'))) {
      throw bad(`image file "${im.file.slice(0, 80)}" lies outside the descriptor's directory`);
    }
    // Compared as resolved paths: "root.hds" and "/dir/root.hds" are one file.
    const abs = path.resolve(path.dirname(path.resolve(file)), norm);
    if (files.has(abs)) throw bad(`two images use the same file ${im.file.slice(0, 80)}`);
    files.add(abs);
  }
  if (d.snapshots.length !== d.images.length) throw bad('images and snapshots differ');
  const shots = new Set<string>();
  for (const s of d.snapshots) {
    if (!guids.has(s.guid)) throw bad(`snapshot ${s.guid.slice(0, 40)} has no image`);
    if (shots.has(s.guid)) throw bad(`duplicate snapshot GUID ${s.guid}`);
    shots.add(s.guid);
    if (s.parent !== NONE_GUID && !guids.has(s.parent))
      throw bad(`unknown parent ${s.parent.slice(0, 40)}`);
  }
  if (!guids.has(d.topGuid)) throw bad('TopGUID names no image');
  // Following parents from every snapshot must reach the root without a cycle (a tree).
  for (const s of d.snapshots) chainGuids(d, file, s.guid);
  if (
    d.clusterSectors <= 0 ||
    (d.clusterSectors & (d.clusterSectors - 1)) !== 0 ||
    d.clusterSectors > MAX_CLUSTER / SECTOR
  ) {
    throw bad(`invalid Blocksize ${d.clusterSectors}`);
  }
}

/** GUIDs from the base to `top` (default: the descriptor's top). */
export function chainGuids(d: Descriptor, file: string, top = d.topGuid): string[] {
  const byGuid = new Map(d.snapshots.map((s) => [s.guid, s]));
  const out: string[] = [];
  let g = top;
  while (g !== NONE_GUID) {
    if (out.includes(g) || out.length > MAX_CHAIN) {
      throw new CorruptImageError(file, 'descriptor: snapshot parents form a cycle');
    }
    out.push(g);
    const s = byGuid.get(g);
    if (!s) throw new CorruptImageError(file, `descriptor: snapshot ${g} is missing`);
    g = s.parent;
  }
  return out.reverse();
}

export function imageOf(d: Descriptor, guid: string): DescriptorImage {
  const im = d.images.find((i) => i.guid === guid);
  if (!im) throw new InvalidArgumentError(`no image with GUID ${guid}`);
  return im;
}

export function childrenOf(d: Descriptor, guid: string): DescriptorSnapshot[] {
  return d.snapshots.filter((s) => s.parent === guid);
}

/**
 * Absolute path of an image file named in the descriptor at `ddPath`. The file must lie inside
 * the descriptor's directory: a descriptor never makes an operation touch anything else.
 */
export function resolveImagePath(ddPath: string, file: string): string {
  const dd = path.resolve(ddPath);
  const dir = path.dirname(dd);
  const abs = path.resolve(dir, file);
  const rel = path.relative(dir, abs);
  if (rel === '' || rel === '..' || rel.startsWith('../') || path.isAbsolute(rel) || abs === dd) {
    throw new CorruptImageError(
      ddPath,
      `image file "${file.slice(0, 80)}" lies outside the descriptor's directory`,
    );
  }
  return abs;
}

export function serializeDescriptor(d: Descriptor): string {
  const g = chs(d.sizeSectors);
  const builder = new XMLBuilder({ format: true, indentBy: '  ', suppressEmptyNode: true });
  const body = builder.build({
    Parallels_disk_image: {
      Disk_Parameters: {
        Disk_size: d.sizeSectors,
        Cylinders: g.cylinders,
        Heads: g.heads,
        // As ploop writes it: size / (cylinders × heads), not the cluster.
        Sectors: Math.floor(d.sizeSectors / (g.cylinders * g.heads)),
        Padding: 0,
      },
      StorageData: {
        Storage: {
          Start: 0,
          End: d.sizeSectors,
          Blocksize: d.clusterSectors,
          ...(d.preallocated ? { Preallocated: 1 } : {}),
          Image: d.images.map((im) => ({ GUID: im.guid, Type: im.type, File: im.file })),
        },
      },
      Snapshots: {
        TopGUID: d.topGuid,
        Shot: d.snapshots.map((s) => ({
          GUID: s.guid,
          ParentGUID: s.parent,
          ...(s.temporary ? { Temporary: '' } : {}),
        })),
      },
    },
  }) as string;
  return `<?xml version="1.0"?>\n${body.replace(/<Temporary><\/Temporary>/g, '<Temporary/>')}`;
}

export async function readDescriptor(fs: FileSystem, ddPath: string): Promise<Descriptor> {
  return parseDescriptor(await fs.readText(ddPath), ddPath);
}

export async function writeDescriptor(
  fs: FileSystem,
  ddPath: string,
  d: Descriptor,
): Promise<void> {
  validateDescriptor(d, ddPath);
  await writeFileAtomic(fs, ddPath, serializeDescriptor(d));
}

export function lockPath(ddPath: string): string {
  return `${ddPath}.lck`;
}
