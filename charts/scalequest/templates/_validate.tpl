{{/*
Checks across values that values.schema.json cannot express. Each failure is one readable
sentence naming the values involved and what to set instead. Included by NOTES.txt (install
and upgrade) and by configmap.yaml (so `helm template` fails the same way).
*/}}
{{- define "scalequest.validate" -}}
{{- $v := .Values }}
{{- /* queue */}}
{{- if and (not $v.nats.enabled) (not $v.externalNats.url) }}
{{- fail "\n\nscalequest: no NATS at all: enable the bundled server (nats.enabled=true) or point at an existing JetStream server (externalNats.url=nats://HOST:4222)." }}
{{- end }}
{{- if and $v.nats.enabled $v.externalNats.url }}
{{- fail (printf "\n\nscalequest: both nats.enabled=true and externalNats.url=%s are set; use one NATS: the bundled one or the external one." $v.externalNats.url) }}
{{- end }}
{{- if and $v.nats.enabled (gt (int $v.queue.replicas) 1) (not (dig "config" "cluster" "enabled" false $v.nats)) }}
{{- fail (printf "\n\nscalequest: queue.replicas=%d needs a clustered NATS: set nats.config.cluster.enabled=true (or queue.replicas=1)." (int $v.queue.replicas)) }}
{{- end }}
{{- /* object store */}}
{{- if hasPrefix "s3://" $v.objectStore.url }}
{{- if and (not $v.objectStore.s3.endpoint) (not $v.minio.enabled) }}
{{- fail (printf "\n\nscalequest: objectStore.url=%s is S3 but there is no endpoint: set objectStore.s3.endpoint (e.g. https://s3.REGION.amazonaws.com) or minio.enabled=true." $v.objectStore.url) }}
{{- end }}
{{- else if not $v.objectStore.existingClaim }}
{{- fail (printf "\n\nscalequest: objectStore.url=%s is a directory, but pods have a read-only root filesystem and no shared disk: set objectStore.existingClaim to a ReadWriteMany PVC, or use an s3:// URL." $v.objectStore.url) }}
{{- end }}
{{- /* security: NATS users, TLS, no secret in a ConfigMap */}}
{{- if and $v.natsAuth.enabled (not $v.natsAuth.existingSecret) }}
{{- fail "\n\nscalequest: natsAuth.enabled needs natsAuth.existingSecret: a Secret with one password per NATS user (keys questiongen, filter, solver, reward, coordinator, admin, trainer; see docs/security.md)." }}
{{- end }}
{{- if and $v.natsAuth.enabled $v.nats.enabled (not (dig "config" "merge" "authorization" "" $v.nats)) }}
{{- fail "\n\nscalequest: natsAuth.enabled with the bundled NATS needs the server's users: put the output of `scalequest nats-config --format json` (its \"authorization\" object) under nats.config.merge.authorization." }}
{{- end }}
{{- range $kind := list "grpc" "nats" }}
{{- $t := index $v.tls $kind }}
{{- if and $t.enabled (not $t.existingSecret) }}
{{- fail (printf "\n\nscalequest: tls.%s.enabled needs tls.%s.existingSecret (a Secret with ca.crt, tls.crt and tls.key, e.g. from cert-manager)." $kind $kind) }}
{{- end }}
{{- end }}
{{- $secretName := "(^|_)(PASSWORD|PASSWD|SECRET|TOKEN|APIKEY|API_KEY|ACCESS_KEY|CREDENTIALS?)(_|$)" }}
{{- /* components */}}
{{- $managed := include "scalequest.managedSettings" . | fromJson }}
{{- range $k, $_ := $v.common.config }}
{{- if hasKey $managed $k }}
{{- fail (printf "\n\nscalequest: common.config.%s is set by the chart; set %s instead." $k (get $managed $k)) }}
{{- end }}
{{- if regexMatch $secretName $k }}
{{- fail (printf "\n\nscalequest: common.config.%s looks like a secret and would be stored in a ConfigMap; reference a Secret with common.secretEnv.%s: {name: ..., key: ...} instead." $k $k) }}
{{- end }}
{{- end }}
{{- $anyKeda := false }}
{{- range $name := splitList " " (include "scalequest.components" .) }}
{{- $c := index $v $name }}
{{- if $c.enabled }}
{{- range $k, $_ := $c.config }}
{{- if hasKey $managed $k }}
{{- fail (printf "\n\nscalequest: %s.config.%s is set by the chart; set %s instead." $name $k (replace "<component>" $name (get $managed $k))) }}
{{- end }}
{{- if regexMatch $secretName $k }}
{{- fail (printf "\n\nscalequest: %s.config.%s looks like a secret and would be stored in a ConfigMap; reference a Secret with %s.secretEnv.%s: {name: ..., key: ...} instead." $name $k $name $k) }}
{{- end }}
{{- end }}
{{- if and $v.tls.grpc.enabled (has (int $v.tls.grpc.healthPort) (list (int $c.ports.grpc) (int $c.ports.metrics))) }}
{{- fail (printf "\n\nscalequest: tls.grpc.healthPort=%d clashes with a port of %s; pick another port." (int $v.tls.grpc.healthPort) $name) }}
{{- end }}
{{- $hpa := $c.autoscaling.hpa }}
{{- $keda := $c.autoscaling.keda }}
{{- if and $hpa.enabled $keda.enabled }}
{{- fail (printf "\n\nscalequest: %s has both autoscaling.hpa.enabled and autoscaling.keda.enabled; KEDA creates its own HPA, so enable only one." $name) }}
{{- end }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail (printf "\n\nscalequest: %s.autoscaling.hpa.minReplicas (%d) is above maxReplicas (%d)." $name (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- end }}
{{- if and $keda.enabled (gt (int $keda.minReplicas) (int $keda.maxReplicas)) }}
{{- fail (printf "\n\nscalequest: %s.autoscaling.keda.minReplicas (%d) is above maxReplicas (%d)." $name (int $keda.minReplicas) (int $keda.maxReplicas)) }}
{{- end }}
{{- if $keda.enabled }}{{ $anyKeda = true }}{{ end }}
{{- if eq $name "coordinator" }}
{{- if or (gt (int $c.replicaCount) 1) $hpa.enabled $keda.enabled }}
{{- fail "\n\nscalequest: the coordinator runs as exactly one replica (it owns runs in memory and names its shard writer by SQ_WRITER_ID): set coordinator.replicaCount=1 and leave its autoscaling off." }}
{{- end }}
{{- end }}
{{- if and (not (kindIs "invalid" $c.pdb.minAvailable)) (not (kindIs "invalid" $c.pdb.maxUnavailable)) $c.pdb.enabled }}
{{- fail (printf "\n\nscalequest: %s.pdb sets both minAvailable and maxUnavailable; a PodDisruptionBudget takes one (set the other to null)." $name) }}
{{- end }}
{{- $rc := include "scalequest.runtimeClassName" (dict "root" $ "runtimeClassName" $c.runtimeClassName "gpuCount" $c.gpu.count) }}
{{- if and (gt (int $c.gpu.count) 0) (not $rc) $v.gpu.requireRuntimeClass }}
{{- fail (printf "\n\nscalequest: %s requests %d GPU(s) but has no RuntimeClass: set gpu.runtimeClassName (e.g. nvidia, see k8s/runtimeclass-nvidia.yaml) or %s.runtimeClassName, or gpu.requireRuntimeClass=false where the default runtime exposes GPUs." $name (int $c.gpu.count) $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $anyKeda (not (include "scalequest.natsMonitoringEndpoint" .)) }}
{{- fail "\n\nscalequest: KEDA autoscaling reads consumer lag from the NATS monitoring endpoint, which is unknown for an external NATS: set externalNats.monitoringEndpoint (host:8222)." }}
{{- end }}
{{- /* training */}}
{{- if $v.training.enabled }}
{{- range $jname, $job := $v.training.jobs }}
{{- if $job.enabled }}
{{- $j := mergeOverwrite (deepCopy $v.training.defaults) (deepCopy $job) }}
{{- if not $j.command }}
{{- fail (printf "\n\nscalequest: training.jobs.%s.command is empty; give the trainer entrypoint, e.g. [scalequest, train, %s]." $jname $jname) }}
{{- end }}
{{- $rc := include "scalequest.runtimeClassName" (dict "root" $ "runtimeClassName" $j.runtimeClassName "gpuCount" $j.gpuCount) }}
{{- if and (gt (int $j.gpuCount) 0) (not $rc) $v.gpu.requireRuntimeClass }}
{{- fail (printf "\n\nscalequest: training.jobs.%s requests %d GPU(s) but has no RuntimeClass: set gpu.runtimeClassName or training.jobs.%s.runtimeClassName, or gpu.requireRuntimeClass=false." $jname (int $j.gpuCount) $jname) }}
{{- end }}
{{- if and (not (hasPrefix "s3://" $v.objectStore.url)) (or $j.inputs $j.outputs) (not $v.objectStore.s3.endpoint) (not $v.minio.enabled) }}
{{- fail (printf "\n\nscalequest: training.jobs.%s reads and writes s3:// URIs but no S3 endpoint is configured: set objectStore.s3.endpoint or minio.enabled=true." $jname) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
