{{/*
Configuration: endpoints of NATS and the object store, the SQ_* settings of each component
(its ConfigMap), and the environment read outside the settings classes, rendered as the
strings pydantic-settings parses.
*/}}

{{- define "scalequest.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc.cluster.local:4222" (include "scalequest.subchartFullname" (dict "root" . "chart" "nats" "values" .Values.nats)) .Release.Namespace }}
{{- else }}
{{- .Values.externalNats.url }}
{{- end }}
{{- end }}

{{- define "scalequest.natsMonitoringEndpoint" -}}
{{- if .Values.nats.enabled }}
{{- printf "%s-headless.%s.svc.cluster.local:8222" (include "scalequest.subchartFullname" (dict "root" . "chart" "nats" "values" .Values.nats)) .Release.Namespace }}
{{- else }}
{{- .Values.externalNats.monitoringEndpoint }}
{{- end }}
{{- end }}

{{- define "scalequest.s3Endpoint" -}}
{{- if .Values.objectStore.s3.endpoint }}
{{- .Values.objectStore.s3.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "http://%s.%s.svc.cluster.local:9000" (include "scalequest.subchartFullname" (dict "root" . "chart" "minio" "values" .Values.minio)) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Secret with the S3 keys, and its two key names (as a dict), or an empty name. */}}
{{- define "scalequest.s3Credentials" -}}
{{- $s3 := .Values.objectStore.s3 }}
{{- if $s3.existingSecret }}
{{- dict "name" $s3.existingSecret "accessKey" $s3.accessKeyKey "secretKey" $s3.secretKeyKey | toJson }}
{{- else if and .Values.minio.enabled (not $s3.endpoint) }}
{{- $name := default (include "scalequest.subchartFullname" (dict "root" . "chart" "minio" "values" .Values.minio)) .Values.minio.existingSecret }}
{{- dict "name" $name "accessKey" "rootUser" "secretKey" "rootPassword" | toJson }}
{{- else }}
{{- dict "name" "" | toJson }}
{{- end }}
{{- end }}

{{- define "scalequest.isS3" -}}
{{- if hasPrefix "s3://" .Values.objectStore.url }}true{{ end }}
{{- end }}


{{/* A config value as the string pydantic-settings reads. JSON/YAML numbers reach templates
     as float64, so whole numbers are printed without an exponent (1000000, not 1e+06). */}}
{{- define "scalequest.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ . | int64 | toString }}{{ else }}{{ . | toString }}{{ end }}
{{- else if kindIs "bool" . }}
{{- ternary "true" "false" . }}
{{- else }}
{{- . | toString }}
{{- end }}
{{- end }}


{{/* Settings the chart derives itself; `config` may not set them. name -> where to set it. */}}
{{- define "scalequest.managedSettings" -}}
{{- dict "SQ_NATS_URL" "nats.enabled / externalNats.url" "SQ_STORE_URL" "objectStore.url" "SQ_GRPC_HOST" "listenHost" "SQ_GRPC_PORT" "<component>.ports.grpc" "SQ_METRICS_PORT" "metrics.enabled / <component>.ports.metrics" "SQ_ACK_WAIT_SECONDS" "queue.ackWaitSeconds" "SQ_MAX_DELIVER" "queue.maxDeliver" "SQ_NATS_REPLICAS" "queue.replicas" "SQ_NATS_USER" "natsAuth.enabled" "SQ_NATS_PASSWORD" "natsAuth.existingSecret (never a ConfigMap)" "SQ_GRPC_TLS_CERT" "tls.grpc" "SQ_GRPC_TLS_KEY" "tls.grpc" "SQ_GRPC_TLS_CA" "tls.grpc" "SQ_GRPC_TLS_CLIENT_CA" "tls.grpc.clientAuth" "SQ_GRPC_HEALTH_PORT" "tls.grpc.healthPort" "SQ_NATS_TLS_CA" "tls.nats" "SQ_NATS_TLS_CERT" "tls.nats.clientCert" "SQ_NATS_TLS_KEY" "tls.nats.clientCert" | toJson }}
{{- end }}

{{/* Where the TLS Secrets are mounted (read-only) and the settings that point into them. */}}
{{- define "scalequest.grpcTlsDir" -}}/etc/scalequest/tls/grpc{{- end }}
{{- define "scalequest.natsTlsDir" -}}/etc/scalequest/tls/nats{{- end }}

{{/* TLS settings (file paths, no secret material) as a name -> value dict (JSON).
     Args: (dict "root" $ "grpc" bool "nats" bool) */}}
{{- define "scalequest.tlsSettings" -}}
{{- $v := .root.Values }}
{{- $out := dict }}
{{- if and .grpc $v.tls.grpc.enabled }}
{{- $d := include "scalequest.grpcTlsDir" . }}
{{- $_ := set $out "SQ_GRPC_TLS_CERT" (printf "%s/tls.crt" $d) }}
{{- $_ := set $out "SQ_GRPC_TLS_KEY" (printf "%s/tls.key" $d) }}
{{- $_ := set $out "SQ_GRPC_TLS_CA" (printf "%s/ca.crt" $d) }}
{{- if $v.tls.grpc.clientAuth }}
{{- $_ := set $out "SQ_GRPC_TLS_CLIENT_CA" (printf "%s/ca.crt" $d) }}
{{- end }}
{{- end }}
{{- if and .nats $v.tls.nats.enabled }}
{{- $d := include "scalequest.natsTlsDir" . }}
{{- $_ := set $out "SQ_NATS_TLS_CA" (printf "%s/ca.crt" $d) }}
{{- if $v.tls.nats.clientCert }}
{{- $_ := set $out "SQ_NATS_TLS_CERT" (printf "%s/tls.crt" $d) }}
{{- $_ := set $out "SQ_NATS_TLS_KEY" (printf "%s/tls.key" $d) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The same as env entries, for pods without a ConfigMap (bootstrap, tests, training). */}}
{{- define "scalequest.tlsEnv" -}}
{{- range $k, $val := include "scalequest.tlsSettings" . | fromJson }}
- name: {{ $k }}
  value: {{ $val | quote }}
{{- end }}
{{- end }}

{{/* NATS login of a pod: the user name, and its password by reference to natsAuth.existingSecret
     (key = the user name). Args: (dict "root" $ "user" "<user>") */}}
{{- define "scalequest.natsAuthEnv" -}}
{{- if .root.Values.natsAuth.enabled }}
- name: SQ_NATS_USER
  value: {{ .user | quote }}
- name: SQ_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.natsAuth.existingSecret }}
      key: {{ .user }}
{{- end }}
{{- end }}

