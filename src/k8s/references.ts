/**
 * What the cluster knows of a driver's volumes and snapshots: the volume handles of its
 * PersistentVolumes and the snapshot handles of its VolumeSnapshotContents.
 */
import { ApiException, CoreV1Api, CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';

export interface ClusterReferences {
  /** volumeHandle of every PersistentVolume of the driver. */
  volumeHandles: Set<string>;
  /**
   * Snapshot handles of every VolumeSnapshotContent of the driver; null when they cannot be
   * listed (the snapshot CRDs are not installed, or the account may not read them).
   */
  snapshotHandles: Set<string> | null;
  /** Why snapshotHandles is null. */
  snapshotsUnknown?: string;
}

/** Objects per list call; a continue token fetches the rest. */
const PAGE = 500;

/** The kubeconfig kubectl would use: KUBECONFIG, ~/.kube/config, or the in-cluster account. */
export function defaultKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromDefault();
  return kc;
}

interface SnapshotContent {
  spec?: { driver?: string; source?: { snapshotHandle?: string } };
  status?: { snapshotHandle?: string };
}

export async function listReferences(
  kc: KubeConfig,
  driverName: string,
): Promise<ClusterReferences> {
  const core = kc.makeApiClient(CoreV1Api);
  const volumeHandles = new Set<string>();
  let cont: string | undefined;
  do {
    const page = await core.listPersistentVolume({ limit: PAGE, _continue: cont });
    for (const pv of page.items) {
      const csi = pv.spec?.csi;
      if (csi?.driver === driverName && csi.volumeHandle) volumeHandles.add(csi.volumeHandle);
    }
    cont = page.metadata?._continue || undefined;
  } while (cont);

  const custom = kc.makeApiClient(CustomObjectsApi);
  const snapshotHandles = new Set<string>();
  cont = undefined;
  try {
    do {
      const page = (await custom.listClusterCustomObject({
        group: 'snapshot.storage.k8s.io',
        version: 'v1',
        plural: 'volumesnapshotcontents',
        limit: PAGE,
        _continue: cont,
      })) as { items?: SnapshotContent[]; metadata?: { continue?: string } };
      for (const c of page.items ?? []) {
        if (c.spec?.driver !== driverName) continue;
        // A dynamically made snapshot has its handle in status; a pre-provisioned one in spec.
        if (c.status?.snapshotHandle) snapshotHandles.add(c.status.snapshotHandle);
        if (c.spec.source?.snapshotHandle) snapshotHandles.add(c.spec.source.snapshotHandle);
      }
      cont = page.metadata?.continue || undefined;
    } while (cont);
  } catch (err) {
    if (err instanceof ApiException && (err.code === 404 || err.code === 403)) {
      return {
        volumeHandles,
        snapshotHandles: null,
        snapshotsUnknown:
          err.code === 404
            ? 'the snapshot.storage.k8s.io/v1 API is not installed'
            : 'this account may not list volumesnapshotcontents',
      };
    }
    throw err;
  }
  return { volumeHandles, snapshotHandles };
}
