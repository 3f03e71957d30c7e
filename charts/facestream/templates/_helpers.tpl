{{- define "facestream.fullname" -}}
{{- printf "%s-facestream" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "facestream.labels" -}}
app.kubernetes.io/name: facestream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "facestream.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "facestream.tokenSecret" -}}
{{- if .Values.api.existingSecret -}}{{ .Values.api.existingSecret }}{{- else -}}{{ include "facestream.fullname" . }}-api{{- end -}}
{{- end -}}

{{/* Environment shared by every facestream container. */}}
{{- define "facestream.env" -}}
- name: FACESTREAM_CONFIG
  value: /etc/facestream/facestream.toml
- name: FACESTREAM_GALLERY__MILVUS_URI
  value: {{ .Values.milvus.uri | quote }}
{{- if .Values.milvus.tokenSecret }}
- name: FACESTREAM_GALLERY__MILVUS_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .Values.milvus.tokenSecret }}, key: token}
{{- end }}
- name: FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: FACESTREAM_STREAM__METRICS__PORT
  value: {{ .Values.metrics.port | quote }}
{{- end -}}

{{- define "facestream.configVolume" -}}
- name: config
  configMap:
    name: {{ include "facestream.fullname" . }}
{{- end -}}

{{- define "facestream.configMount" -}}
- name: config
  mountPath: /etc/facestream
  readOnly: true
{{- end -}}
