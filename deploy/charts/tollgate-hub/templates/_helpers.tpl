{{/* The chart name, or nameOverride. */}}
{{- define "tollgate-hub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: fullnameOverride, else the release name followed by the chart name unless it holds it. */}}
{{- define "tollgate-hub.fullname" -}}
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

{{/* Labels that select the hub's pod. */}}
{{- define "tollgate-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate-hub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tollgate-hub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tollgate-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: hub
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The hub's arguments, one per line, each quoted; checks the values the hub would refuse at start. */}}
{{- define "tollgate-hub.args" -}}
{{- if not (has .Values.store.type (list "embedded" "postgres")) }}
{{- fail (printf "store.type %q must be embedded or postgres" .Values.store.type) }}
{{- end }}
{{- if lt (int .Values.replicas) 1 }}
{{- fail (printf "replicas is %v: at least one hub replica is needed" .Values.replicas) }}
{{- end }}
{{- if and (ne (int .Values.replicas) 1) (eq .Values.store.type "embedded") }}
{{- fail (printf "replicas is %v: the embedded store serves exactly one replica; several replicas need store.type postgres" .Values.replicas) }}
{{- end }}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.existingSecret) }}
{{- fail "store.postgres.existingSecret is required with store.type postgres: a Secret holding the postgres:// URL" }}
{{- end }}
{{- if not (has .Values.logFormat (list "plain" "json")) }}
{{- fail (printf "logFormat %q must be plain or json" .Values.logFormat) }}
{{- end }}
{{- if not .Values.admins }}
{{- fail "admins is required: the names of the admin certificates this hub accepts (tollgate-hub certs admin --name NAME)" }}
{{- end }}
{{- if lt (int .Values.heartbeatSeconds) 1 }}
{{- fail "heartbeatSeconds must be at least 1" }}
{{- end }}
{{- $bind := toString .Values.metrics.bindAddress }}
{{- $metrics := ternary (printf "[%s]:%v" $bind .Values.metrics.port) (printf "%s:%v" $bind .Values.metrics.port) (contains ":" $bind) }}
- {{ printf "--log-level=%s" .Values.logLevel | quote }}
- {{ printf "--log-format=%s" .Values.logFormat | quote }}
- serve
- {{ printf "--listen=0.0.0.0:%v" .Values.grpcPort | quote }}
{{- if eq .Values.store.type "embedded" }}
- "--data-dir=/var/lib/tollgate-hub"
{{- else if .Values.store.postgres.caSecretName }}
- "--store-ca=/etc/tollgate/store-ca/ca.crt"
{{- end }}
- "--tls-cert=/etc/tollgate/tls/tls.crt"
- "--tls-key=/etc/tollgate/tls/tls.key"
- "--client-ca=/etc/tollgate/tls/ca.crt"
- {{ printf "--metrics-addr=%s" $metrics | quote }}
- {{ printf "--heartbeat-seconds=%v" .Values.heartbeatSeconds | quote }}
{{- range .Values.admins }}
- {{ printf "--admin=%s" . | quote }}
{{- end }}
{{- if .Values.signing.caKeySecretName }}
- "--client-ca-key=/etc/tollgate/client-ca-key/tls.key"
- {{ printf "--spoke-cert-ttl=%s" (toString .Values.signing.spokeCertTtl) | quote }}
{{- end }}
{{- if .Values.sessionTickets.secretName }}
- "--session-ticket-key=/etc/tollgate/session-tickets/key"
{{- end }}
{{- range .Values.extraArgs }}
- {{ toString . | quote }}
{{- end }}
{{- end }}
