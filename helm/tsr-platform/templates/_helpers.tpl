{{/*
Names, labels and the few derived values every template shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tsr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>" (or the release name alone when it already contains the chart name), or fullnameOverride. */}}
{{- define "tsr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tsr.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "tsr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "tsr.labels" -}}
helm.sh/chart: {{ include "tsr.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tsr-platform
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Name and component labels that go next to tsr.labels in metadata: (dict "ctx" $ "component" "minio"). */}}
{{- define "tsr.componentLabels" -}}
app.kubernetes.io/name: {{ include "tsr.name" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "minio"). */}}
{{- define "tsr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tsr.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of the predictor, the same as tsr/kube/inference_service.py _labels() (the monitors select them). */}}
{{- define "tsr.predictorLabels" -}}
app.kubernetes.io/part-of: tsr-platform
app.kubernetes.io/name: tsr-predictor
app.kubernetes.io/component: predictor
{{- end -}}

{{/* Name of MinIO's Deployment, Service and PVC. */}}
{{- define "tsr.minio.fullname" -}}
{{- printf "%s-minio" (include "tsr.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The S3 endpoint as host:port (the in-cluster MinIO Service, or s3.endpoint). */}}
{{- define "tsr.s3.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s.%s.svc.cluster.local:%d" (include "tsr.minio.fullname" .) .Release.Namespace (int .Values.minio.apiPort) -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* "true" when the endpoint speaks HTTPS (never for the in-cluster MinIO). */}}
{{- define "tsr.s3.secure" -}}
{{- if and (not .Values.minio.enabled) .Values.s3.secure -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Name of the Secret in the pipeline's layout (created or existing). */}}
{{- define "tsr.s3.pipelineSecret" -}}
{{- default .Values.s3.pipelineSecretName .Values.s3.existingSecret.pipeline -}}
{{- end -}}

{{/* Name of the Secret in KServe's layout (created or existing). */}}
{{- define "tsr.s3.predictorSecret" -}}
{{- default .Values.s3.predictorSecretName .Values.s3.existingSecret.predictor -}}
{{- end -}}

{{/* Predictor image reference; the tag defaults to the chart's appVersion. */}}
{{- define "tsr.predictor.image" -}}
{{- $img := .Values.inferenceService.image -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/* torch threads: inferenceService.threads, else the CPU limit rounded down (at least 1), as deploy.py _cpu_threads. */}}
{{- define "tsr.predictor.threads" -}}
{{- $isvc := .Values.inferenceService -}}
{{- if $isvc.threads -}}
{{- $isvc.threads | int -}}
{{- else -}}
{{- $cpu := toString (dig "limits" "cpu" "1" $isvc.resources) -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (trimSuffix "m" $cpu | atoi) 1000) -}}
{{- else -}}
{{- max 1 (floor (float64 $cpu) | int) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Port name the monitors scrape: monitoring.scrape.port, else http1 (Standard) / user-port (Knative). */}}
{{- define "tsr.scrapePort" -}}
{{- if .Values.monitoring.scrape.port -}}
{{- .Values.monitoring.scrape.port -}}
{{- else if eq .Values.inferenceService.deploymentMode "Knative" -}}
user-port
{{- else -}}
http1
{{- end -}}
{{- end -}}

{{/* Pod-level security context shared by all workloads. */}}
{{- define "tsr.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
fsGroup: {{ .Values.security.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context shared by all containers. */}}
{{- define "tsr.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* Checks across values that the JSON schema cannot express; fails the render with a message. */}}
{{- define "tsr.validate" -}}
{{- $s3 := .Values.s3 -}}
{{- if and (not .Values.minio.enabled) (not $s3.endpoint) -}}
{{- fail "minio.enabled=false needs s3.endpoint (host[:port] of the external S3)" -}}
{{- end -}}
{{- if ne (empty $s3.existingSecret.pipeline) (empty $s3.existingSecret.predictor) -}}
{{- fail "set both s3.existingSecret.pipeline and s3.existingSecret.predictor, or neither" -}}
{{- end -}}
{{- if ne (empty $s3.accessKey) (empty $s3.secretKey) -}}
{{- fail "set both s3.accessKey and s3.secretKey, or neither (empty: generated)" -}}
{{- end -}}
{{- if and .Values.arch.prefer .Values.arch.require (ne .Values.arch.prefer .Values.arch.require) -}}
{{- fail (printf "arch.prefer=%s contradicts arch.require=%s" .Values.arch.prefer .Values.arch.require) -}}
{{- end -}}
{{- $isvc := .Values.inferenceService -}}
{{- if $isvc.enabled -}}
{{- $uri := .Values.model.storageUri -}}
{{- if not $uri -}}
{{- fail "inferenceService.enabled needs model.storageUri=s3://models/<model name>/<version> (tsr models list)" -}}
{{- end -}}
{{- $version := last (splitList "/" $uri) -}}
{{- if has $version (list "champion" "latest") -}}
{{- fail (printf "model.storageUri %s must name a concrete version, not the alias %s" $uri $version) -}}
{{- end -}}
{{- $knative := eq $isvc.deploymentMode "Knative" -}}
{{- if and (not $knative) (not (kindIs "invalid" $isvc.canaryTrafficPercent)) -}}
{{- fail "inferenceService.canaryTrafficPercent needs deploymentMode Knative (KServe canaries are revisions)" -}}
{{- end -}}
{{- if and (not $knative) (lt (int $isvc.minReplicas) 1) -}}
{{- fail "inferenceService.minReplicas must be >= 1 in Standard mode (only Knative scales to zero)" -}}
{{- end -}}
{{- $metrics := ternary (list "concurrency" "rps") (list "cpu" "memory") $knative -}}
{{- if and $isvc.scaleMetric (not (has $isvc.scaleMetric $metrics)) -}}
{{- fail (printf "inferenceService.scaleMetric %s is not used by %s mode's autoscaler: use one of %s" $isvc.scaleMetric $isvc.deploymentMode (join ", " $metrics)) -}}
{{- end -}}
{{- if gt (int $isvc.minReplicas) (int $isvc.maxReplicas) -}}
{{- fail "inferenceService.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- if and (eq .Values.monitoring.scrape.kind "ServiceMonitor") $knative .Values.monitoring.scrape.enabled -}}
{{- fail "monitoring.scrape.kind=ServiceMonitor works in Standard mode only; use PodMonitor with Knative" -}}
{{- end -}}
{{- end -}}
{{- end -}}