{{/* Read-only volumes of the TLS Secrets. Args: (dict "root" $ "grpc" bool "nats" bool) */}}
{{- define "scalequest.tlsVolumes" -}}
{{- $v := .root.Values }}
{{- if and .grpc $v.tls.grpc.enabled }}
- name: tls-grpc
  secret:
    secretName: {{ $v.tls.grpc.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if and .nats $v.tls.nats.enabled }}
- name: tls-nats
  secret:
    secretName: {{ $v.tls.nats.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "scalequest.tlsVolumeMounts" -}}
{{- $v := .root.Values }}
{{- if and .grpc $v.tls.grpc.enabled }}
- name: tls-grpc
  mountPath: {{ include "scalequest.grpcTlsDir" . }}
  readOnly: true
{{- end }}
{{- if and .nats $v.tls.nats.enabled }}
- name: tls-nats
  mountPath: {{ include "scalequest.natsTlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* ConfigMap data of a component: chart-managed connection settings, then common.config,
     then the component's config. Every key is a field of the component's settings class. */}}
{{- define "scalequest.configData" -}}
{{- $root := .root }}
{{- $c := .c }}
{{- $data := dict }}
{{- $_ := set $data "SQ_NATS_URL" (include "scalequest.natsUrl" $root) }}
{{- $_ := set $data "SQ_STORE_URL" $root.Values.objectStore.url }}
{{- $_ := set $data "SQ_GRPC_HOST" $root.Values.listenHost }}
{{- $_ := set $data "SQ_GRPC_PORT" (include "scalequest.envValue" $c.ports.grpc) }}
{{- $_ := set $data "SQ_METRICS_PORT" (ternary (include "scalequest.envValue" $c.ports.metrics) "0" $root.Values.metrics.enabled) }}
{{- $_ := set $data "SQ_ACK_WAIT_SECONDS" (include "scalequest.envValue" $root.Values.queue.ackWaitSeconds) }}
{{- $_ := set $data "SQ_MAX_DELIVER" (include "scalequest.envValue" $root.Values.queue.maxDeliver) }}
{{- $_ := set $data "SQ_NATS_REPLICAS" (include "scalequest.envValue" $root.Values.queue.replicas) }}
{{- range $k, $v := include "scalequest.tlsSettings" (dict "root" $root "grpc" true "nats" true) | fromJson }}
{{- $_ := set $data $k $v }}
{{- end }}
{{- if $root.Values.tls.grpc.enabled }}
{{- $_ := set $data "SQ_GRPC_HEALTH_PORT" (include "scalequest.envValue" $root.Values.tls.grpc.healthPort) }}
{{- end }}
{{- range $k, $v := $root.Values.common.config }}
{{- $_ := set $data $k (include "scalequest.envValue" $v) }}
{{- end }}
{{- range $k, $v := $c.config }}
{{- $_ := set $data $k (include "scalequest.envValue" $v) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* Environment of the S3 client, read outside the settings classes
     (libs/storage/objectstore.py): endpoint, region and the credentials by reference. */}}
{{- define "scalequest.s3Env" -}}
{{- $endpoint := include "scalequest.s3Endpoint" . }}
{{- if $endpoint }}
- name: SQ_S3_ENDPOINT
  value: {{ $endpoint | quote }}
{{- end }}
{{- with .Values.objectStore.s3.region }}
- name: SQ_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- $cred := include "scalequest.s3Credentials" . | fromJson }}
{{- if $cred.name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $cred.name }}
      key: {{ $cred.accessKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $cred.name }}
      key: {{ $cred.secretKey }}
{{- end }}
{{- end }}

{{/* The object-store environment of a service: the S3 client's when the store is S3. */}}
{{- define "scalequest.storeEnv" -}}
{{- if include "scalequest.isS3" . }}
{{- include "scalequest.s3Env" . }}
{{- end }}
{{- end }}

{{/* secretEnv map -> env entries: ENV: {name: secret, key: key} */}}
{{- define "scalequest.secretEnv" -}}
{{- range $env, $ref := . }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secretEnv.%s.name is required" $env) $ref.name }}
      key: {{ required (printf "secretEnv.%s.key is required" $env) $ref.key }}
      {{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
      {{- end }}
{{- end }}
{{- end }}
