{{/*
Names, labels and the per-service building blocks. Every per-service object (Deployment, Service, PDB, HPA,
ServiceMonitor, NetworkPolicy, ServiceAccount) is rendered by one named template called for each entry of
"faultline.services", so the five services never drift apart.
*/}}

{{- define "faultline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "faultline.fullname" -}}
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

{{- define "faultline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The services: values key -> object/CLI name. */}}
{{- define "faultline.services" -}}
inference: inference
embedding: embedding
detector: detector
rca: rca
kgBuilder: kg-builder
{{- end -}}

{{- define "faultline.labels" -}}
helm.sh/chart: {{ include "faultline.chart" . }}
app.kubernetes.io/name: {{ include "faultline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: faultline
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "faultline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "faultline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* ctx: dict root, name, svc */}}
{{- define "faultline.componentLabels" -}}
{{ include "faultline.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "faultline.componentSelector" -}}
{{ include "faultline.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "faultline.componentName" -}}
{{- printf "%s-%s" (include "faultline.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "faultline.metadataAnnotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "faultline.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{ include "faultline.componentName" . }}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/* image: dict root, image */}}
{{- define "faultline.image" -}}
{{- $registry := .image.registry -}}
{{- if .root.Values.global.imageRegistry -}}{{- $registry = .root.Values.global.imageRegistry -}}{{- end -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString -}}
{{- $ref := printf "%s:%s" .image.repository $tag -}}
{{- if .image.digest -}}{{- $ref = printf "%s@%s" .image.repository .image.digest -}}{{- end -}}
{{- if $registry -}}{{- printf "%s/%s" $registry $ref -}}{{- else -}}{{- $ref -}}{{- end -}}
{{- end -}}

{{- define "faultline.cpuImage" -}}
{{ include "faultline.image" (dict "root" . "image" .Values.image) }}
{{- end -}}

{{- define "faultline.podSecurityContext" -}}
{{- if .Values.podSecurityContext.enabled -}}
{{- toYaml (omit .Values.podSecurityContext "enabled") -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{- define "faultline.containerSecurityContext" -}}
{{- if .Values.containerSecurityContext.enabled -}}
{{- toYaml (omit .Values.containerSecurityContext "enabled") -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{- define "faultline.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Validation that the schema cannot express (cross-field rules); fails rendering with a readable message. */}}
{{- define "faultline.validate" -}}
{{- $k := .Values.kafka -}}
{{- if and (hasPrefix "SASL" $k.securityProtocol) (or (not $k.sasl.mechanism) (not $k.sasl.existingSecret)) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.mechanism and kafka.sasl.existingSecret (a Secret with the username and password)" $k.securityProtocol) -}}
{{- end -}}
{{- if and (hasSuffix "SSL" $k.securityProtocol) (not $k.tls.existingSecret) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.tls.existingSecret (a Secret with the CA certificate)" $k.securityProtocol) -}}
{{- end -}}
{{- if and (eq .Values.inference.model.source "pvc") .Values.inference.enabled (not .Values.inference.model.existingClaim) -}}
{{- fail "inference.model.source=pvc needs inference.model.existingClaim (the PVC that holds the model)" -}}
{{- end -}}
{{- if and (eq .Values.inference.model.source "initContainer") .Values.inference.enabled (not .Values.inference.model.initContainer.image) -}}
{{- fail "inference.model.source=initContainer needs inference.model.initContainer.image and .command" -}}
{{- end -}}
{{- if and (eq .Values.inference.model.source "replay") .Values.inference.enabled (not .Values.inference.model.replayPath) -}}
{{- fail "inference.model.source=replay needs inference.model.replayPath" -}}
{{- end -}}
{{- $e := .Values.embedding -}}
{{- $single := "the embedding runs as exactly one replica: it slices the telemetry of every partition of the otlp_* topics into one system-wide window, and a second replica would hold only part of the partitions and emit partial windows for the same system and time" -}}
{{- if and $e.enabled (gt (int $e.replicaCount) 1) -}}
{{- fail (printf "embedding.replicaCount=%v: %s (set embedding.replicaCount=1)" $e.replicaCount $single) -}}
{{- end -}}
{{- if and $e.enabled $e.autoscaling.enabled -}}
{{- fail (printf "embedding.autoscaling.enabled=true: %s (keep embedding.autoscaling.enabled=false)" $single) -}}
{{- end -}}
{{- range $key, $name := (include "faultline.services" . | fromYaml) -}}
{{- $svc := index $.Values $key -}}
{{- if and $svc.pdb.minAvailable $svc.pdb.maxUnavailable -}}
{{- fail (printf "%s.pdb: set minAvailable or maxUnavailable, not both" $key) -}}
{{- end -}}
{{- if and $svc.autoscaling.enabled (gt (int $svc.autoscaling.minReplicas) (int $svc.autoscaling.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%v) must not exceed maxReplicas (%v)" $key $svc.autoscaling.minReplicas $svc.autoscaling.maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every Faultline container: Kafka, auth, logging. */}}
{{- define "faultline.commonEnv" -}}
{{- $k := .Values.kafka -}}
- name: FAULTLINE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: FAULTLINE_KAFKA__BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required: the platform's Kafka brokers" $k.bootstrapServers | quote }}
- name: FAULTLINE_KAFKA__CLIENT_ID
  value: {{ $k.clientId | quote }}
- name: FAULTLINE_KAFKA__SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if hasPrefix "SASL" $k.securityProtocol }}
- name: FAULTLINE_KAFKA__SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: FAULTLINE_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $k.sasl.existingSecret | quote }}, key: {{ $k.sasl.usernameKey | quote }}}
- name: FAULTLINE_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $k.sasl.existingSecret | quote }}, key: {{ $k.sasl.passwordKey | quote }}}
{{- end }}
{{- if $k.tls.existingSecret }}
- name: FAULTLINE_KAFKA__SSL_CAFILE
  value: /etc/faultline/kafka-tls/{{ $k.tls.caKey }}
{{- if $k.tls.certKey }}
- name: FAULTLINE_KAFKA__SSL_CERTFILE
  value: /etc/faultline/kafka-tls/{{ $k.tls.certKey }}
{{- end }}
{{- if $k.tls.keyKey }}
- name: FAULTLINE_KAFKA__SSL_KEYFILE
  value: /etc/faultline/kafka-tls/{{ $k.tls.keyKey }}
{{- end }}
{{- end }}
- name: HOME
  value: /tmp
{{- end -}}

{{- define "faultline.kafkaTlsVolume" -}}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "faultline.kafkaTlsMount" -}}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/faultline/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* A native gRPC probe (grpc.health.v1, numeric port) or, for kind=http, an HTTP GET. ctx: dict probe port kind path */}}
{{- define "faultline.probe" -}}
{{- if eq .kind "http" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- else -}}
grpc:
  port: {{ .port }}
  service: ""
{{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/* Keep CPU services off GPU nodes unless the user set their own affinity or picked nodes. */}}
{{- define "faultline.affinity" -}}
{{- if .svc.affinity -}}
{{- toYaml .svc.affinity -}}
{{- else if and (ne .key "inference") .root.Values.cpuNodeAffinity.enabled (not .svc.nodeSelector) -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      - matchExpressions:
          - key: {{ .root.Values.cpuNodeAffinity.gpuNodeLabel }}
            operator: DoesNotExist
{{- end -}}
{{- end -}}

{{/* The OpenAI-compatible endpoint for the agents (rca, kg-builder): llm.baseUrl, else this release's inference. */}}
{{- define "faultline.llmEnv" -}}
{{- $root := . -}}
{{- $url := .Values.llm.baseUrl -}}
{{- if and (not $url) .Values.inference.enabled -}}
{{- $url = printf "http://%s:%v/v1" (include "faultline.componentName" (dict "root" $root "name" "inference")) .Values.inference.service.ports.http -}}
{{- end -}}
{{- $m := .Values.inference.model -}}
{{- $model := .Values.llm.model | default $m.name -}}
{{- if not $model -}}
{{- if eq $m.source "image" }}{{ $model = base $m.imagePath }}{{ else if eq $m.source "replay" }}{{ $model = "replay" }}{{ else }}{{ $model = base $m.subPath }}{{ end -}}
{{- end -}}
{{- if $url }}
- name: FAULTLINE_LLM_BASE_URL
  value: {{ $url | quote }}
- name: FAULTLINE_LLM_MODEL
  value: {{ $model | quote }}
{{- if and (not .Values.llm.baseUrl) .Values.auth.existingSecret }}
{{- /* This release's inference wants the release's bearer token on its OpenAI API too. */}}
- name: FAULTLINE_LLM_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.auth.existingSecret | quote }}, key: {{ .Values.auth.tokenKey | quote }}}
{{- end }}
{{- end }}
{{- end -}}
