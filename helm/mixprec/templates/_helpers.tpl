{{- define "mixprec.name" -}}{{ .Release.Name }}-mixprec{{- end -}}

{{- define "mixprec.image" -}}
"{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
{{- end -}}

{{/* The worker's image: the CUDA build (tag plus worker.gpu.imageSuffix) when it runs on a GPU. */}}
{{- define "mixprec.workerImage" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.worker.gpu.enabled -}}{{- $tag = printf "%s%s" $tag .Values.worker.gpu.imageSuffix -}}{{- end -}}
"{{ .Values.image.repository }}:{{ $tag }}"
{{- end -}}

{{- define "mixprec.labels" -}}
app.kubernetes.io/name: mixprec
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (list . "controlplane") */}}
{{- define "mixprec.selector" -}}
app.kubernetes.io/name: mixprec
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "mixprec.serviceAccount" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "mixprec.name" .) .Values.serviceAccount.name }}
{{- else }}{{ default "default" .Values.serviceAccount.name }}{{ end -}}
{{- end -}}

{{- define "mixprec.databaseSecret" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}{{ else }}{{ include "mixprec.name" . }}-database{{ end -}}
{{- end -}}

{{- define "mixprec.redisSecret" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecret }}{{ else }}{{ include "mixprec.name" . }}-redis{{ end -}}
{{- end -}}

{{/* The database URL, always from a Secret. */}}
{{- define "mixprec.dbEnv" -}}
{{- if not (or .Values.database.url .Values.database.existingSecret) }}
{{- fail "database.url or database.existingSecret is required" }}
{{- end }}
- name: MIXPREC_DB
  valueFrom:
    secretKeyRef: {name: {{ include "mixprec.databaseSecret" . }}, key: {{ .Values.database.secretKey }}}
{{- end -}}

{{/* Shared by every pod: non-root, seccomp, the pull secrets. */}}
{{- define "mixprec.podSpecCommon" -}}
automountServiceAccountToken: false
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "mixprec.tlsVolume" -}}
- name: tls
  secret: {secretName: {{ .Values.tls.existingSecret }}}
{{- end -}}
