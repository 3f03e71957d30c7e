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

{{/* The chart's own Secret: every secret value given inline in the values. */}}
{{- define "facestream.secretName" -}}
{{ include "facestream.fullname" . }}-secrets
{{- end -}}

{{/*
Where each secret lives, as "name key" (existingSecret wins over an inline value), or ""
when it is not configured at all. One definition, so the Secret, the env and the checks
below never disagree.
*/}}
{{- define "facestream.ref.apiToken" -}}
{{- if .Values.api.existingSecret -}}{{ .Values.api.existingSecret }} {{ .Values.api.existingSecretKey }}
{{- else if .Values.api.token -}}{{ include "facestream.secretName" . }} api-token{{- end -}}
{{- end -}}
{{- define "facestream.ref.milvusToken" -}}
{{- with .Values.gallery.milvus -}}
{{- if .existingSecret -}}{{ .existingSecret }} {{ .existingSecretKey }}
{{- else if .token -}}{{ include "facestream.secretName" $ }} milvus-token{{- end -}}
{{- end -}}
{{- end -}}
{{- define "facestream.ref.cataloguePassword" -}}
{{- with .Values.gallery.catalogue -}}
{{- if .existingSecret -}}{{ .existingSecret }} {{ .existingSecretKey }}
{{- else if .password -}}{{ include "facestream.secretName" $ }} catalogue-password{{- end -}}
{{- end -}}
{{- end -}}
{{- define "facestream.ref.cameras" -}}
{{- if .Values.camerasExistingSecret -}}{{ .Values.camerasExistingSecret }} cameras
{{- else if .Values.cameras -}}{{ include "facestream.secretName" . }} cameras{{- end -}}
{{- end -}}

{{- define "facestream.ref.mqttPassword" -}}
{{- with .Values.bridge.mqtt -}}
{{- if .existingSecret -}}{{ .existingSecret }} {{ .existingSecretKey }}
{{- else if .password -}}{{ include "facestream.secretName" $ }} mqtt-password{{- end -}}
{{- end -}}
{{- end -}}
{{- define "facestream.ref.webhooks" -}}
{{- if .Values.bridge.webhooksExistingSecret -}}{{ .Values.bridge.webhooksExistingSecret }} webhooks
{{- else if .Values.bridge.webhooks -}}{{ include "facestream.secretName" . }} bridge-webhooks{{- end -}}
{{- end -}}

{{- define "facestream.ref.kafkaPassword" -}}
{{- with .Values.kafka.sasl -}}
{{- if .existingSecret -}}{{ .existingSecret }} {{ .existingSecretKey }}
{{- else if .password -}}{{ include "facestream.secretName" $ }} kafka-sasl-password{{- end -}}
{{- end -}}
{{- end -}}

{{/* Kafka certificate files: one projected volume, fixed file names under this folder. */}}
{{- define "facestream.kafkaTLS.dir" -}}/etc/facestream-kafka{{- end -}}
{{- define "facestream.kafkaTLS.ca" -}}
{{- with .Values.kafka.tls.ca }}{{ if or .secret .configMap }}true{{ end }}{{ end -}}
{{- end -}}
{{- define "facestream.kafkaTLS.enabled" -}}
{{- if or (include "facestream.kafkaTLS.ca" .) .Values.kafka.tls.client.secret }}true{{ end -}}
{{- end -}}

{{/* env entry NAME from the secret reference REF ("name key"). */}}
{{- define "facestream.secretEnv" -}}
{{- $ref := splitList " " .ref -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ index $ref 0 }}, key: {{ index $ref 1 }}}
{{- end -}}

