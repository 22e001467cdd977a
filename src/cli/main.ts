#!/usr/bin/env node
/** The `ploop-csi` command. */
import { Command, CommanderError } from 'commander';
import { imageCommand } from './image.js';
import { exitCodeFor, reason, EXIT } from './output.js';

export function program(): Command {
  const p = new Command('ploop-csi')
    .description('ploop images as Kubernetes volumes')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  p.addCommand(imageCommand().exitOverride());
  for (const c of p.commands) for (const s of c.commands) s.exitOverride();
  return p;
}

async function main(): Promise<void> {
  try {
    await program().parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; usage errors were already printed by commander.
      process.exitCode = err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
      return;
    }
    process.stderr.write(`ploop-csi: ${reason(err)}\n`);
    process.exitCode = exitCodeFor(err);
  }
}

await main();
