{{/* Name of the release's objects. */}}
{{- define "lameduck.fullname" -}}
{{- if contains "lameduck" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-lameduck" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lameduck.labels" -}}
app.kubernetes.io/name: lameduck
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lameduck.selectorLabels" -}}
app.kubernetes.io/name: lameduck
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "lameduck.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "lameduck.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "lameduck.webhookName" -}}
{{ include "lameduck.fullname" . }}-webhook
{{- end -}}

{{- define "lameduck.certSecret" -}}
{{- .Values.certificates.external.secretName | default (printf "%s-webhook-tls" (include "lameduck.fullname" .)) -}}
{{- end -}}
