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

{{- define "tradeplane.peeringName" -}}
{{- default (include "tradeplane.fullname" .) .Values.peering.name -}}
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

{{/* The namespaced rules: in the ClusterRole when watching all namespaces, else in each namespace's Role. */}}
{{- define "tradeplane.namespacedRules" }}
  # The resource itself: kopf adds its finalizer and progress annotations; handlers write the status.
  - apiGroups: [tradeplane.io]
    resources: [tradingservices]
    verbs: [get, list, watch, patch]
  - apiGroups: [tradeplane.io]
    resources: [tradingservices/status]
    verbs: [get, patch]
  # Children, applied server-side under one field manager; canary Deployments are deleted after a rollout.
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [apps]
    resources: [controllerrevisions]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [services, configmaps]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [policy]
    resources: [poddisruptionbudgets]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [monitoring.coreos.com]
    resources: [servicemonitors]
    verbs: [get, list, watch, create, patch, delete]
  # Canary traffic split by Gateway API route weights: the route belongs to the user, only weights change.
  - apiGroups: [gateway.networking.k8s.io]
    resources: [httproutes]
    verbs: [get, list, watch, patch]
  # Pods failed by kubelet admission (TopologyAffinityError, OutOfhugepages-1Gi) are never rescheduled:
  # the operator deletes them so that their Deployment replaces them. No exec, no create.
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch, delete]
  - apiGroups: [""]
    resources: [events]
    verbs: [create, patch]
  - apiGroups: [events.k8s.io]
    resources: [events]
    verbs: [create, patch]
{{- end }}

{{/* The operator's command line: `tradeplane operator run` with the mode, peering and endpoints. */}}
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
{{- if .Values.peering.enabled }}
- --peering={{ include "tradeplane.peeringName" . }}
- --priority=-$(POD_INDEX)
{{- else }}
- --standalone
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.health.port }}/healthz
- --metrics-port={{ .Values.metrics.port }}
- --log-format={{ .Values.logFormat }}
{{- if .Values.debug }}
- --debug
{{- end }}
{{- end -}}
