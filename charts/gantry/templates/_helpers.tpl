{{/* The chart's name. */}}
{{- define "gantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release's when it contains the chart's name, else <release>-<chart>. */}}
{{- define "gantry.fullname" -}}
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

{{- define "gantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gantry.labels" -}}
helm.sh/chart: {{ include "gantry.chart" . }}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/component: {{ .Values.role | replace "_" "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Whether this node is a control plane / data plane / traditional node ("true" or ""). */}}
{{- define "gantry.isCP" -}}{{ if eq .Values.role "control_plane" }}true{{ end }}{{- end }}
{{- define "gantry.isDP" -}}{{ if eq .Values.role "data_plane" }}true{{ end }}{{- end }}
{{- define "gantry.proxies" -}}{{ if ne .Values.role "control_plane" }}true{{ end }}{{- end }}
{{- define "gantry.hasAdmin" -}}{{ if ne .Values.role "data_plane" }}true{{ end }}{{- end }}
{{- define "gantry.adminExposed" -}}
{{- if and (include "gantry.hasAdmin" .) (eq (toString .Values.admin.expose) "true") }}true{{ end }}
{{- end }}

{{/* The store: `database`, or the role's default. */}}
{{- define "gantry.database" -}}
{{- if .Values.database }}{{ .Values.database }}{{ else if eq .Values.role "data_plane" }}off{{ else }}postgres{{ end }}
{{- end }}

{{/* Whether the HPA is rendered: `autoscaling.enabled`, unset meaning on for data planes only. */}}
{{- define "gantry.autoscaling" -}}
{{- $on := .Values.autoscaling.enabled }}
{{- if kindIs "invalid" $on }}{{ $on = eq .Values.role "data_plane" }}{{ end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* The Secret holding the cluster certificate: the given one, or the one the chart makes. */}}
{{- define "gantry.clusterSecretName" -}}
{{- if .Values.cluster.existingSecret }}{{ .Values.cluster.existingSecret }}{{ else }}{{ include "gantry.fullname" . }}-cluster-cert{{ end }}
{{- end }}

{{/* Whether the node uses cluster certificates (control and data planes). */}}
{{- define "gantry.hybrid" -}}{{ if ne .Values.role "traditional" }}true{{ end }}{{- end }}

{{/* Whether the chart generates the cluster certificate. */}}
{{- define "gantry.generateCert" -}}
{{- if and (include "gantry.isCP" .) (not .Values.cluster.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Check the values; stop rendering, naming the value, when they cannot make a working node.
*/}}
{{- define "gantry.validate" -}}
{{- $roles := list "control_plane" "data_plane" "traditional" }}
{{- if not (has .Values.role $roles) }}
{{- fail (printf "role %q is not one of control_plane, data_plane, traditional" (toString .Values.role)) }}
{{- end }}
{{- $db := include "gantry.database" . }}
{{- if not (has $db (list "postgres" "sqlite" "off")) }}
{{- fail (printf "database %q is not one of postgres, sqlite, off" $db) }}
{{- end }}
{{- if and (eq .Values.role "data_plane") (ne $db "off") }}
{{- fail (printf "database %q: a data plane has no database (leave database empty, or off)" $db) }}
{{- end }}
{{- if and (ne .Values.role "data_plane") (eq $db "off") }}
{{- fail (printf "database \"off\": a %s needs a store (postgres, or sqlite for one replica)" .Values.role) }}
{{- end }}
{{- if and (eq $db "postgres") (not .Values.postgres.host) }}
{{- fail (printf "postgres.host is required for a %s with database postgres" .Values.role) }}
{{- end }}
{{- if and (eq $db "sqlite") (or (ne (int .Values.replicaCount) 1) (include "gantry.autoscaling" .)) }}
{{- fail "database sqlite: one replica only (replicaCount 1, autoscaling.enabled false): each pod would have a store of its own" }}
{{- end }}
{{- if and (eq $db "sqlite") (include "gantry.adminExposed" .) }}
{{- fail "database sqlite with admin.expose: an exposed Admin API needs an access token in the store, and a new pod's SQLite store is empty; use postgres" }}
{{- end }}
{{- if not (has .Values.cluster.mtls (list "shared" "pki")) }}
{{- fail (printf "cluster.mtls %q is not one of shared, pki" (toString .Values.cluster.mtls)) }}
{{- end }}
{{- if and (include "gantry.hybrid" .) (not .Values.cluster.existingSecret) }}
{{- if eq .Values.cluster.mtls "pki" }}
{{- fail "cluster.existingSecret is required in pki mode: a Secret with tls.crt, tls.key and ca.crt (the chart generates certificates in shared mode only)" }}
{{- end }}
{{- if include "gantry.isDP" . }}
{{- fail "cluster.existingSecret is required for a data_plane: the Secret holding the control plane's cluster certificate in shared mode (a control plane release of this chart makes <release>-gantry-cluster-cert), or one the cluster CA signed in pki mode" }}
{{- end }}
{{- end }}
{{- if and (include "gantry.isDP" .) (not .Values.cluster.controlPlane) }}
{{- fail "cluster.controlPlane is required for a data_plane: the control plane's cluster address, host:port (e.g. <release>-gantry.<namespace>.svc:8005)" }}
{{- end }}
{{- if gt (len .Values.cluster.dpLabels) 10 }}
{{- fail (printf "cluster.dpLabels: %d labels, at most 10" (len .Values.cluster.dpLabels)) }}
{{- end }}
{{- if and (include "gantry.autoscaling" .) (not (dig "requests" "cpu" "" (.Values.resources | default dict))) }}
{{- fail "autoscaling needs resources.requests.cpu: the CPU target is a share of it" }}
{{- end }}
{{- $drain := add (int .Values.drain.preStopSeconds) (int .Values.drain.timeoutSeconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds %d must exceed drain.preStopSeconds + drain.timeoutSeconds (%d)" (int .Values.terminationGracePeriodSeconds) $drain) }}
{{- end }}
{{- end }}

{{/*
The container's environment: the chart's KONG_* variables, then `extraEnv` (which replaces a
variable of the same name).
*/}}
{{- define "gantry.env" -}}
{{- $v := .Values }}
{{- $db := include "gantry.database" . }}
{{- $env := list }}
{{- $env = append $env (dict "name" "KONG_ROLE" "value" $v.role) }}
{{- $env = append $env (dict "name" "KONG_DATABASE" "value" $db) }}
{{- $env = append $env (dict "name" "KONG_PREFIX" "value" $v.prefix.path) }}
{{- if include "gantry.proxies" . }}
{{- $proxy := printf "0.0.0.0:%d" (int $v.ports.proxy) }}
{{- if $v.proxy.tls }}{{ $proxy = printf "%s, 0.0.0.0:%d ssl" $proxy (int $v.ports.proxyTls) }}{{ end }}
{{- $env = append $env (dict "name" "KONG_PROXY_LISTEN" "value" $proxy) }}
{{- else }}
{{- $env = append $env (dict "name" "KONG_PROXY_LISTEN" "value" "off") }}
{{- end }}
{{- if include "gantry.hasAdmin" . }}
{{- $host := ternary "0.0.0.0" "127.0.0.1" (eq (include "gantry.adminExposed" .) "true") }}
{{- $env = append $env (dict "name" "KONG_ADMIN_LISTEN" "value" (printf "%s:%d" $host (int $v.ports.admin))) }}
{{- else }}
{{- $env = append $env (dict "name" "KONG_ADMIN_LISTEN" "value" "off") }}
{{- end }}
{{- $env = append $env (dict "name" "KONG_STATUS_LISTEN" "value" (printf "0.0.0.0:%d" (int $v.ports.status))) }}
{{- $env = append $env (dict "name" "KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT" "value" (printf "%ds" (int $v.drain.timeoutSeconds))) }}
{{- $env = append $env (dict "name" "KONG_LOG_LEVEL" "value" $v.log.level) }}
{{- $env = append $env (dict "name" "KONG_LOG_FORMAT" "value" $v.log.format) }}
{{- $env = append $env (dict "name" "KONG_LOG_ROTATE_SIZE" "value" (toString $v.log.rotateSize)) }}
{{- $env = append $env (dict "name" "KONG_LOG_ROTATE_KEEP" "value" (toString $v.log.rotateKeep)) }}
{{- if include "gantry.hybrid" . }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_MTLS" "value" $v.cluster.mtls) }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_CERT" "value" "/etc/gantry/cluster/tls.crt") }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_CERT_KEY" "value" "/etc/gantry/cluster/tls.key") }}
{{- if eq $v.cluster.mtls "pki" }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_CA_CERT" "value" "/etc/gantry/cluster/ca.crt") }}
{{- end }}
{{- if $v.cluster.serverName }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_SERVER_NAME" "value" $v.cluster.serverName) }}
{{- end }}
{{- end }}
{{- if include "gantry.isCP" . }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_LISTEN" "value" (printf "0.0.0.0:%d" (int $v.ports.cluster))) }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_TELEMETRY_LISTEN" "value" (printf "0.0.0.0:%d" (int $v.ports.telemetry))) }}
{{- end }}
{{- if include "gantry.isDP" . }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_CONTROL_PLANE" "value" $v.cluster.controlPlane) }}
{{- if $v.cluster.dpLabels }}
{{- $labels := list }}
{{- range $k, $val := $v.cluster.dpLabels }}{{ $labels = append $labels (printf "%s:%v" $k $val) }}{{ end }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_DP_LABELS" "value" (join "," $labels)) }}
{{- end }}
{{- if $v.cluster.telemetryEndpoint }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_TELEMETRY_ENDPOINT" "value" $v.cluster.telemetryEndpoint) }}
{{- if $v.cluster.vitals }}
{{- $env = append $env (dict "name" "KONG_VITALS" "value" "on") }}
{{- end }}
{{- end }}
{{- if $v.cluster.telemetryServerName }}
{{- $env = append $env (dict "name" "KONG_CLUSTER_TELEMETRY_SERVER_NAME" "value" $v.cluster.telemetryServerName) }}
{{- end }}
{{- if $v.cluster.trustedCertificate }}
{{- $env = append $env (dict "name" "KONG_LUA_SSL_TRUSTED_CERTIFICATE" "value" $v.cluster.trustedCertificate) }}
{{- end }}
{{- end }}
{{- if eq $db "postgres" }}
{{- $env = append $env (dict "name" "KONG_PG_HOST" "value" $v.postgres.host) }}
{{- $env = append $env (dict "name" "KONG_PG_PORT" "value" (toString (int $v.postgres.port))) }}
{{- $env = append $env (dict "name" "KONG_PG_USER" "value" $v.postgres.user) }}
{{- $env = append $env (dict "name" "KONG_PG_DATABASE" "value" $v.postgres.database) }}
{{- if $v.postgres.schema }}
{{- $env = append $env (dict "name" "KONG_PG_SCHEMA" "value" $v.postgres.schema) }}
{{- end }}
{{- if $v.postgres.existingSecret }}
{{- $ref := dict "name" $v.postgres.existingSecret "key" $v.postgres.passwordKey }}
{{- $env = append $env (dict "name" "KONG_PG_PASSWORD" "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- end }}
{{- end }}
{{- $given := list }}
{{- range $v.extraEnv }}{{ $given = append $given .name }}{{ end }}
{{- $out := list }}
{{- range $env }}{{ if not (has .name $given) }}{{ $out = append $out . }}{{ end }}{{ end }}
{{- toYaml (concat $out $v.extraEnv) }}
{{- end }}
