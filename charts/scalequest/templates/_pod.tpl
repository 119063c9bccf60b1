{{/*
Pod building blocks shared by the Deployments, the bootstrap Job, the training Jobs and the
test pods: images, GPU resources, RuntimeClass, tolerations, the writable volumes of a
read-only root filesystem, and the training pod spec.
*/}}

{{- define "scalequest.image" -}}
{{- $root := .root }}
{{- $repo := default (printf "%s-%s" $root.Values.image.repository .name) .c.image.repository }}
{{- $tag := default (printf "%s-%s" (default $root.Chart.AppVersion $root.Values.image.tag) .c.image.flavor) .c.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* RuntimeClass of a pod: its own, else the GPU one when it asks for GPUs. Args:
     (dict "root" $ "runtimeClassName" ... "gpuCount" n) */}}
{{- define "scalequest.runtimeClassName" -}}
{{- if .runtimeClassName }}
{{- .runtimeClassName }}
{{- else if gt (int .gpuCount) 0 }}
{{- .root.Values.gpu.runtimeClassName }}
{{- end }}
{{- end }}

{{/* Container resources with the GPU limit added (an extended resource's request defaults
     to its limit). Args: (dict "root" $ "resources" ... "gpuCount" n) */}}
{{- define "scalequest.resources" -}}
{{- $res := deepCopy (default dict .resources) }}
{{- if gt (int .gpuCount) 0 }}
{{- $limits := default dict (get $res "limits") }}
{{- $_ := set $limits .root.Values.gpu.resourceName (int .gpuCount) }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* Tolerations: the pod's own plus the GPU ones when it asks for GPUs. */}}
{{- define "scalequest.tolerations" -}}
{{- $t := concat (default list .tolerations) (ternary .root.Values.gpu.tolerations list (gt (int .gpuCount) 0)) }}
{{- if $t }}
{{- toYaml $t }}
{{- end }}
{{- end }}

{{/* Writable volumes of every pod (the root filesystem is read-only). Args:
     (dict "root" $ "shm" bool "shmSizeLimit" q) */}}
{{- define "scalequest.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.volumes.tmpSizeLimit }}
- name: home
  emptyDir:
    sizeLimit: {{ .root.Values.volumes.homeSizeLimit }}
- name: cache
{{- if .root.Values.volumes.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .root.Values.volumes.cache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .root.Values.volumes.cache.sizeLimit }}
{{- end }}
{{- if .shm }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSizeLimit }}
{{- end }}
{{- if and .store (not (include "scalequest.isS3" .root)) }}
- name: store
  persistentVolumeClaim:
    claimName: {{ .root.Values.objectStore.existingClaim }}
{{- end }}
{{- end }}

{{- define "scalequest.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/scalequest
- name: cache
  mountPath: /home/scalequest/.cache
{{- if .shm }}
- name: shm
  mountPath: /dev/shm
{{- end }}
{{- if and .store (not (include "scalequest.isS3" .root)) }}
- name: store
  mountPath: {{ trimPrefix "file://" .root.Values.objectStore.url }}
{{- end }}
{{- end }}

{{/* Whether a component is up with at least one replica (helm tests skip stages that KEDA
     may have scaled to zero). */}}
{{- define "scalequest.alwaysRunning" -}}
{{- if and .enabled (or (not .autoscaling.keda.enabled) (gt (int .autoscaling.keda.minReplicas) 0)) (or .autoscaling.keda.enabled .autoscaling.hpa.enabled (gt (int .replicaCount) 0)) }}true{{ end }}
{{- end }}

{{/* Pod spec of a training Job. Args: (dict "root" $ "jname" n "j" merged-job "gpus" n "image" i "ctx" c) */}}
{{- define "scalequest.trainingPodSpec" -}}
{{- $root := .root }}
{{- $j := .j }}
{{- $gpus := .gpus }}
restartPolicy: Never
serviceAccountName: {{ include "scalequest.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "scalequest.runtimeClassName" (dict "root" $root "runtimeClassName" $j.runtimeClassName "gpuCount" $gpus) }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $j.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $j.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "scalequest.tolerations" (dict "root" $root "tolerations" $j.tolerations "gpuCount" $gpus) }}
tolerations:
  {{- . | nindent 2 }}
{{- end }}
{{- with $j.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: trainer
    image: {{ .image }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    # Relative paths (checkpoints, downloads) land on the scratch volume.
    workingDir: /work
    command:
      {{- toYaml $j.command | nindent 6 }}
    {{- with $j.args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    env:
      - name: SQ_TRAIN_JOB
        value: {{ .jname | quote }}
      - name: SQ_NATS_URL
        value: {{ include "scalequest.natsUrl" $root | quote }}
      - name: SQ_STORE_URL
        value: {{ $root.Values.objectStore.url | quote }}
      {{- range $k, $uri := $j.inputs }}
      - name: {{ printf "SQ_TRAIN_INPUT_%s" (upper $k) }}
        value: {{ $uri | quote }}
      {{- end }}
      {{- range $k, $uri := $j.outputs }}
      - name: {{ printf "SQ_TRAIN_OUTPUT_%s" (upper $k) }}
        value: {{ $uri | quote }}
      {{- end }}
      {{- range $k, $val := $j.env }}
      - name: {{ $k }}
        value: {{ include "scalequest.envValue" $val | quote }}
      {{- end }}
      {{- with include "scalequest.s3Env" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with include "scalequest.secretEnv" (default dict $j.secretEnv) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- /* streaming SFT follows a run over NATS: the read-only trainer user */}}
      {{- with include "scalequest.natsAuthEnv" (dict "root" $root "user" "trainer") | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with include "scalequest.tlsEnv" (dict "root" $root "grpc" false "nats" true) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
    resources:
      {{- include "scalequest.resources" (dict "root" $root "resources" $j.resources "gpuCount" $gpus) | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      {{- include "scalequest.volumeMounts" (dict "root" $root "shm" true "store" false) | nindent 6 }}
      - name: scratch
        mountPath: /work
      {{- with include "scalequest.tlsVolumeMounts" (dict "root" $root "grpc" false "nats" true) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
volumes:
  {{- include "scalequest.volumes" (dict "root" $root "shm" true "shmSizeLimit" $j.shmSizeLimit "store" false) | nindent 2 }}
  - name: scratch
    emptyDir:
      sizeLimit: {{ $j.scratchSizeLimit }}
  {{- with include "scalequest.tlsVolumes" (dict "root" $root "grpc" false "nats" true) | trim }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end }}
