{{/* The name of every object: the release name, with "-edgesync" unless it already says edgesync. */}}
{{- define "edgesync.fullname" -}}
{{- if contains "edgesync" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-edgesync" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edgesync.selectorLabels" -}}
app.kubernetes.io/name: edgesync-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgesync.labels" -}}
{{ include "edgesync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "edgesync.tlsSecret" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "edgesync.fullname" .)) -}}
{{- end -}}

{{/* The port of an address ":7443" or "0.0.0.0:7443". */}}
{{- define "edgesync.port" -}}
{{- splitList ":" . | last -}}
{{- end -}}
