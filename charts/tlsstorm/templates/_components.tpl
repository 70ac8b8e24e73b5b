{{/*
What differs between components: command, ports, env, probes, extra volumes. The shared pod
and Service templates (_objects.tpl) render every component from these.
*/}}

{{- define "tlsstorm.component.receiver" -}}
{{- $tls := .Values.components.receiver.tls -}}
{{- $receiver := .Values.components.receiver -}}
{{- $secret := include "tlsstorm.receiverTlsSecret" . -}}
settingsKey: receiver
command: [tlsstorm, receiver]
# The drain (not ready, still serving; then open transactions finish), then the spans' flush,
# which may wait out an export's retries while the collector restarts.
terminationGraceSeconds: {{ add $receiver.drain.delaySeconds $receiver.drain.timeoutSeconds 60 }}
ports:
  - {name: smtp, port: 2525}
  - {name: http, port: 8025}
httpPort: 8025
env:
  - {name: TLSSTORM_RECEIVER_HOST, value: "0.0.0.0"}
  - {name: TLSSTORM_RECEIVER_HOSTNAME, value: {{ include "tlsstorm.name" (dict "root" . "component" "receiver") | quote }}}
  - {name: TLSSTORM_RECEIVER_CERT_SHAPE, value: {{ $tls.shape | quote }}}
  - {name: TLSSTORM_RECEIVER_CERT_KEY_TYPE, value: {{ $tls.keyType | quote }}}
  - {name: TLSSTORM_RECEIVER_CERT_INTERMEDIATES, value: {{ $tls.intermediates | quote }}}
  - {name: TLSSTORM_RECEIVER_CERT_INTERMEDIATE_KEY_TYPE, value: {{ $tls.intermediateKeyType | quote }}}
  {{- $service := include "tlsstorm.name" (dict "root" . "component" "receiver") }}
  - {name: TLSSTORM_RECEIVER_CERT_NAMES, value: {{ printf "%s.%s.svc,%s.%s.svc.cluster.local" $service .Release.Namespace $service .Release.Namespace | quote }}}
  - {name: TLSSTORM_RECEIVER_TLS_MIN_VERSION, value: {{ $tls.minVersion | quote }}}
  - {name: TLSSTORM_RECEIVER_TLS_MAX_VERSION, value: {{ $tls.maxVersion | quote }}}
  - {name: TLSSTORM_RECEIVER_SESSION_TICKETS, value: {{ $tls.sessionTickets | quote }}}
  - {name: TLSSTORM_RECEIVER_REQUIRE_STARTTLS, value: {{ $tls.requireStarttls | quote }}}
  - {name: TLSSTORM_RECEIVER_MEMORY_BUDGET_FRACTION, value: {{ $receiver.memory.budgetFraction | quote }}}
  - {name: TLSSTORM_RECEIVER_TLS_SESSION_MEMORY_KIB, value: {{ $receiver.memory.tlsSessionKiB | quote }}}
  - {name: TLSSTORM_RECEIVER_HANDSHAKE_TIMEOUT_S, value: {{ $receiver.handshakeTimeoutSeconds | quote }}}
  - {name: TLSSTORM_RECEIVER_IDLE_TIMEOUT_S, value: {{ $receiver.idleTimeoutSeconds | quote }}}
  - {name: TLSSTORM_RECEIVER_MAX_MESSAGE_BYTES, value: {{ $receiver.maxMessageBytes | int64 | quote }}}
  - {name: TLSSTORM_RECEIVER_DRAIN_DELAY_S, value: {{ $receiver.drain.delaySeconds | quote }}}
  - {name: TLSSTORM_RECEIVER_DRAIN_TIMEOUT_S, value: {{ $receiver.drain.timeoutSeconds | quote }}}
  {{- with $receiver.gate }}
  - {name: TLSSTORM_RECEIVER_GATE_MODE, value: {{ .mode | quote }}}
  - {name: TLSSTORM_RECEIVER_GATE_DENY, value: {{ join "," (.deny | default list) | quote }}}
  - {name: TLSSTORM_RECEIVER_GATE_ALLOW, value: {{ join "," (.allow | default list) | quote }}}
  - {name: TLSSTORM_RECEIVER_GATE_REQUIRE_SNI, value: {{ .requireSni | default false | quote }}}
  - {name: TLSSTORM_RECEIVER_GATE_DENY_BELOW_TLS13, value: {{ .denyBelowTls13 | default false | quote }}}
  {{- end }}
  {{- if and (eq $tls.shape "chain") (not $tls.existingSecret) }}
  - {name: TLSSTORM_RECEIVER_CA_CERT_FILE, value: /etc/tlsstorm/tls/ca.crt}
  - {name: TLSSTORM_RECEIVER_CA_KEY_FILE, value: /etc/tlsstorm/tls/ca.key}
  {{- else }}
  - {name: TLSSTORM_RECEIVER_CERT_FILE, value: /etc/tlsstorm/tls/tls.crt}
  - {name: TLSSTORM_RECEIVER_KEY_FILE, value: /etc/tlsstorm/tls/tls.key}
  {{- end }}
  {{- include "tlsstorm.otelEnv" (dict "root" . "service" "tlsstorm-receiver") | nindent 2 }}
  {{- include "tlsstorm.tokenEnv" . | nindent 2 }}