{{/*
Checks that stop a render which would deploy pods that cannot share one gallery.
*/}}
{{- define "facestream.validate" -}}
{{- if .Values.milvus }}
{{- fail "values: `milvus.*` moved to `gallery.milvus.*` (uri, token, existingSecret)" }}
{{- end }}
{{- $uri := .Values.gallery.milvus.uri | default "" }}
{{- if or (not $uri) (hasSuffix ".db" $uri) }}
{{- fail "gallery.milvus.uri must name a Milvus server (http://host:19530): Milvus Lite (*.db) and the local server are one machine only, and every pod must reach the same gallery" }}
{{- end }}
{{- $url := .Values.gallery.catalogue.url | default "" }}
{{- if or (not $url) (hasPrefix "sqlite" $url) }}
{{- fail "gallery.catalogue.url must name a shared database (postgresql+psycopg://user@host:5432/db): SQLite is one machine only" }}
{{- end }}
{{- if regexMatch "://[^/@]*:[^/@]*@" $url }}
{{- fail "gallery.catalogue.url holds a password: give the URL without it and the password as gallery.catalogue.password or gallery.catalogue.existingSecret (a Secret, not a ConfigMap)" }}
{{- end }}
{{- if and .Values.api.enabled (not (include "facestream.ref.apiToken" .)) }}
{{- fail "api.token (16+ characters) or api.existingSecret is required: writes to the gallery need a bearer token" }}
{{- end }}
{{- if and (or .Values.api.enabled .Values.pipeline.enabled) (not (include "facestream.ref.milvusToken" .)) (not .Values.gallery.milvus.allowAnonymous) }}
{{- fail "gallery.milvus.token or gallery.milvus.existingSecret is required: whoever can write to an anonymous Milvus can plant faces under any identity. Set gallery.milvus.allowAnonymous=true only if Milvus runs without authorization on a network only facestream reaches" }}
{{- end }}
{{- include "facestream.validateKafka" . }}
{{- if not (has .Values.models.persistence.accessMode (list "ReadWriteMany" "ReadWriteOnce")) }}
{{- fail "models.persistence.accessMode must be ReadWriteMany or ReadWriteOnce" }}
{{- end }}
{{- end -}}

