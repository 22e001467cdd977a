/** `ploop-csi image …`: offline operations on ploop images and disk directories. */
import * as path from 'node:path';
import { Command } from 'commander';
import {
  CheckReport,
  Chain,
  InvalidArgumentError,
  PloopImage,
  assertClean,
  checkImage,
  compactImage,
  createDisk,
  deleteSnapshot,
  descriptorPathFor,
  exportRaw,
  formatSize,
  growDisk,
  growImage,
  importRaw,
  info,
  isDescriptorPath,
  listSnapshots,
  mergeTop,
  parseSize,
  readDescriptor,
  resolveImagePath,
  resolveTarget,
  snapshot,
  withLock,
  nodeFileSystem,
  chainGuids,
  imageOf,
  ImageFormat,
  FormatVersion,
  openDelta,
} from '../ploop/index.js';
import { OutputOptions, print, progressBar } from './output.js';

type JsonOpt = OutputOptions;

function parseFormat(v: string): ImageFormat {
  if (v === 'expanded' || v === 'preallocated' || v === 'raw') return v;
  throw new InvalidArgumentError(`unknown format "${v}" (expanded, preallocated or raw)`);
}

function parseVersion(v: string): FormatVersion {
  if (v === '1' || v === '2') return Number(v) as FormatVersion;
  throw new InvalidArgumentError(`unknown version "${v}" (1 or 2)`);
}

/** Image-file operations lock the file itself so two of our processes never write it at once. */
function withImageLock<T>(file: string, fn: () => Promise<T>): Promise<T> {
  return withLock(file, fn, { timeoutMs: 0 });
}

async function withProgress<T>(
  opts: OutputOptions,
  label: string,
  fn: (p: (d: number, t: number) => void) => Promise<T>,
): Promise<T> {
  const bar = progressBar(opts, label);
  try {
    return await fn(bar.update);
  } finally {
    bar.stop();
  }
}

/** Checks every delta of a disk, or one image. */
async function checkTarget(target: string, repair: boolean): Promise<CheckReport[]> {
  const t = await resolveTarget(target);
  if (t.kind === 'image') {
    return [await withImageLock(t.path, () => checkImage(t.path, { repair }))];
  }
  const d = await readDescriptor(nodeFileSystem, t.path);
  const reports: CheckReport[] = [];
  for (const g of chainGuids(d, t.path)) {
    const im = imageOf(d, g);
    if (im.type === 'Plain') continue;
    reports.push(await checkImage(resolveImagePath(t.path, im.file), { repair }));
  }
  return reports;
}

