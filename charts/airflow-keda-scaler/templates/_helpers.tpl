{{/* The name of every object: the release's name when it already says airflow-keda-scaler. */}}
{{- define "aks.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aks.labels" -}}
{{ include "aks.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The namespaces whose workers the scaler protects. */}}
{{- define "aks.workerNamespaces" -}}
{{- $namespaces := .Values.rbac.namespaces | default (list .Values.airflow.namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{- define "aks.scalerAddress" -}}
{{- .Values.scalerAddress | default (printf "%s-headless.%s.svc:6000" (include "aks.fullname" .) .Release.Namespace) -}}
{{- end -}}

{{/* The RBAC rules: exactly the requests the scaler makes (tests/test_manifests.py compares them). */}}
{{- define "aks.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: ["airflow-keda-scaler-drain"]
  verbs: ["get", "update"]
{{- end -}}

{{- define "aks.rbacRules" -}}
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
{{- end -}}
