{{- define "mixprec.name" -}}{{ .Release.Name }}-mixprec{{- end -}}
{{- define "mixprec.dbEnv" -}}
- name: MIXPREC_DB
{{- if .Values.database.existingSecret }}
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret }}, key: {{ .Values.database.secretKey }}}
{{- else }}
  value: {{ required "database.url or database.existingSecret is required" .Values.database.url | quote }}
{{- end }}
{{- end -}}
