#!/usr/bin/env node
/** The `ploop-csi` command. */
import { Command, CommanderError } from 'commander';
import { exitCodeFor, reason, EXIT } from './output.js';

/**
 * Each top-level command lives in its own module, loaded only when used: the CSI server pulls in
 * gRPC, logging and metrics, which an `image` command does not need to pay for at start-up.
 */
const COMMANDS: Record<string, () => Promise<Command[]>> = {
  image: async () => [(await import('./image.js')).imageCommand()],
  csi: async () => [(await import('./csi.js')).csiCommand()],
  blockd: async () => [(await import('./blockd.js')).blockdCommand()],
  device: async () => [(await import('./blockd.js')).deviceCommand()],
  gc: async () => [(await import('./gc.js')).gcCommand()],
};

export async function program(argv: string[]): Promise<Command> {
  const p = new Command('ploop-csi')
    .description('ploop images as Kubernetes volumes')
    .version('0.1.0')
    // Program options only before the command: `image create --version 1` is the format version.
    .enablePositionalOptions()
    .showHelpAfterError()
    .exitOverride();
  const wanted = argv.slice(2).find((a) => !a.startsWith('-'));
  const names = wanted && wanted in COMMANDS ? [wanted] : Object.keys(COMMANDS);
  const seen = new Set<string>();
  for (const n of names) {
    for (const c of await COMMANDS[n]!()) {
      if (seen.has(c.name())) continue;
      seen.add(c.name());
      p.addCommand(c.exitOverride());
      for (const s of c.commands) s.exitOverride();
    }
  }
  return p;
}

async function main(): Promise<void> {
  try {
    await (await program(process.argv)).parseAsync(process.argv);
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
