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

{{/* The router's Service (its REST port), and the name replicas verify each other's REST certificates by. */}}
{{- define "edgesync.routerService" -}}
{{- printf "%s-router" (include "edgesync.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The port of an address ":7443" or "0.0.0.0:7443". */}}
{{- define "edgesync.port" -}}
{{- splitList ":" . | last -}}
{{- end -}}

{{/*
The server's configuration file: config from the values, except that
several replicas own nodes through Leases in the release's namespace
(ownership.namespace, required with more than one replica), the namespace
of bootstrap's CA Secret is the release's unless set otherwise, and joining
nodes are signed by the CA the chart generated unless bootstrap names
another. With the router on, its REST port serves router.tls.existingSecret
when set, and replicas forwarding calls to each other verify the name of
the router's Service, which the certificates carry (a pod IP is in none).
*/}}
{{- define "edgesync.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if and (gt (int .Values.replicas) 1) (not $config.ownership.namespace) -}}
{{- $_ := set $config.ownership "namespace" .Release.Namespace -}}
{{- end -}}
{{- if and (not .Values.tls.existingSecret) (not $config.bootstrap.caKeyFile) (not $config.bootstrap.caSecret) -}}
{{- $_ := set $config.bootstrap "caKeyFile" (printf "%s/ca.key" (dir $config.tls.caFile)) -}}
{{- end -}}
{{- if eq $config.bootstrap.namespace "edgesync-system" -}}
{{- $_ := set $config.bootstrap "namespace" .Release.Namespace -}}
{{- end -}}
{{- if $config.router.listenAddress -}}
{{- if and .Values.router.tls.existingSecret (not $config.router.certFile) -}}
{{- $_ := set $config.router "certFile" "/etc/edgesync/router-pki/tls.crt" -}}
{{- $_ := set $config.router "keyFile" "/etc/edgesync/router-pki/tls.key" -}}
{{- if not $config.router.peerCAFile -}}
{{- $_ := set $config.router "peerCAFile" "/etc/edgesync/router-pki/ca.crt" -}}
{{- end -}}
{{- end -}}
{{- if not $config.router.peerServerName -}}
{{- $_ := set $config.router "peerServerName" (printf "%s.%s.svc" (include "edgesync.routerService" .) .Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
