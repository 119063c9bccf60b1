{{/*
Names and labels. Component-specific pieces take a dict:
  (dict "root" $ "name" "<component>" "c" <component values>)
*/}}

{{- define "scalequest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scalequest.fullname" -}}
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

{{- define "scalequest.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The five services, in pipeline order. */}}
{{- define "scalequest.components" -}}
questiongen filter solver reward coordinator
{{- end }}

{{/* Full gRPC service name of a component (what its readiness probe asks for). */}}
{{- define "scalequest.grpcService" -}}
{{- $names := dict "questiongen" "scalequest.questiongen.v1.QuestionGenService" "filter" "scalequest.filter.v1.FilterService" "solver" "scalequest.solver.v1.SolverService" "reward" "scalequest.reward.v1.RewardService" "coordinator" "scalequest.coordinator.v1.CoordinatorService" }}
{{- get $names . }}
{{- end }}

{{/* JetStream stream each component consumes (libs/queue/subjects.py); the durable
     consumer is named after the component. */}}
{{- define "scalequest.stream" -}}
{{- $streams := dict "questiongen" "SQ_GENERATE" "filter" "SQ_FILTER" "solver" "SQ_SOLVE" "reward" "SQ_SCORE" "coordinator" "SQ_SINK" }}
{{- get $streams . }}
{{- end }}

{{- define "scalequest.componentName" -}}
{{- printf "%s-%s" (include "scalequest.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scalequest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scalequest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels every object of the chart carries. app.kubernetes.io/part-of + instance is
     what NetworkPolicies use to recognise the pipeline's own pods. */}}
{{- define "scalequest.labels" -}}
helm.sh/chart: {{ include "scalequest.chart" . }}
{{ include "scalequest.selectorLabels" . }}
app.kubernetes.io/part-of: scalequest
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "scalequest.componentSelectorLabels" -}}
{{ include "scalequest.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "scalequest.componentLabels" -}}
{{ include "scalequest.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Pod selector matching every pod of the pipeline (services, bootstrap, tests, training). */}}
{{- define "scalequest.pipelinePodSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: scalequest
{{- end }}

{{- define "scalequest.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scalequest.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Full name a subchart gives its objects: (dict "root" $ "chart" "nats" "values" .Values.nats) */}}
{{- define "scalequest.subchartFullname" -}}
{{- if .values.fullnameOverride }}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .chart .values.nameOverride }}
{{- if contains $name .root.Release.Name }}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}
