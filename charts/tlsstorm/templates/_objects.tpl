{{/* The Deployment and Service every component gets: one place hardens every pod. */}}

{{- define "tlsstorm.deployment" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
{{- $settings := include "tlsstorm.settings" (dict "root" $root "key" $spec.settingsKey) | fromYaml -}}
{{- $names := dict "root" $root "component" .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "tlsstorm.name" $names }}
  labels:
    {{- include "tlsstorm.labels" $names | nindent 4 }}
spec:
  {{- $replicas := $spec.replicas | default $settings.replicas }}
  replicas: {{ $replicas }}
  {{- if $spec.strategy }}
  strategy: {type: {{ $spec.strategy }}}
  {{- else if gt (int $replicas) 1 }}
  {{- /* One pod away at a time, as the PodDisruptionBudget allows, and no pod beyond the
  replicas: a rollout needs no room the release does not already hold (on a full node a
  surge pod waits Pending and the rollout never ends). One replica: a surge pod first. */}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}
  {{- end }}
  selector:
    matchLabels:
      {{- include "tlsstorm.selectorLabels" $names | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "tlsstorm.labels" $names | nindent 8 }}
      {{- with $settings.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      automountServiceAccountToken: false
      {{- with $spec.terminationGraceSeconds }}
      terminationGracePeriodSeconds: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $settings.podSecurityContext | nindent 8 }}
      {{- with $settings.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $settings.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $settings.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "tlsstorm.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml $spec.command | nindent 12 }}
          {{- with $spec.ports }}
          ports:
            {{- range . }}
            - name: {{ .name }}
              containerPort: {{ .port }}
              protocol: TCP
            {{- end }}
          {{- end }}
          env:
            {{- toYaml $spec.env | nindent 12 }}
            {{- with $settings.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if $spec.execProbe }}
          livenessProbe:
            exec:
              command:
                {{- toYaml $spec.execProbe | nindent 16 }}
            initialDelaySeconds: 10
            periodSeconds: 20
            timeoutSeconds: 5
          readinessProbe:
            exec:
              command:
                {{- toYaml $spec.execProbe | nindent 16 }}
            periodSeconds: 10
            timeoutSeconds: 5
          {{- else }}
          livenessProbe:
            httpGet: {path: {{ $spec.livenessPath | default "/healthz" }}, port: {{ $spec.httpPort }}}
            initialDelaySeconds: 5
            periodSeconds: 10
            timeoutSeconds: 3
          readinessProbe:
            httpGet: {path: {{ $spec.readinessPath | default "/readyz" }}, port: {{ $spec.httpPort }}}
            periodSeconds: 5
            timeoutSeconds: 3
          {{- end }}
          resources:
            {{- toYaml ($spec.resources | default $settings.resources) | nindent 12 }}
          securityContext:
            {{- toYaml $settings.securityContext | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            {{- with $spec.volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        # The root filesystem is read-only; scratch space lives here.
        - name: tmp
          emptyDir: {sizeLimit: 64Mi}
        {{- with $spec.volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{- define "tlsstorm.service" -}}
{{- $names := dict "root" .root "component" .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "tlsstorm.name" $names }}
  labels:
    {{- include "tlsstorm.labels" $names | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "tlsstorm.selectorLabels" $names | nindent 4 }}
  ports:
    {{- range .spec.ports }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
      protocol: TCP
    {{- end }}
{{- end -}}

{{/* At most one replica of a component away at a time in a voluntary disruption (a drain, a
node upgrade): the others keep serving while it finishes its sessions. */}}
{{- define "tlsstorm.disruptionBudget" -}}
{{- $names := dict "root" .root "component" .component -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "tlsstorm.name" $names }}
  labels:
    {{- include "tlsstorm.labels" $names | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "tlsstorm.selectorLabels" $names | nindent 6 }}
{{- end -}}

{{/* The sender replicas, each by its own address (no cluster IP): the replica a wave is
posted to finds the others here and gives each a share. */}}
{{- define "tlsstorm.peersService" -}}
{{- $names := dict "root" . "component" "sender" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "tlsstorm.name" (dict "root" . "component" "sender-peers") }}
  labels:
    {{- include "tlsstorm.labels" $names | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "tlsstorm.selectorLabels" $names | nindent 4 }}
  ports:
    - {name: http, port: 8026, targetPort: http, protocol: TCP}
{{- end -}}

{{/* The Secret the receiver's certificate comes from: the user's, the root CA it issues its
chain from (chain shape) or its self-signed certificate. */}}
{{- define "tlsstorm.receiverTlsSecret" -}}
{{- $tls := .Values.components.receiver.tls -}}
{{- $tls.existingSecret | default (include "tlsstorm.name" (dict "root" . "component" (ternary "receiver-ca" "receiver-tls" (eq $tls.shape "chain")))) -}}
{{- end -}}

{{/* The Secret key holding what a client verifies the receiver against. */}}
{{- define "tlsstorm.receiverTrustKey" -}}
{{- $tls := .Values.components.receiver.tls -}}
{{- ternary "tls.crt" "ca.crt" (and (eq $tls.shape "self-signed") (not $tls.existingSecret)) -}}
{{- end -}}

{{/* The receiver's root CA as Secret data (ca.crt, ca.key): kept from the release's Secret
until rootKeyType changes, else made once per render (so every Secret carrying it, in any
namespace, carries the same root). */}}
{{- define "tlsstorm.receiverRootData" -}}
{{- if not (hasKey .Values "_receiverRootData") -}}
{{- $tls := .Values.components.receiver.tls -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "tlsstorm.receiverTlsSecret" .) -}}
{{- $madeFor := printf "root %s" $tls.rootKeyType -}}
{{- $data := dict -}}
{{- if and $existing (eq (index ($existing.metadata.annotations | default dict) "tlsstorm.io/made-for" | default "") $madeFor) -}}
{{- $data = dict "ca.crt" (index $existing.data "ca.crt") "ca.key" (index $existing.data "ca.key") -}}
{{- else -}}
{{- $root := dict -}}
{{- if eq $tls.rootKeyType "rsa2048" -}}
{{- /* Sprig: genCA makes RSA-2048; genPrivateKey "rsa" makes RSA-4096. */ -}}
{{- $root = genCA "tlsstorm Test Root X1" 7300 -}}
{{- else -}}
{{- $root = genCAWithKey "tlsstorm Test Root X1" 7300 (genPrivateKey (ternary "ecdsa" "rsa" (eq $tls.rootKeyType "ecdsa-p256"))) -}}
{{- end -}}
{{- $data = dict "ca.crt" ($root.Cert | b64enc) "ca.key" ($root.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "_receiverRootData" $data -}}
{{- end -}}
{{- toYaml .Values._receiverRootData -}}
{{- end -}}

{{/* The same root, as a Secret in another namespace (a target's). */}}
{{- define "tlsstorm.receiverCaSecret" -}}
{{- $root := .root -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "tlsstorm.name" (dict "root" $root "component" "receiver-ca") }}
  namespace: {{ .namespace }}
  labels:
    {{- include "tlsstorm.labels" (dict "root" $root "component" "receiver") | nindent 4 }}
  annotations:
    tlsstorm.io/made-for: {{ printf "root %s" $root.Values.components.receiver.tls.rootKeyType | quote }}
type: Opaque
data:
  {{- include "tlsstorm.receiverRootData" $root | nindent 2 }}
{{- end -}}
