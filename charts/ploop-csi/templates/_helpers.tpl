{{/* Name of the chart, overridable. */}}
{{- define "ploop-csi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, or fullnameOverride. */}}
{{- define "ploop-csi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ploop-csi.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ploop-csi.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ploop-csi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ploop-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component ("node" or "blockd"); pass (dict "ctx" . "component" "node"). */}}
{{- define "ploop-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ploop-csi.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ploop-csi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-node" (include "ploop-csi.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag" of an image map; the driver's tag defaults to the chart's appVersion. */}}
{{- define "ploop-csi.image" -}}
{{- $tag := .image.tag | default .default -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (toString $tag) -}}
{{- end -}}
{{- end -}}

{{/* Where kubelet looks for this driver's socket, on the host. */}}
{{- define "ploop-csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName -}}
{{- end -}}

{{/* The blockd control socket, the same path on the host and in both pods. */}}
{{- define "ploop-csi.blockdSocket" -}}
{{- printf "%s/blockd.sock" (trimSuffix "/" .Values.runDir) -}}
{{- end -}}

{{/* Common arguments of the kubernetes-csi sidecars. */}}
{{- define "ploop-csi.sidecarArgs" -}}
- --csi-address=/csi/csi.sock
- --v={{ .Values.sidecars.logVerbosity }}
{{- end -}}
