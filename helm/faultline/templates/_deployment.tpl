{{/* One service's Deployment. ctx: dict root key name svc */}}
{{- define "faultline.deployment" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $isInference := eq .key "inference" -}}
{{- $image := $root.Values.image -}}
{{- if $isInference }}{{- $image = $svc.image -}}{{- end }}
{{- $mitigate := and (eq .key "detector") $svc.mitigations.kubernetes.enabled -}}
{{- $hasData := has .key (list "embedding" "detector" "kgBuilder") -}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "faultline.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "faultline.componentLabels" . | nindent 4 }}
  {{- include "faultline.metadataAnnotations" $root | nindent 2 }}
spec:
  {{- if not $svc.autoscaling.enabled }}
  replicas: {{ $svc.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if eq .key "embedding" }}
  strategy:
    # One replica only, also during a rollout: a surge Pod would take part of the partitions (partial windows) and
    # write the same stream state file.
    type: Recreate
  {{- else if $isInference }}
  strategy:
    # A GPU node rarely has a spare GPU for a surge Pod: replace one Pod at a time instead.
    type: RollingUpdate
    rollingUpdate: {maxSurge: 0, maxUnavailable: 1}
  {{- end }}
  selector:
    matchLabels:
      {{- include "faultline.componentSelector" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "faultline.componentSelector" . | nindent 8 }}
        app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
        {{- with $svc.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $svc.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "faultline.serviceAccountName" . }}
      automountServiceAccountToken: {{ or $mitigate $root.Values.serviceAccount.automountServiceAccountToken }}
      {{- include "faultline.imagePullSecrets" $root | nindent 6 }}
      securityContext:
        {{- include "faultline.podSecurityContext" $root | nindent 8 }}
      terminationGracePeriodSeconds: {{ $svc.terminationGracePeriodSeconds }}
      {{- if and $isInference $svc.runtimeClassName }}
      runtimeClassName: {{ $svc.runtimeClassName }}
      {{- end }}
      {{- with $svc.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- $nodeSelector := $svc.nodeSelector | default dict }}
      {{- $tolerations := $svc.tolerations | default list }}
      {{- if and $isInference $svc.gpu.enabled }}
      {{- $nodeSelector = merge (deepCopy $nodeSelector) ($svc.gpu.nodeSelector | default dict) }}
      {{- $tolerations = concat ($svc.gpu.tolerations | default list) $tolerations }}
      {{- end }}
      {{- with $nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (include "faultline.affinity" .) }}
      affinity:
        {{- . | nindent 8 }}
      {{- end }}
      {{- with $svc.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if and $isInference (eq $svc.model.source "initContainer") }}
      initContainers:
        - name: fetch-model
          image: {{ $svc.model.initContainer.image }}
          imagePullPolicy: IfNotPresent
          {{- with $svc.model.initContainer.command }}
          command:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            - name: MODEL_DIR
              value: {{ printf "%s/%s" $svc.model.mountPath $svc.model.subPath | quote }}
          securityContext:
            {{- include "faultline.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - {name: model, mountPath: {{ $svc.model.mountPath }}}
            - {name: tmp, mountPath: /tmp}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "faultline.image" (dict "root" $root "image" $image) }}
          imagePullPolicy: {{ $image.pullPolicy }}
          args:
            {{- toYaml $svc.args | nindent 12 }}
          ports:
            - name: grpc
              containerPort: {{ $svc.containerPorts.grpc }}
              protocol: TCP
            {{- if $isInference }}
            - name: http
              containerPort: {{ $svc.containerPorts.http }}
              protocol: TCP
            {{- end }}
            {{- if $root.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          env:
            {{- include "faultline.commonEnv" $root | nindent 12 }}
            - name: FAULTLINE_GRPC__HOST
              value: "0.0.0.0"
            - name: FAULTLINE_GRPC__PORT
              value: {{ $svc.containerPorts.grpc | quote }}
            - name: FAULTLINE_METRICS_PORT
              value: {{ ternary $root.Values.metrics.port 0 $root.Values.metrics.enabled | quote }}
            {{- if $root.Values.auth.existingSecret }}
            - name: FAULTLINE_GRPC__AUTH_TOKEN
              valueFrom:
                secretKeyRef: {name: {{ $root.Values.auth.existingSecret | quote }}, key: {{ $root.Values.auth.tokenKey | quote }}}
            {{- end }}
            {{- if $root.Values.grpcTls.existingSecret }}
            - name: FAULTLINE_GRPC__TLS_CERTFILE
              value: /etc/faultline/grpc-tls/tls.crt
            - name: FAULTLINE_GRPC__TLS_KEYFILE
              value: /etc/faultline/grpc-tls/tls.key
            {{- end }}
            {{- if $isInference }}
            - name: FAULTLINE_HTTP_HOST
              value: "0.0.0.0"
            - name: FAULTLINE_HTTP_PORT
              value: {{ $svc.containerPorts.http | quote }}
            - name: FAULTLINE_ATTENTION_BACKEND
              value: {{ $svc.attentionBackend | quote }}
            {{- if eq $svc.model.source "replay" }}
            - name: FAULTLINE_REPLAY_PATH
              value: {{ $svc.model.replayPath | quote }}
            {{- else if eq $svc.model.source "image" }}
            - name: FAULTLINE_MODEL_PATH
              value: {{ $svc.model.imagePath | quote }}
            {{- else }}
            - name: FAULTLINE_MODEL_PATH
              value: {{ printf "%s/%s" $svc.model.mountPath $svc.model.subPath | quote }}
            {{- end }}
            {{- with $svc.model.name }}
            - name: FAULTLINE_MODEL_NAME
              value: {{ . | quote }}
            {{- end }}
            {{- end }}
            {{- if eq .key "embedding" }}
            - name: FAULTLINE_STATE_PATH
              value: /var/lib/faultline/embedding/state.pickle
            {{- end }}
            {{- if eq .key "detector" }}
            - name: FAULTLINE_DATA_DIR
              value: /var/lib/faultline/detector
            - name: FAULTLINE_KUBERNETES_ENABLED
              value: {{ $mitigate | quote }}
            - name: FAULTLINE_KUBERNETES_NAMESPACE
              value: {{ first (default (list $root.Release.Namespace) $svc.mitigations.kubernetes.namespaces) | quote }}
            {{- with $root.Values.kafka.topics.names }}
            - {name: FAULTLINE_SPANS_TOPIC, value: {{ .spans | quote }}}
            - {name: FAULTLINE_STATES_TOPIC, value: {{ .states | quote }}}
            - {name: FAULTLINE_ALERTS_TOPIC, value: {{ .alerts | quote }}}
            - {name: FAULTLINE_INCIDENTS_TOPIC, value: {{ .incidents | quote }}}
            - {name: FAULTLINE_MITIGATIONS_TOPIC, value: {{ .mitigations | quote }}}
            {{- end }}
            {{- end }}
            {{- if eq .key "rca" }}
            {{- include "faultline.llmEnv" $root | nindent 12 }}
            - {name: FAULTLINE_INCIDENTS_TOPIC, value: {{ $root.Values.kafka.topics.names.incidents | quote }}}
            - {name: FAULTLINE_REPORTS_TOPIC, value: {{ $root.Values.kafka.topics.names.rcaReports | quote }}}
            {{- end }}
            {{- if eq .key "kgBuilder" }}
            {{- include "faultline.llmEnv" $root | nindent 12 }}
            - name: FAULTLINE_STORE_PATH
              value: /var/lib/faultline/kg-builder/kg.sqlite
            - name: FAULTLINE_EXPORT_ROOT
              value: /var/lib/faultline/kg-builder/exports
            - {name: FAULTLINE_RCA_REPORTS_TOPIC, value: {{ $root.Values.kafka.topics.names.rcaReports | quote }}}
            - {name: FAULTLINE_DOCUMENTS_TOPIC, value: {{ $root.Values.kafka.topics.names.documents | quote }}}
            - {name: FAULTLINE_UPDATES_TOPIC, value: {{ $root.Values.kafka.topics.names.kgUpdates | quote }}}
            {{- end }}
            {{- with $root.Values.extraEnvVars }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $svc.extraEnvVars }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if or $root.Values.extraEnvVarsSecret $root.Values.extraEnvVarsCM }}
          envFrom:
            {{- with $root.Values.extraEnvVarsCM }}
            - configMapRef: {name: {{ . | quote }}}
            {{- end }}
            {{- with $root.Values.extraEnvVarsSecret }}
            - secretRef: {name: {{ . | quote }}}
            {{- end }}
          {{- end }}
          {{- $resources := deepCopy ($svc.resources | default dict) }}
          {{- if and $isInference $svc.gpu.enabled }}
          {{- $limits := (get $resources "limits") | default dict }}
          {{- $_ := set $limits $svc.gpu.resourceName ($svc.gpu.count | int) }}
          {{- $_ := set $resources "limits" $limits }}
          {{- end }}
          resources:
            {{- toYaml $resources | nindent 12 }}
          securityContext:
            {{- include "faultline.containerSecurityContext" $root | nindent 12 }}
          {{- $grpcPort := $svc.containerPorts.grpc }}
          {{- if $svc.startupProbe.enabled }}
          startupProbe:
            {{- include "faultline.probe" (dict "probe" $svc.startupProbe "port" $grpcPort "kind" "grpc") | nindent 12 }}
          {{- end }}
          {{- if $svc.livenessProbe.enabled }}
          livenessProbe:
            {{- include "faultline.probe" (dict "probe" $svc.livenessProbe "port" $grpcPort "kind" "grpc") | nindent 12 }}
          {{- end }}
          {{- if $svc.readinessProbe.enabled }}
          readinessProbe:
            {{- if $isInference }}
            {{- include "faultline.probe" (dict "probe" $svc.readinessProbe "port" $svc.containerPorts.http "kind" "http" "path" "/health") | nindent 12 }}
            {{- else }}
            {{- include "faultline.probe" (dict "probe" $svc.readinessProbe "port" $grpcPort "kind" "grpc") | nindent 12 }}
            {{- end }}
          {{- end }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            {{- include "faultline.kafkaTlsMount" $root | nindent 12 }}
            {{- if $root.Values.grpcTls.existingSecret }}
            - {name: grpc-tls, mountPath: /etc/faultline/grpc-tls, readOnly: true}
            {{- end }}
            {{- if $isInference }}
            - {name: dshm, mountPath: /dev/shm}
            {{- if has $svc.model.source (list "pvc" "initContainer") }}
            - {name: model, mountPath: {{ $svc.model.mountPath }}, readOnly: {{ eq $svc.model.source "pvc" }}}
            {{- end }}
            {{- end }}
            {{- if $hasData }}
            - {name: data, mountPath: /var/lib/faultline}
            {{- end }}
            {{- with $svc.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: 1Gi}
        {{- include "faultline.kafkaTlsVolume" $root | nindent 8 }}
        {{- if $root.Values.grpcTls.existingSecret }}
        - name: grpc-tls
          secret: {secretName: {{ $root.Values.grpcTls.existingSecret }}, defaultMode: 0440}
        {{- end }}
        {{- if $isInference }}
        - name: dshm
          emptyDir: {medium: Memory, sizeLimit: {{ $svc.shmSize }}}
        {{- if eq $svc.model.source "pvc" }}
        - name: model
          persistentVolumeClaim: {claimName: {{ $svc.model.existingClaim }}, readOnly: true}
        {{- else if eq $svc.model.source "initContainer" }}
        - name: model
          emptyDir: {sizeLimit: {{ $svc.model.initContainer.sizeLimit }}}
        {{- end }}
        {{- end }}
        {{- if $hasData }}
        - name: data
          {{- if $svc.persistence.enabled }}
          persistentVolumeClaim: {claimName: {{ $svc.persistence.existingClaim | default (include "faultline.componentName" .) }}}
          {{- else }}
          emptyDir: {sizeLimit: 1Gi}
          {{- end }}
        {{- end }}
        {{- with $svc.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}