volumes:
  - name: tls
    secret: {secretName: {{ $secret }}, defaultMode: 0440}
volumeMounts:
  - {name: tls, mountPath: /etc/tlsstorm/tls, readOnly: true}
{{- end -}}

{{- define "tlsstorm.component.sender" -}}
settingsKey: sender
command: [tlsstorm, sender]
{{- $drain := .Values.components.sender.drain }}
# The drain (waves stopped, messages in flight ended, the API read a last time), then the
# spans' flush, which may wait out an export's retries while the collector restarts.
terminationGraceSeconds: {{ add $drain.delaySeconds $drain.timeoutSeconds 60 }}
ports:
  - {name: http, port: 8026}
httpPort: 8026
env:
  - {name: TLSSTORM_SENDER_HOST, value: "0.0.0.0"}
  - {name: TLSSTORM_SENDER_TARGET, value: {{ include "tlsstorm.receiverTarget" . | quote }}}
  # Only the in-cluster receiver and the release's targets: the sender is a spam cannon.
  - {name: TLSSTORM_ALLOWED_TARGETS, value: {{ include "tlsstorm.allowedTargets" . | quote }}}
  - {name: TLSSTORM_SENDER_MAX_CONCURRENCY, value: {{ .Values.components.sender.maxConcurrency | quote }}}
  - {name: TLSSTORM_SENDER_DRAIN_DELAY_S, value: {{ $drain.delaySeconds | quote }}}
  - {name: TLSSTORM_SENDER_DRAIN_TIMEOUT_S, value: {{ $drain.timeoutSeconds | quote }}}
  {{- if gt (int .Values.components.sender.replicas) 1 }}
  # Every ready replica, by the headless Service: a wave posted to one is split over all.
  - {name: TLSSTORM_SENDER_PEERS, value: {{ printf "%s:8026" (include "tlsstorm.name" (dict "root" . "component" "sender-peers")) | quote }}}
  {{- end }}
  {{- if .Values.components.sender.verifyReceiver }}
  - {name: TLSSTORM_SENDER_CA_FILE, value: /etc/tlsstorm/receiver-root/root.pem}
  {{- end }}
  {{- include "tlsstorm.otelEnv" (dict "root" . "service" "tlsstorm-sender") | nindent 2 }}
  {{- include "tlsstorm.tokenEnv" . | nindent 2 }}
{{- if .Values.components.sender.verifyReceiver }}
volumes:
  # Only the certificate a client trusts, never the keys beside it.
  - name: receiver-root
    secret:
      secretName: {{ include "tlsstorm.receiverTlsSecret" . }}
      defaultMode: 0444
      items: [{key: {{ include "tlsstorm.receiverTrustKey" . }}, path: root.pem}]
volumeMounts:
  - {name: receiver-root, mountPath: /etc/tlsstorm/receiver-root, readOnly: true}
{{- end }}
{{- end -}}

{{- define "tlsstorm.component.collector" -}}
settingsKey: collector
command: [tlsstorm, collector]
ports:
  - {name: http, port: 8027}