export function imageCommand(): Command {
  const image = new Command('image').description(
    'offline operations on ploop images (PATH: an image file or a DiskDescriptor.xml)',
  );
  const json = (c: Command) => c.option('--json', 'machine-readable output');

  json(
    image
      .command('create <path>')
      .description(
        'create an image, or a disk directory when PATH is a directory or ends in DiskDescriptor.xml',
      )
      .requiredOption('--size <size>', 'virtual size (K/M/G/T suffixes)')
      .option('--cluster-size <size>', 'cluster size, 64K to 64M', '1M')
      .option('--format <format>', 'expanded, preallocated or raw', 'expanded')
      .option('--version <n>', 'format version 1 or 2', '2'),
  ).action(
    async (
      p: string,
      o: JsonOpt & { size: string; clusterSize: string; format: string; version: string },
    ) => {
      const opts = {
        size: parseSize(o.size),
        clusterSize: parseSize(o.clusterSize),
        format: parseFormat(o.format),
        version: parseVersion(o.version),
      };
      const asDisk = isDescriptorPath(p) || p.endsWith('/') || (await isDirectory(p));
      if (asDisk) {
        const r = await createDisk(p, opts);
        print(o, r, () => `created ${r.descriptorPath}`);
      } else {
        const h = await PloopImage.create(path.resolve(p), opts);
        const size = h ? h.sizeSectors * 512 : opts.size;
        print(
          o,
          { imagePath: path.resolve(p), virtualSize: size },
          () => `created ${p} (${formatSize(size)})`,
        );
      }
    },
  );

  json(image.command('info <path>').description('show geometry, allocation and the chain')).action(
    async (p: string, o: JsonOpt) => {
      const i = await info(p);
      print(o, i, () => {
        const lines = [
          `path:          ${i.path}`,
          `virtual size:  ${i.virtualSize} (${formatSize(i.virtualSize)})`,
          `cluster size:  ${i.clusterSize} (${formatSize(i.clusterSize)})`,
        ];
        for (const d of i.deltas) {
          lines.push(
            `delta:         ${path.basename(d.path)} ${d.format}${d.version ? ` v${d.version}` : ''}` +
              `${d.allocatedClusters !== null ? `, ${d.allocatedClusters} clusters allocated` : ''}` +
              `, file ${d.fileSize} bytes, ${d.diskUsage} on disk${d.dirty ? ', DIRTY' : ''}`,
          );
        }
        for (const s of i.snapshots)
          lines.push(`snapshot:      ${s.guid}${s.current ? ' (current)' : ''}`);
        return lines.join('\n');
      });
    },
  );

  json(
    image
      .command('check <path>')
      .description('verify an image (or every delta of a disk); exit non-zero on errors')
      .option('--repair', 'fix what can be fixed without losing flushed data'),
  ).action(async (p: string, o: JsonOpt & { repair?: boolean }) => {
    const reports = await checkTarget(p, o.repair ?? false);
    print(o, { clean: reports.every((r) => r.clean), images: reports }, () =>
      reports
        .map((r) =>
          [
            `${r.path}: ${r.clean ? 'clean' : 'ERRORS'} (${r.allocatedClusters} clusters allocated)`,
            ...r.findings.map((f) => `  ${f.severity}: ${f.message}${f.fixed ? ' [fixed]' : ''}`),
          ].join('\n'),
        )
        .join('\n'),
    );
    for (const r of reports) assertClean(r);
  });

  json(
    image
      .command('import <raw> <path>')
      .description('convert a raw disk file into a new ploop image (zero clusters are skipped)')
      .option('--cluster-size <size>', 'cluster size, 64K to 64M', '1M'),
  ).action(async (raw: string, p: string, o: JsonOpt & { clusterSize: string }) => {
    const clusterSize = parseSize(o.clusterSize);
    await withProgress(o, 'import', (progress) =>
      importRaw(raw, path.resolve(p), { clusterSize, progress }),
    );
    print(o, { imagePath: path.resolve(p) }, () => `imported ${raw} into ${p}`);
  });

  json(
    image.command('export <path> <raw>').description('write the whole chain to a sparse raw file'),
  ).action(async (p: string, raw: string, o: JsonOpt) => {
    await withProgress(o, 'export', (progress) => exportRaw(p, path.resolve(raw), { progress }));
    print(o, { rawPath: path.resolve(raw) }, () => `exported ${p} to ${raw}`);
  });

  json(
    image.command('snapshot <descriptor>').description('take a snapshot; prints its GUID'),
  ).action(async (p: string, o: JsonOpt) => {
    const guid = await snapshot(descriptorPathFor(p));
    print(o, { guid }, () => guid);
  });

  json(
    image.command('snapshot-list <descriptor>').description('list the snapshots of a disk'),
  ).action(async (p: string, o: JsonOpt) => {
    const list = await listSnapshots(descriptorPathFor(p));
    print(o, list, () =>
      list
        .map(
          (s) => `${s.current ? '*' : ' '} ${s.guid}  parent ${s.parent}  ${path.basename(s.file)}`,
        )
        .join('\n'),
    );
  });

  json(
    image
      .command('snapshot-delete <descriptor>')
      .description('delete a snapshot (its child is merged into it; the child keeps its GUID)')
      .requiredOption('--id <guid>', 'snapshot GUID'),
  ).action(async (p: string, o: JsonOpt & { id: string }) => {
    const r = await withProgress(o, 'merge', (progress) =>
      deleteSnapshot(descriptorPathFor(p), o.id, { progress }),
    );
    print(o, r, () =>
      r.deferred ? `snapshot ${o.id} has several children: marked for deletion` : `deleted ${o.id}`,
    );
  });

  json(
    image.command('merge <descriptor>').description('merge the top delta into its parent'),
  ).action(async (p: string, o: JsonOpt) => {
    await withProgress(o, 'merge', (progress) => mergeTop(descriptorPathFor(p), { progress }));
    print(o, { merged: true }, () => 'merged');
  });

  json(
    image
      .command('grow <path>')
      .description('grow the virtual size (the top delta of a disk)')
      .requiredOption('--size <size>', 'new virtual size (K/M/G/T suffixes)'),
  ).action(async (p: string, o: JsonOpt & { size: string }) => {
    const size = parseSize(o.size);
    const t = await resolveTarget(p);
    let newSize: number;
    if (t.kind === 'descriptor') newSize = await growDisk(t.path, size);
    else {
      newSize = await withImageLock(t.path, async () => {
        const img = (await openDelta(
          t.path,
          'Compressed',
          nodeFileSystem,
          false,
          true,
        )) as PloopImage;
        try {
          await growImage(img, size);
        } finally {
          await img.close();
        }
        return img.virtualSize;
      });
    }
    print(o, { virtualSize: newSize }, () => `grown to ${formatSize(newSize)}`);
  });

  json(
    image
      .command('compact <path>')
      .description('return unreferenced clusters to the file system (the top of a disk)'),
  ).action(async (p: string, o: JsonOpt) => {
    const t = await resolveTarget(p);
    const run = async () => {
      const chain = await Chain.open(t.path);
      try {
        const top = chain.top;
        if (!(top instanceof PloopImage))
          throw new InvalidArgumentError('a raw image needs no compaction');
        return await withProgress(o, 'compact', (progress) => compactImage(top, progress));
      } finally {
        await chain.close();
      }
    };
    const r =
      t.kind === 'descriptor'
        ? await withLock(`${t.path}.lck`, run)
        : await withImageLock(t.path, run);
    print(o, r, () => `compacted: ${r.before} → ${r.after} bytes (${r.moved} clusters moved)`);
  });

  return image;
}

async function isDirectory(p: string): Promise<boolean> {
  const { stat } = await import('node:fs/promises');
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}
