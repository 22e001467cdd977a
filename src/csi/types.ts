/**
 * The CSI v1 messages this driver reads and writes, as @grpc/proto-loader presents them with
 * `longs: String, enums: String, defaults: true, oneofs: true` (see proto.ts): field names in
 * camelCase, every int64 a decimal string on input, every enum its name (or the raw number when
 * the value is unknown to this proto), unset scalars as their zero value, unset messages as null.
 *
 * Requests are typed as received (every field present). Responses are typed as sent: optional
 * fields may be left out, and int64 fields take a number (always a safe integer here).
 */

export type StringMap = Record<string, string>;
/** An enum value as decoded: its name, or the number when this proto does not know it. */
export type Enum<T extends string> = T | number;
/** An int64 field: a decimal string when decoded, a safe integer when sent. */
export type Int64In = string;
export type Int64Out = number;

// ---- shared messages ------------------------------------------------------------------------

export type AccessModeName =
  | 'UNKNOWN'
  | 'SINGLE_NODE_WRITER'
  | 'SINGLE_NODE_READER_ONLY'
  | 'MULTI_NODE_READER_ONLY'
  | 'MULTI_NODE_SINGLE_WRITER'
  | 'MULTI_NODE_MULTI_WRITER'
  | 'SINGLE_NODE_SINGLE_WRITER'
  | 'SINGLE_NODE_MULTI_WRITER';

export interface MountVolume {
  fsType: string;
  mountFlags: string[];
  volumeMountGroup: string;
}

export interface VolumeCapability {
  block?: Record<string, never> | null;
  mount?: MountVolume | null;
  accessMode: { mode: Enum<AccessModeName> } | null;
  accessType?: 'block' | 'mount';
}

/** A capability as sent back (ValidateVolumeCapabilities echoes what it confirmed). */
export interface VolumeCapabilityOut {
  block?: Record<string, never>;
  mount?: Partial<MountVolume>;
  accessMode: { mode: AccessModeName | number };
}

export interface CapacityRange {
  requiredBytes: Int64In;
  limitBytes: Int64In;
}

export interface Topology {
  segments: StringMap;
}

export interface TopologyRequirement {
  requisite: Topology[];
  preferred: Topology[];
}

export interface VolumeContentSource {
  snapshot?: { snapshotId: string } | null;
  volume?: { volumeId: string } | null;
  type?: 'snapshot' | 'volume';
}

export type VolumeContentSourceOut =
  { snapshot: { snapshotId: string } } | { volume: { volumeId: string } };

export interface Volume {
  capacityBytes: Int64Out;
  volumeId: string;
  volumeContext: StringMap;
  contentSource?: VolumeContentSourceOut;
  accessibleTopology: Topology[];
}

export interface VolumeCondition {
  abnormal: boolean;
  message: string;
}

export interface Timestamp {
  seconds: Int64Out;
  nanos: number;
}

export interface Snapshot {
  sizeBytes: Int64Out;
  snapshotId: string;
  sourceVolumeId: string;
  creationTime: Timestamp;
  readyToUse: boolean;
  groupSnapshotId?: string;
}

// ---- identity -------------------------------------------------------------------------------

export type Empty = Record<string, never>;

export interface GetPluginInfoResponse {
  name: string;
  vendorVersion: string;
  manifest: StringMap;
}

export type PluginCapability =
  | { service: { type: 'CONTROLLER_SERVICE' | 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } }
  | { volumeExpansion: { type: 'ONLINE' | 'OFFLINE' } };

export interface GetPluginCapabilitiesResponse {
  capabilities: PluginCapability[];
}

export interface ProbeResponse {
  ready: { value: boolean };
}

// ---- controller -----------------------------------------------------------------------------

export interface CreateVolumeRequest {
  name: string;
  capacityRange: CapacityRange | null;
  volumeCapabilities: VolumeCapability[];
  parameters: StringMap;
  secrets: StringMap;
  volumeContentSource: VolumeContentSource | null;
  accessibilityRequirements: TopologyRequirement | null;
  mutableParameters: StringMap;
}

export interface CreateVolumeResponse {
  volume: Volume;
}

export interface DeleteVolumeRequest {
  volumeId: string;
  secrets: StringMap;
}

export interface ValidateVolumeCapabilitiesRequest {
  volumeId: string;
  volumeContext: StringMap;
  volumeCapabilities: VolumeCapability[];
  parameters: StringMap;
  secrets: StringMap;
  mutableParameters: StringMap;
}