httpPort: 8027
env:
  - {name: TLSSTORM_COLLECTOR_HOST, value: "0.0.0.0"}
  - {name: TLSSTORM_COLLECTOR_DB_PATH, value: /data/collector.sqlite}
  - {name: TLSSTORM_COLLECTOR_RETENTION_HOURS, value: {{ .Values.components.collector.retentionHours | quote }}}
  {{- if not (include "tlsstorm.collectorVolume" .) }}
  # No volume: the report says its results began when this pod started.
  - {name: TLSSTORM_COLLECTOR_EPHEMERAL, value: "true"}
  {{- end }}
  {{- $forward := .Values.tracing.forwardEndpoint }}
  {{- if .Values.jaeger.enabled }}
  {{- $forward = printf "http://%s:4318" (include "tlsstorm.name" (dict "root" . "component" "jaeger")) }}
  {{- end }}
  {{- if $forward }}
  - {name: TLSSTORM_FORWARD_OTLP_ENDPOINT, value: {{ $forward | quote }}}
  {{- end }}
{{- if include "tlsstorm.collectorVolume" . }}
# One writer of the SQLite file on its volume: the old pod stops before the new one starts.
strategy: Recreate
{{- end }}
volumes:
  - name: data
    {{- if include "tlsstorm.collectorVolume" . }}
    persistentVolumeClaim: {claimName: {{ include "tlsstorm.name" (dict "root" . "component" "collector") }}}
    {{- else }}
    emptyDir: {}
    {{- end }}
volumeMounts:
  - {name: data, mountPath: /data}
{{- end -}}

{{- define "tlsstorm.locustEnv" -}}
{{- $locust := .Values.components.locust -}}
- {name: LOCUST_TLS_RATIO, value: {{ $locust.tlsRatio | quote }}}
- {name: LOCUST_MESSAGE_SIZE, value: {{ $locust.messageSize | quote }}}
- {name: LOCUST_PER_CONNECTION, value: {{ $locust.perConnection | quote }}}
- {name: LOCUST_TLS_PROFILES, value: {{ $locust.tlsProfiles | default "" | quote }}}
- {name: LOCUST_SMTP_TARGET, value: {{ include "tlsstorm.receiverTarget" . | quote }}}
- {name: TLSSTORM_LOAD_SHAPE, value: {{ $locust.shape | quote }}}
- {name: TLSSTORM_ALLOWED_TARGETS, value: {{ include "tlsstorm.allowedTargets" . | quote }}}
# The servers the web UI offers to aim at, by name (the receiver first: the default).
- {name: TLSSTORM_TARGETS, value: {{ include "tlsstorm.namedTargets" . | quote }}}
{{ include "tlsstorm.otelEnv" (dict "root" . "service" "locust") }}
{{- include "tlsstorm.tokenEnv" . }}
{{- end -}}

{{- define "tlsstorm.component.locust-master" -}}
{{- $locust := .Values.components.locust -}}
settingsKey: locust
command: [locust, -f, /opt/tlsstorm-load/locustfile.py, --master, --class-picker, --otel,
          --web-port, "8089", --host, {{ include "tlsstorm.senderUrl" . | quote }},
          --users, {{ $locust.users | quote }}, --spawn-rate, {{ $locust.spawnRate | quote }}]
ports:
  - {name: web, port: 8089}
  - {name: workers, port: 5557}
httpPort: 8089
livenessPath: /
readinessPath: /
env:
  {{- include "tlsstorm.locustEnv" . | nindent 2 }}
{{- end -}}

{{- define "tlsstorm.component.locust-worker" -}}
{{- $master := include "tlsstorm.name" (dict "root" . "component" "locust-master") -}}
settingsKey: locust
replicas: {{ .Values.components.locust.workers }}
command: [locust, -f, /opt/tlsstorm-load/locustfile.py, --worker, --otel,
          --master-host, {{ $master | quote }}]
ports: []
# A worker has no port of its own: it is alive and ready while it can reach its master.
execProbe: [python3, -c, "import socket; socket.create_connection(('{{ $master }}', 5557), 3)"]
resources: {{ .Values.components.locust.workerResources | toJson }}
env:
  {{- include "tlsstorm.locustEnv" . | nindent 2 }}
{{- end -}}
