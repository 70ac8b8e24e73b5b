{{/* Names, labels and shared values of the tlsstorm chart. */}}

{{- define "tlsstorm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: tlsstorm.name (dict "root" $ "component" "receiver") */}}
{{- define "tlsstorm.name" -}}
{{- printf "%s-%s" (include "tlsstorm.fullname" .root) .component -}}
{{- end -}}

{{- define "tlsstorm.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tlsstorm.labels" -}}
{{ include "tlsstorm.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tlsstorm
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels every pod of this release carries, for NetworkPolicy peers. */}}
{{- define "tlsstorm.releaseSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tlsstorm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* default.* overlaid with components.<key>.*: tlsstorm.settings (dict "root" $ "key" "receiver") */}}
{{- define "tlsstorm.settings" -}}
{{- $component := index .root.Values.components .key | default dict -}}
{{- mustMergeOverwrite (deepCopy .root.Values.default) (deepCopy $component) | toYaml -}}
{{- end -}}

{{- define "tlsstorm.url" -}}
{{- printf "http://%s:%v" (include "tlsstorm.name" (dict "root" .root "component" .component)) .port -}}
{{- end -}}

{{- define "tlsstorm.collectorUrl" -}}
{{- include "tlsstorm.url" (dict "root" . "component" "collector" "port" 8027) -}}
{{- end -}}

{{- define "tlsstorm.senderUrl" -}}
{{- include "tlsstorm.url" (dict "root" . "component" "sender" "port" 8026) -}}
{{- end -}}

{{- define "tlsstorm.receiverTarget" -}}
{{- printf "%s:2525" (include "tlsstorm.name" (dict "root" . "component" "receiver")) -}}
{{- end -}}

{{/* The namespace a target runs in: its own for Postfix (its master must be root), else the
release's. tlsstorm.targetNamespace (dict "root" $ "target" "postfix") */}}
{{- define "tlsstorm.targetNamespace" -}}
{{- (index .root.Values.targets .target).namespace | default .root.Release.Namespace -}}
{{- end -}}

{{/* A target's SMTP address as the senders aim at it and its meter labels its figures. */}}
{{- define "tlsstorm.targetAddress" -}}
{{- printf "%s.%s.svc:2525" (include "tlsstorm.name" (dict "root" .root "component" .target)) (include "tlsstorm.targetNamespace" .) -}}
{{- end -}}

{{/* The enabled targets, in order: tlsstorm.enabledTargets $ | fromJsonArray */}}
{{- define "tlsstorm.enabledTargets" -}}
{{- $found := list -}}
{{- range $name := list "postfix" "exim" -}}
{{- if (index $.Values.targets $name).enabled -}}{{- $found = append $found $name -}}{{- end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/* Where the senders may aim, and Locust's list of servers by name: the receiver, then the
enabled targets. */}}
{{- define "tlsstorm.allowedTargets" -}}
{{- $addresses := list (include "tlsstorm.receiverTarget" .) -}}
{{- range $name := include "tlsstorm.enabledTargets" . | fromJsonArray -}}
{{- $addresses = append $addresses (include "tlsstorm.targetAddress" (dict "root" $ "target" $name)) -}}
{{- end -}}
{{- join "," $addresses -}}
{{- end -}}

{{- define "tlsstorm.namedTargets" -}}
{{- $named := list (printf "receiver=%s" (include "tlsstorm.receiverTarget" .)) -}}
{{- range $name := include "tlsstorm.enabledTargets" . | fromJsonArray -}}
{{- $named = append $named (printf "%s=%s" $name (include "tlsstorm.targetAddress" (dict "root" $ "target" $name))) -}}
{{- end -}}
{{- join "," $named -}}
{{- end -}}

{{- define "tlsstorm.apiTokenSecret" -}}
{{- .Values.apiToken.existingSecret | default (include "tlsstorm.name" (dict "root" . "component" "api-token")) -}}
{{- end -}}

{{/* Where spans go: services -> collector; Locust speaks OTLP/HTTP too (not its gRPC default). */}}
{{- define "tlsstorm.otelEnv" -}}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ include "tlsstorm.collectorUrl" .root | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .root.Values.tracing.sampler | quote }}
- name: OTEL_METRICS_EXPORTER
  value: none
- name: OTEL_LOGS_EXPORTER
  value: none
- name: OTEL_BSP_SCHEDULE_DELAY
  value: "1000"
- name: OTEL_BSP_MAX_QUEUE_SIZE
  value: "65536"
# Seconds (Python's SDK) an export retries: spans wait in the queue while the collector
# restarts (Recreate: the old pod stops, the new one starts and turns ready), none dropped.
- name: OTEL_EXPORTER_OTLP_TIMEOUT
  value: "60"
{{- end -}}

{{- define "tlsstorm.tokenEnv" -}}
{{- if .Values.apiToken.enabled }}
- name: TLSSTORM_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "tlsstorm.apiTokenSecret" . }}
      key: token
{{- end }}
{{- end -}}

{{/* "true" when the collector keeps its results on a volume: persistence on, and a
StorageClass to make it (named, or the cluster's default, as kind and minikube have) or the
claim already there. `helm template` sees no cluster: name the class there. */}}
{{- define "tlsstorm.collectorVolume" -}}
{{- $persistence := .Values.components.collector.persistence -}}
{{- if $persistence.enabled -}}
{{- $claim := lookup "v1" "PersistentVolumeClaim" .Release.Namespace (include "tlsstorm.name" (dict "root" . "component" "collector")) -}}
{{- $default := false -}}
{{- range (lookup "storage.k8s.io/v1" "StorageClass" "" "").items | default list -}}
{{- if eq (dig "metadata" "annotations" "storageclass.kubernetes.io/is-default-class" "" .) "true" -}}
{{- $default = true -}}
{{- end -}}
{{- end -}}
{{- if or $persistence.storageClass $claim $default -}}true{{- end -}}
{{- end -}}
{{- end -}}