export interface ValidateVolumeCapabilitiesResponse {
  confirmed?: {
    volumeContext: StringMap;
    volumeCapabilities: VolumeCapabilityOut[];
    parameters: StringMap;
    mutableParameters: StringMap;
  };
  message: string;
}

export interface ListVolumesRequest {
  maxEntries: number;
  startingToken: string;
}

export interface VolumeStatus {
  publishedNodeIds: string[];
  volumeCondition: VolumeCondition;
}

export interface ListVolumesResponse {
  entries: { volume: Volume; status: VolumeStatus }[];
  nextToken: string;
}

export interface ControllerGetVolumeRequest {
  volumeId: string;
}

export interface ControllerGetVolumeResponse {
  volume: Volume;
  status: VolumeStatus;
}

export interface GetCapacityRequest {
  volumeCapabilities: VolumeCapability[];
  parameters: StringMap;
  accessibleTopology: Topology | null;
}

export interface GetCapacityResponse {
  availableCapacity: Int64Out;
  maximumVolumeSize?: { value: Int64Out };
}

export type ControllerCapabilityName =
  | 'CREATE_DELETE_VOLUME'
  | 'CREATE_DELETE_SNAPSHOT'
  | 'LIST_SNAPSHOTS'
  | 'GET_SNAPSHOT'
  | 'CLONE_VOLUME'
  | 'GET_CAPACITY'
  | 'LIST_VOLUMES'
  | 'GET_VOLUME'
  | 'SINGLE_NODE_MULTI_WRITER'
  | 'VOLUME_CONDITION';

export interface ControllerGetCapabilitiesResponse {
  capabilities: { rpc: { type: ControllerCapabilityName } }[];
}

export interface CreateSnapshotRequest {
  sourceVolumeId: string;
  name: string;
  secrets: StringMap;
  parameters: StringMap;
}

export interface CreateSnapshotResponse {
  snapshot: Snapshot;
}

export interface DeleteSnapshotRequest {
  snapshotId: string;
  secrets: StringMap;
}

export interface ListSnapshotsRequest {
  maxEntries: number;
  startingToken: string;
  sourceVolumeId: string;
  snapshotId: string;
  secrets: StringMap;
}

export interface ListSnapshotsResponse {
  entries: { snapshot: Snapshot }[];
  nextToken: string;
}

export interface GetSnapshotRequest {
  snapshotId: string;
  secrets: StringMap;
}

export interface GetSnapshotResponse {
  snapshot: Snapshot;
}

// ---- node -----------------------------------------------------------------------------------

export interface NodeStageVolumeRequest {
  volumeId: string;
  publishContext: StringMap;
  stagingTargetPath: string;
  volumeCapability: VolumeCapability | null;
  secrets: StringMap;
  volumeContext: StringMap;
}

export interface NodeUnstageVolumeRequest {
  volumeId: string;
  stagingTargetPath: string;
}

export interface NodePublishVolumeRequest {
  volumeId: string;
  publishContext: StringMap;
  stagingTargetPath: string;
  targetPath: string;
  volumeCapability: VolumeCapability | null;
  readonly: boolean;
  secrets: StringMap;
  volumeContext: StringMap;
}

export interface NodeUnpublishVolumeRequest {
  volumeId: string;
  targetPath: string;
}

export interface NodeGetVolumeStatsRequest {
  volumeId: string;
  volumePath: string;
  stagingTargetPath: string;
}

export interface VolumeUsage {
  available?: Int64Out;
  total: Int64Out;
  used?: Int64Out;
  unit: 'BYTES' | 'INODES';
}

export interface NodeGetVolumeStatsResponse {
  usage: VolumeUsage[];
  volumeCondition: VolumeCondition;
}

export interface NodeExpandVolumeRequest {
  volumeId: string;
  volumePath: string;
  capacityRange: CapacityRange | null;
  stagingTargetPath: string;
  volumeCapability: VolumeCapability | null;
  secrets: StringMap;
}

export interface NodeExpandVolumeResponse {
  capacityBytes: Int64Out;
}

export type NodeCapabilityName =
  | 'STAGE_UNSTAGE_VOLUME'
  | 'GET_VOLUME_STATS'
  | 'EXPAND_VOLUME'
  | 'VOLUME_CONDITION'
  | 'SINGLE_NODE_MULTI_WRITER';

export interface NodeGetCapabilitiesResponse {
  capabilities: { rpc: { type: NodeCapabilityName } }[];
}

export interface NodeGetInfoResponse {
  nodeId: string;
  maxVolumesPerNode: Int64Out;
  accessibleTopology: Topology;
}
