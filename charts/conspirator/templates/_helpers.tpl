{{/*
Names, labels and images shared by every template.
*/}}

{{- define "conspirator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: <release> or <release>-conspirator, at most 40 characters so
     that every "<fullname>-<component>" stays within the 63 characters of a label value. */}}
{{- define "conspirator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "conspirator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "operator"). */}}
{{- define "conspirator.labels" -}}
helm.sh/chart: {{ include "conspirator.chart" .root }}
{{ include "conspirator.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: conspirator
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "conspirator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conspirator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* "<fullname>-<component>"; call with (dict "root" $ "component" "operator"). */}}
{{- define "conspirator.componentName" -}}
{{- printf "%s-%s" (include "conspirator.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The image of a component; call with (dict "root" $ "image" .Values.operator.image). */}}
{{- define "conspirator.image" -}}
{{- $registry := .image.registry | default .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .image.digest -}}
{{- printf "%s/%s@%s" $registry .image.name .image.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $registry .image.name $tag -}}
{{- end -}}
{{- end -}}

{{- define "conspirator.pullPolicy" -}}
{{- .image.pullPolicy | default .root.Values.image.pullPolicy -}}
{{- end -}}

{{- define "conspirator.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount name of a component; call with (dict "root" $ "component" "operator"
     "values" .Values.operator). */}}
{{- define "conspirator.serviceAccountName" -}}
{{- if .values.serviceAccount.create -}}
{{- .values.serviceAccount.name | default (include "conspirator.componentName" .) -}}
{{- else -}}
{{- .values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Secrets the chart owns. */}}
{{- define "conspirator.nodeTokenSecret" -}}
{{- printf "%s-node-token" (include "conspirator.fullname" .) -}}
{{- end -}}

{{- define "conspirator.agentTokensSecret" -}}
{{- printf "%s-agent-tokens" (include "conspirator.fullname" .) -}}
{{- end -}}

{{- define "conspirator.peeringName" -}}
{{- .Values.operator.peering.name | default (include "conspirator.fullname" .) -}}
{{- end -}}

{{/* Variables that point in-cluster clients at the API server when the cluster's
     `kubernetes` Service does not route (no service proxy). */}}
{{- define "conspirator.apiServerEnv" -}}
{{- with .Values.kubernetesAPI.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kubernetesAPI.port }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT_HTTPS
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The agent's client endpoint that the node daemon writes into GPUNode status. */}}
{{- define "conspirator.agentPort" -}}
{{- .Values.dpuAgent.port | int -}}
{{- end -}}

{{/* The operator's rules on the jobs' own objects: cluster-wide in a ClusterRole, or in a Role
     per served namespace (operator.namespaces). */}}
{{- define "conspirator.operatorJobRules" -}}
- apiGroups: [conspirator.io]
  resources: [inferencejobs]
  verbs: [get, list, watch, patch]
- apiGroups: [conspirator.io]
  resources: [inferencejobs/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# The pod that holds a released instance: marked cheapest before its Deployment shrinks
# (pod-deletion-cost), or deleted when no scale-down will remove it.
- apiGroups: [""]
  resources: [pods]
  verbs: [patch, delete]
{{- if eq (include "conspirator.dra" .) "true" }}
- apiGroups: [resource.k8s.io]
  resources: [resourceclaimtemplates]
  verbs: [get, create]
{{- end }}
{{- end -}}

{{/*
Whether the node daemon may run as a DRA driver: `allocation: dra`, or `auto` where the API
server serves resource.k8s.io/v1 (the daemon then still falls back to the device plugin on a
node whose kubelet registers no DRA plugin).
*/}}
{{- define "conspirator.dra" -}}
{{- if or (eq .Values.allocation "dra") (and (eq .Values.allocation "auto") (.Capabilities.APIVersions.Has "resource.k8s.io/v1")) -}}
true
{{- end -}}
{{- end }}
