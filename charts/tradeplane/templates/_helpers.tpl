{{/* Names, labels and the pieces shared by several templates. */}}

{{- define "tradeplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Kept to 40 characters so that suffixed names (-metrics, -cluster) stay valid label values. */}}
{{- define "tradeplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "tradeplane.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "tradeplane.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tradeplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tradeplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tradeplane.labels" -}}
{{ include "tradeplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tradeplane
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tradeplane.serviceAccountName" -}}
{{- include "tradeplane.fullname" . -}}
{{- end -}}

{{- define "tradeplane.leaseName" -}}
{{- default (include "tradeplane.fullname" .) .Values.leaderElection.name -}}
{{- end -}}

{{- define "tradeplane.metricsServiceName" -}}
{{- printf "%s-metrics" (include "tradeplane.fullname" .) -}}
{{- end -}}

{{/* The value of the tradeplane_operator label the ServiceMonitor puts on this release's series. */}}
{{- define "tradeplane.operatorLabel" -}}
{{- printf "%s/%s" .Release.Namespace (include "tradeplane.fullname" .) -}}
{{- end -}}

{{- define "tradeplane.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "tradeplane.clusterWide" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/*
The namespaced rules: in the ClusterRole when watching all namespaces, else in each namespace's Role.
Verbs are those operator/tradeplane calls (handlers.py, kube.py): kopf watches (list, watch) and writes
nothing itself; children are applied server-side (PATCH, which the API server also authorizes as create
when the object does not exist yet); no get, every read is served from kopf's watch indexes.
*/}}
{{- define "tradeplane.namespacedRules" }}
  # The resource: watched; only its status is written.
  - apiGroups: [tradeplane.io]
    resources: [tradingservices]
    verbs: [list, watch]
  - apiGroups: [tradeplane.io]
    resources: [tradingservices/status]
    verbs: [patch]
  # Children, watched for drift and applied under the field manager `tradeplane`; a promoted canary's
  # Deployment is deleted (its ReplicaSet orphaned to the stable one). ControllerRevisions keep the
  # pod-shaping spec of each revision.
  - apiGroups: [apps]
    resources: [deployments, controllerrevisions]
    verbs: [list, watch, create, patch, delete]
  - apiGroups: [""]
    resources: [services, configmaps]
    verbs: [list, watch, create, patch, delete]
  - apiGroups: [policy]
    resources: [poddisruptionbudgets]
    verbs: [list, watch, create, patch, delete]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [list, watch, create, patch, delete]
  - apiGroups: [monitoring.coreos.com]
    resources: [servicemonitors]
    verbs: [list, watch, create, patch, delete]
  # A canary split by Gateway API route weights: the route is the user's, read and its weights patched.
  - apiGroups: [gateway.networking.k8s.io]
    resources: [httproutes]
    verbs: [get, list, watch, patch]
  # Pods failed by kubelet admission (TopologyAffinityError, OutOfhugepages-1Gi) are never rescheduled:
  # the operator deletes them so that their ReplicaSet replaces them. No create, no exec.
  - apiGroups: [""]
    resources: [pods]
    verbs: [list, watch, delete]
  # Events for every decision (kopf's own posting is off).
  - apiGroups: [""]
    resources: [events]
    verbs: [create]
{{- end }}

{{/* The operator's command line: `tradeplane operator run` with the mode, leader election and endpoints. */}}
{{- define "tradeplane.operatorArgs" -}}
- operator
- run
{{- if include "tradeplane.clusterWide" . }}
- --all-namespaces
{{- else }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if .enabled }}
- --lease={{ include "tradeplane.leaseName" $ }}
- --lease-namespace={{ $.Release.Namespace }}
- --lease-seconds={{ .leaseSeconds }}
- --lease-renew-deadline={{ .renewDeadlineSeconds }}
- --lease-retry={{ .retrySeconds }}
{{- else }}
- --standalone
{{- end }}
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.health.port }}/healthz
- --metrics-port={{ .Values.metrics.port }}
- --log-format={{ .Values.logFormat }}
{{- if .Values.debug }}
- --debug
{{- end }}
{{- end -}}
