{{/* Names and labels shared by every template. */}}

{{- define "cwo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cwo.fullname" -}}
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

{{/* Cluster-scoped objects carry the namespace too: two releases of the same
name in different namespaces must not share a ClusterRole. */}}
{{- define "cwo.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "cwo.fullname" .) | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "cwo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cwo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cwo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cwo.labels" -}}
helm.sh/chart: {{ include "cwo.chart" . }}
{{ include "cwo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cwo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cwo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cwo.leaseName" -}}
{{- default (include "cwo.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "cwo.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the controller does with ChatWorkspaces, in every namespace it serves:
watch them, patch finalizers and status, and record Events (events.k8s.io,
created and then patched as a series). Nothing is created, updated or
deleted whole. The finalizer is a patch of the resource itself: the
`chatworkspaces/finalizers` subresource is only checked (by the
OwnerReferencesPermissionEnforcement admission plugin) for objects that set
an ownerReference with blockOwnerDeletion to a ChatWorkspace, and the
operator sets none, so it is not granted.
*/}}
{{- define "cwo.workspaceRules" -}}
- apiGroups: ["chat.coder.com"]
  resources: ["chatworkspaces"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["chat.coder.com"]
  resources: ["chatworkspaces/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The served Namespaces' metadata, for the grants of Coder owners
(annotation chat.coder.com/coder-owners): read and watched, never changed.
In namespaced mode only those namespaces, by name. */}}
{{- define "cwo.namespaceRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  {{- with .Values.watchNamespaces }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Read access to the Secrets spec.credentialsRef may name. */}}
{{- define "cwo.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  {{- with .Values.credentialsRef.secretNames }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: ["get"]
{{- end }}