{{/*
Kafka's security values, checked as the pipeline's own settings check them at start-up
(pipeline/config/stream.py), so a half-configured client fails the render, not a pod.
*/}}
{{- define "facestream.validateKafka" -}}
{{- $k := .Values.kafka }}
{{- $protocol := $k.securityProtocol }}
{{- if not (has $protocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) }}
{{- fail (printf "kafka.securityProtocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (got %q)" $protocol) }}
{{- end }}
{{- if hasPrefix "SASL_" $protocol }}
{{- if not (has $k.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) }}
{{- fail (printf "kafka.sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (got %q)" $k.sasl.mechanism) }}
{{- end }}
{{- if or (not $k.sasl.username) (not (include "facestream.ref.kafkaPassword" .)) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.username and kafka.sasl.password or kafka.sasl.existingSecret" $protocol) }}
{{- end }}
{{- else if or $k.sasl.username $k.sasl.password $k.sasl.existingSecret }}
{{- fail (printf "kafka.sasl.* only apply to kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL (not %s)" $protocol) }}
{{- end }}
{{- if and (include "facestream.kafkaTLS.enabled" .) (not (hasSuffix "SSL" $protocol)) }}
{{- fail (printf "kafka.tls.* only apply to kafka.securityProtocol SSL or SASL_SSL (not %s)" $protocol) }}
{{- end }}
{{- if and $k.tls.ca.secret $k.tls.ca.configMap }}
{{- fail "kafka.tls.ca: give secret or configMap, not both" }}
{{- end }}
{{- end -}}

{{/*
Environment, in the parts each pod needs, so no pod holds a secret it never uses (a pod
that can be entered can be read): every pod gets the base (settings file, model store),
the pods that read the gallery its stores, the pods that talk to Kafka its settings.
*/}}
{{- define "facestream.env.base" -}}
- name: FACESTREAM_CONFIG
  value: /etc/facestream/facestream.toml
- name: FACESTREAM_MODELS__STORE
  value: {{ .Values.models.store | quote }}
{{- end -}}

{{/* The one gallery (Milvus server and catalogue database): the API and the pipeline. */}}
{{- define "facestream.env.gallery" -}}
- name: FACESTREAM_GALLERY__MILVUS_URI
  value: {{ .Values.gallery.milvus.uri | quote }}
{{- with include "facestream.ref.milvusToken" . }}
{{ include "facestream.secretEnv" (dict "name" "FACESTREAM_GALLERY__MILVUS_TOKEN" "ref" .) }}
{{- end }}
{{ include "facestream.env.catalogue" . }}
{{- end -}}

{{/* The catalogue alone: the event bridge reads who is enrolled, never a vector. */}}
{{- define "facestream.env.catalogue" -}}
- name: FACESTREAM_GALLERY__CATALOGUE_URL
  value: {{ .Values.gallery.catalogue.url | quote }}
{{- with include "facestream.ref.cataloguePassword" . }}
{{ include "facestream.secretEnv" (dict "name" "FACESTREAM_GALLERY__CATALOGUE_PASSWORD" "ref" .) }}
{{- end }}
- name: FACESTREAM_GALLERY__DATA_DIR
  value: {{ .Values.gallery.dataDir | quote }}
{{- end -}}

{{/*
Kafka: the pipeline's Ray pods only (the API and training never open a Kafka client).
The SASL password comes from a Secret; certificate files from the kafka-tls volume.
*/}}
{{- define "facestream.env.kafka" -}}
- name: FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: FACESTREAM_STREAM__KAFKA__SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: FACESTREAM_STREAM__KAFKA__SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: FACESTREAM_STREAM__KAFKA__SASL_PLAIN_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
{{- with include "facestream.ref.kafkaPassword" . }}
{{ include "facestream.secretEnv" (dict "name" "FACESTREAM_STREAM__KAFKA__SASL_PLAIN_PASSWORD" "ref" .) }}
{{- end }}
{{- end }}
{{- if include "facestream.kafkaTLS.ca" . }}
- name: FACESTREAM_STREAM__KAFKA__SSL_CAFILE
  value: {{ printf "%s/ca.crt" (include "facestream.kafkaTLS.dir" .) | quote }}
{{- end }}
{{- if .Values.kafka.tls.client.secret }}
- name: FACESTREAM_STREAM__KAFKA__SSL_CERTFILE
  value: {{ printf "%s/client.crt" (include "facestream.kafkaTLS.dir" .) | quote }}
- name: FACESTREAM_STREAM__KAFKA__SSL_KEYFILE
  value: {{ printf "%s/client.key" (include "facestream.kafkaTLS.dir" .) | quote }}
{{- end }}
- name: FACESTREAM_STREAM__METRICS__PORT
  value: {{ .Values.metrics.port | quote }}
{{- end -}}

{{/*
Environment of the pipeline driver (`facestream run`). Every Ray node gets it: the driver
runs in the supervisor replica, which Serve may place on the head or on any worker.
*/}}
{{- define "facestream.pipelineEnv" -}}
{{ include "facestream.env.base" . }}
{{ include "facestream.env.gallery" . }}
{{ include "facestream.env.kafka" . }}
{{- with include "facestream.ref.cameras" . }}
{{ include "facestream.secretEnv" (dict "name" "FACESTREAM_STREAM__CAMERAS" "ref" .) }}
{{- end }}
- name: PYTHONPATH
  value: /opt/facestream/rayservice
- name: FACESTREAM_STREAM__ANALYZER__REPLICAS
  value: {{ .Values.pipeline.analyzer.replicas | quote }}
{{- with .Values.pipeline.analyzer.autoscaling }}
{{- if .enabled }}
- name: FACESTREAM_STREAM__ANALYZER__AUTOSCALING__MIN_REPLICAS
  value: {{ .minReplicas | quote }}
- name: FACESTREAM_STREAM__ANALYZER__AUTOSCALING__MAX_REPLICAS
  value: {{ .maxReplicas | quote }}
{{- end }}
{{- end }}
- name: FACESTREAM_STREAM__EMBEDDER__REPLICAS
  value: {{ .Values.pipeline.embedder.replicas | quote }}
{{- with .Values.pipeline.embedder.autoscaling }}
{{- if .enabled }}
- name: FACESTREAM_STREAM__EMBEDDER__AUTOSCALING__MIN_REPLICAS
  value: {{ .minReplicas | quote }}
- name: FACESTREAM_STREAM__EMBEDDER__AUTOSCALING__MAX_REPLICAS
  value: {{ .maxReplicas | quote }}
{{- end }}
{{- end }}
{{- if gt (int .Values.pipeline.workerGroup.gpu) 0 }}
- name: FACESTREAM_STREAM__EMBEDDER__BACKEND
  value: tensorrt
- name: FACESTREAM_STREAM__EMBEDDER__NUM_GPUS
  value: "1"
{{- end }}
{{- end -}}

{{- define "facestream.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "facestream.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{- define "facestream.modelsClaim" -}}
{{- .Values.models.persistence.existingClaim | default (printf "%s-models" (include "facestream.fullname" .)) -}}
{{- end -}}

{{/*
Seeds an empty model store with the image's baked default version, so the first pods
find an active model. Safe when several pods start at once on a ReadWriteMany volume:
each copies into its own temporary folder and renames entries into place only where
absent (rename is atomic; `mv -T` never nests a folder into one that another pod just
moved there), and ACTIVE comes last, because readers treat a store without it as empty.
*/}}
{{- define "facestream.seedModels" -}}
- name: seed-models
  image: {{ include "facestream.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  securityContext: {{- include "facestream.containerSecurityContext" . | nindent 4 }}
  command:
    - sh
    - -ec
    - |
      store={{ .Values.models.store | quote }}; seed={{ .Values.models.seedFrom | quote }}
      if [ -e "$store/ACTIVE" ]; then echo "model store $store: in use"; exit 0; fi
      tmp="$store/.seed-$HOSTNAME"
      rm -rf "$tmp"; mkdir -p "$tmp"; cp -R "$seed/." "$tmp/"
      for entry in "$tmp"/* "$tmp"/.[!.]*; do
        [ -e "$entry" ] || continue
        name="$(basename "$entry")"
        [ "$name" = ACTIVE ] || [ -e "$store/$name" ] || mv -T "$entry" "$store/$name" 2>/dev/null || true
      done
      [ -e "$store/ACTIVE" ] || mv -T "$tmp/ACTIVE" "$store/ACTIVE"
      rm -rf "$tmp"
      echo "model store $store: seeded with $(cat "$store/ACTIVE")"
  volumeMounts:
    - {name: models, mountPath: {{ .Values.models.store }}}
{{- end -}}

{{/* Volumes of every facestream pod: settings, model store, gallery scratch folder. */}}
{{- define "facestream.volumes" -}}
- name: config
  configMap:
    name: {{ include "facestream.fullname" . }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "facestream.modelsClaim" . }}
# gallery.data_dir holds only a lock and scratch files now: the catalogue (and the stored
# face crops) live in the database, the vectors in Milvus.
- name: gallery-scratch
  emptyDir: {}
{{- end -}}

{{- define "facestream.volumeMounts" -}}
- name: config
  mountPath: /etc/facestream
  readOnly: true
- name: models
  mountPath: {{ .Values.models.store }}
- name: gallery-scratch
  mountPath: {{ .Values.gallery.dataDir }}
{{- end -}}

{{/* The Ray pods of the RayService also mount the supervisor module (PYTHONPATH). */}}
{{- define "facestream.rayVolumes" -}}
{{ include "facestream.volumes" . }}
- name: rayservice
  configMap:
    name: {{ include "facestream.fullname" . }}-rayservice
{{- with include "facestream.kafkaTLS.volume" . }}
{{ . }}
{{- end }}
{{- end -}}

{{/* Kafka's certificate files (kafka.tls), for every pod that talks to Kafka. */}}
{{- define "facestream.kafkaTLS.volume" -}}
{{- if include "facestream.kafkaTLS.enabled" . }}
- name: kafka-tls
  projected:
    defaultMode: 288         # 0440: the key is for this user (and fsGroup) only
    sources:
      {{- with .Values.kafka.tls.ca }}
      {{- if .secret }}
      - secret: {name: {{ .secret | quote }}, items: [{key: {{ .key | quote }}, path: ca.crt}]}
      {{- else if .configMap }}
      - configMap: {name: {{ .configMap | quote }}, items: [{key: {{ .key | quote }}, path: ca.crt}]}
      {{- end }}
      {{- end }}
      {{- with .Values.kafka.tls.client }}
      {{- if .secret }}
      - secret:
          name: {{ .secret | quote }}
          items: [{key: {{ .certKey | quote }}, path: client.crt}, {key: {{ .keyKey | quote }}, path: client.key}]
      {{- end }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "facestream.rayVolumeMounts" -}}
{{ include "facestream.volumeMounts" . }}
- name: rayservice
  mountPath: /opt/facestream/rayservice
  readOnly: true
{{- with include "facestream.kafkaTLS.mount" . }}
{{ . }}
{{- end }}
{{- end -}}

{{- define "facestream.kafkaTLS.mount" -}}
{{- if include "facestream.kafkaTLS.enabled" . }}
- name: kafka-tls
  mountPath: {{ include "facestream.kafkaTLS.dir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Pod annotations that change when the settings ConfigMap or the chart's Secret does: the
settings file and the secret env vars are read once, at process start, so a `helm upgrade`
that changed only them would otherwise leave every pod on the old values (on the
RayService the change to rayClusterConfig makes KubeRay roll a new Ray cluster).
*/}}
{{- define "facestream.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}
