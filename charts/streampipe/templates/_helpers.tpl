{{/*
Names. Kubernetes names are DNS labels: at most 63 characters, so every name is truncated and any
trailing "-" the cut leaves is trimmed. Suffixed names (`-metrics`, `-test`) cut the base first.
*/}}
{{- define "streampipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streampipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", still at most 63 characters. */}}
{{- define "streampipe.suffixed" -}}
{{- $suffix := index . 1 }}
{{- $base := include "streampipe.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "streampipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries, the component aside. */}}
{{- define "streampipe.commonLabels" -}}
helm.sh/chart: {{ include "streampipe.chart" . }}
app.kubernetes.io/name: {{ include "streampipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streampipe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "streampipe.labels" -}}
{{ include "streampipe.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator pods' identity: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "streampipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streampipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* metadata.annotations body, when there is any. */}}
{{- define "streampipe.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "streampipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streampipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace of the release's namespaced objects: namespaceOverride, else the release's. */}}
{{- define "streampipe.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/*
[registry/]repository:tag, or [registry/]repository@digest when a digest pins the image. The registry
is global.imageRegistry when set, else image.registry; a repository whose first path component is a
registry host (it has a "." or a ":", or is "localhost") already names its registry and is used as is.
*/}}
{{- define "streampipe.image" -}}
{{- $repository := .Values.image.repository }}
{{- $first := first (splitList "/" $repository) }}
{{- $named := and (contains "/" $repository) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $registry := "" }}
{{- if not $named }}
{{- $registry = (.Values.global).imageRegistry | default .Values.image.registry }}
{{- end }}
{{- with $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The pods' imagePullSecrets entries: imagePullSecrets, then global.imagePullSecrets (names or {name}
objects), each name once. Empty when there are none.
*/}}
{{- define "streampipe.imagePullSecrets" -}}
{{- $names := list }}
{{- range .Values.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- range (.Values.global).imagePullSecrets }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- range uniq $names }}
- name: {{ . }}
{{- end }}
{{- end }}

{{/*
A probe of the operator container from its values (list "<value name>" <probe values>): every Probe
field of the values, `enabled` aside; the health endpoint (httpGet /healthz on the health port) unless
the values bring their own handler.
*/}}
{{- define "streampipe.probe" -}}
{{- $name := index . 0 }}
{{- $probe := omit (index . 1 | default dict) "enabled" }}
{{- $handlers := list }}
{{- range $handler := list "httpGet" "exec" "tcpSocket" "grpc" }}
{{- if index $probe $handler }}
{{- $handlers = append $handlers $handler }}
{{- end }}
{{- end }}
{{- if gt (len $handlers) 1 }}
{{- fail (printf "%s has more than one handler (%s): keep one of them" $name (join ", " $handlers)) }}
{{- end }}
{{- if not $handlers }}
httpGet:
  path: /healthz
  port: health
{{- end }}
{{- with $probe }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* true when the replicas coordinate through kopf peering. */}}
{{- define "streampipe.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "streampipe.peeringName" -}}
{{- default (include "streampipe.fullname" .) .Values.peering.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* true when the operator watches every namespace (and gets a ClusterRole). */}}
{{- define "streampipe.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The arguments of `streampipe operator run`: the watch scope (one --namespace per watched namespace,
or --all-namespaces), peering or standalone, the probe and metrics endpoints, logging.
*/}}
{{- define "streampipe.operatorArgs" -}}
- operator
- run
{{- if include "streampipe.clusterWide" . }}
- --all-namespaces
{{- else }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- end }}
{{- if include "streampipe.peering" . }}
- --peering={{ include "streampipe.peeringName" . }}
{{- else }}
- --standalone
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.operator.healthPort }}/healthz
- --metrics-port={{ .Values.operator.metricsPort }}
- --log-format={{ .Values.operator.logFormat }}
{{- range .Values.operator.allowedImages }}
- --allowed-image={{ . }}
{{- end }}
{{- range .Values.operator.allowedServiceAccounts }}
- --allowed-service-account={{ . }}
{{- end }}
{{- with .Values.operator.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs on its own resources in a namespace (or in all of them, in the
ClusterRole). Each rule names the handler behaviour that needs it; see docs/security.md.
*/}}
{{- define "streampipe.namespacedRules" -}}
# StreamPipelines: kopf lists and watches them, and patches them for its finalizer and its progress
# annotations; conditions and figures go to the status subresource.
- apiGroups: ["streampipe.dev"]
  resources: ["streampipelines"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["streampipe.dev"]
  resources: ["streampipelines/status"]
  verbs: ["patch"]
{{- if .Values.rbac.ownerReferencesPermissionEnforcement }}
# The worker Deployments' owner reference blocks the StreamPipeline's deletion; where the
# OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift), that needs this.
- apiGroups: ["streampipe.dev"]
  resources: ["streampipelines/finalizers"]
  verbs: ["update"]
{{- end }}
# One worker Deployment per consumer group: watched (kopf index), created, drift patched back,
# deleted with its group.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Replicas change through the scale subresource only.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# core/v1 Events on StreamPipelines (group recreated, replicas changed, errors); posted, never read.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Redis credentials and CA bundles named by spec.redis.auth / spec.redis.tls: read one by name,
# never listed or watched.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
