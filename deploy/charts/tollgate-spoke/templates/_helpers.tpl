{{/* The chart name, or nameOverride. */}}
{{- define "tollgate-spoke.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: fullnameOverride, else the release name followed by the chart name unless it holds it. */}}
{{- define "tollgate-spoke.fullname" -}}
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

{{/* helm.sh/chart label value. */}}
{{- define "tollgate-spoke.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the spoke's pod. */}}
{{- define "tollgate-spoke.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate-spoke.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tollgate-spoke.labels" -}}
helm.sh/chart: {{ include "tollgate-spoke.chart" . }}
{{ include "tollgate-spoke.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: spoke
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "tollgate-spoke.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate-spoke.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The DNS Service as a dict {namespace, name}; fails on anything but namespace/name. */}}
{{- define "tollgate-spoke.dnsService" -}}
{{- $dns := required "dnsService is required (namespace/name of the cluster DNS Service: kube-system/kube-dns, or openshift-dns/dns-default on OpenShift)" .Values.dnsService }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $dns) }}
{{- fail (printf "dnsService %q must be namespace/name, e.g. kube-system/kube-dns" $dns) }}
{{- end }}
{{- $parts := splitList "/" $dns }}
{{- dict "namespace" (index $parts 0) "name" (index $parts 1) | toJson }}
{{- end }}

{{/* --cluster-labels: sorted key=value pairs, comma-separated. */}}
{{- define "tollgate-spoke.clusterLabels" -}}
{{- $pairs := list }}
{{- range $key, $value := .Values.cluster.labels }}
{{- if or (contains "," (toString $key)) (contains "=" (toString $key)) (contains "," (toString $value)) (contains "=" (toString $value)) }}
{{- fail (printf "cluster.labels: %s=%v: keys and values cannot hold ',' or '='" $key $value) }}
{{- end }}
{{- $pairs = append $pairs (printf "%s=%v" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* --metrics-addr: bindAddress:port, bracketing IPv6 addresses. */}}
{{- define "tollgate-spoke.metricsAddr" -}}
{{- $host := toString .Values.metrics.bindAddress }}
{{- if contains ":" $host }}
{{- printf "[%s]:%v" $host .Values.metrics.port }}
{{- else }}
{{- printf "%s:%v" $host .Values.metrics.port }}
{{- end }}
{{- end }}

{{/* The spoke's arguments, one per line, each quoted; checks the values the spoke would refuse at start. */}}
{{- define "tollgate-spoke.args" -}}
{{- if and .Values.standalone .Values.hub.address }}
{{- fail "standalone and hub.address exclude each other: set standalone: false to connect to a hub" }}
{{- end }}
{{- if and (not .Values.standalone) (not .Values.hub.address) }}
{{- fail "set hub.address (https://host:port) or standalone: true" }}
{{- end }}
{{- if and .Values.hub.address (not .Values.hub.tls.secretName) (not .Values.hub.joinTokenSecret) (not .Values.hub.insecureDevPlaintext) }}
{{- fail "hub.address needs hub.joinTokenSecret or hub.tls.secretName: the hub accepts spokes over mTLS only" }}
{{- end }}
{{- if and .Values.hub.joinTokenSecret .Values.hub.tls.secretName }}
{{- fail "hub.joinTokenSecret excludes hub.tls.secretName: a joined spoke's certificate comes from the hub" }}
{{- end }}
{{- if and .Values.hub.insecureDevPlaintext (or .Values.hub.tls.secretName .Values.hub.joinTokenSecret) }}
{{- fail "hub.insecureDevPlaintext excludes hub.tls.secretName and hub.joinTokenSecret" }}
{{- end }}
{{- if and .Values.hub.insecureDevPlaintext (not .Values.hub.address) }}
{{- fail "hub.insecureDevPlaintext needs hub.address" }}
{{- end }}
{{- if not (has .Values.logFormat (list "plain" "json")) }}
{{- fail (printf "logFormat %q must be plain or json" .Values.logFormat) }}
{{- end }}
{{- $maxCardAge := toString (.Values.maxCardAge | default "") }}
{{- if and $maxCardAge (not (regexMatch "^[0-9]+[smhd]?$" $maxCardAge)) }}
{{- fail (printf "maxCardAge %q must be a number with s, m, h or d, e.g. 1h" $maxCardAge) }}
{{- end }}
{{- $dns := include "tollgate-spoke.dnsService" . | fromJson }}
- run
- {{ printf "--cluster-id=%s" (toString (required "cluster.id is required" .Values.cluster.id)) | quote }}
- {{ printf "--cluster-labels=%s" (include "tollgate-spoke.clusterLabels" .) | quote }}
{{- if .Values.standalone }}
- "--standalone"
{{- end }}
{{- with .Values.hub.address }}
- {{ printf "--hub=%s" . | quote }}
{{- end }}
{{- if and .Values.hub.address .Values.hub.tls.secretName }}
- "--hub-ca=/etc/tollgate/hub-tls/ca.crt"
- "--tls-cert=/etc/tollgate/hub-tls/tls.crt"
- "--tls-key=/etc/tollgate/hub-tls/tls.key"
{{- end }}
{{- if and .Values.hub.address .Values.hub.joinTokenSecret }}
- "--join-token-file=/etc/tollgate/join/token"
- {{ printf "--identity-secret=%s" (required "hub.identitySecret is required with hub.joinTokenSecret" .Values.hub.identitySecret) | quote }}
{{- end }}
{{- with .Values.hub.tls.serverName }}
- {{ printf "--hub-tls-server-name=%s" . | quote }}
{{- end }}
{{- if .Values.hub.insecureDevPlaintext }}
- "--insecure-dev-plaintext"
{{- end }}
- {{ printf "--spoke-namespace=%s" .Release.Namespace | quote }}
- {{ printf "--intent-configmap=%s" (required "intent.configMapName is required" .Values.intent.configMapName) | quote }}
- {{ printf "--namespaces=%s" (join "," .Values.watchNamespaces) | quote }}
- {{ printf "--operator-namespace=%s" .Values.operatorNamespace | quote }}
- {{ printf "--cluster-defaults-namespace=%s" .Values.clusterDefaultsNamespace | quote }}
- {{ printf "--policy-name-suffix=%s" .Values.policyNameSuffix | quote }}
{{- with .Values.trustDomain }}
- {{ printf "--trust-domain=%s" . | quote }}
{{- end }}
{{- with $maxCardAge }}
- {{ printf "--max-card-age=%s" . | quote }}
{{- end }}
{{- if .Values.restrictedAllowDns }}
- "--restricted-allow-dns"
{{- end }}
{{- with .Values.fqdn.resolver }}
- {{ printf "--fqdn-resolver=%s" . | quote }}
{{- end }}
- {{ printf "--enforcement=%s" .Values.enforcement | quote }}
- {{ printf "--anp-priority=%d" (int .Values.anpPriority) | quote }}
- {{ printf "--fqdn-min-ttl=%s" .Values.fqdn.minTtl | quote }}
- {{ printf "--fqdn-max-ttl=%s" .Values.fqdn.maxTtl | quote }}
- {{ printf "--fqdn-grace=%s" .Values.fqdn.grace | quote }}
- {{ printf "--dns-service=%s/%s" $dns.namespace $dns.name | quote }}
- {{ printf "--metrics-addr=%s" (include "tollgate-spoke.metricsAddr" .) | quote }}
- {{ printf "--log-level=%s" .Values.logLevel | quote }}
- {{ printf "--log-format=%s" .Values.logFormat | quote }}
{{- range .Values.extraArgs }}
- {{ toString . | quote }}
{{- end }}
{{- end }}
