{{- define "kube-mtls.name" -}}kube-mtls{{- end -}}

{{- define "kube-mtls.fullname" -}}
{{- if contains "kube-mtls" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-kube-mtls" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kube-mtls.labels" -}}
app.kubernetes.io/name: kube-mtls
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kube-mtls.selectorLabels" -}}
app.kubernetes.io/name: kube-mtls
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "kube-mtls.webhookImage" -}}
{{ .Values.image.webhook.repository }}:{{ .Values.image.webhook.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kube-mtls.sidecarImage" -}}
{{ .Values.image.sidecar.repository }}:{{ .Values.image.sidecar.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kube-mtls.servingCert" -}}{{ include "kube-mtls.fullname" . }}-webhook-tls{{- end -}}
