{{- define "ferry.name" -}}ferry-operator{{- end -}}

{{- define "ferry.labels" -}}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferry.selector" -}}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
Audiences a run's projected tokens may carry: the cloud ones, and Vault's when
runs read credentials from it.
*/}}
{{- define "ferry.tokenAudiences" -}}
{{- $audiences := .Values.runner.tokenAudiences -}}
{{- if .Values.vault.address -}}
{{- $audiences = append $audiences .Values.vault.audience | uniq -}}
{{- end -}}
{{- $audiences | toJson -}}
{{- end }}

{{/* An image by digest when one is set (a released chart sets the digests
it was built with), else by tag (the chart's appVersion by default). */}}
{{- define "ferry.image" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag | default .appVersion }}
{{- end -}}
{{- end -}}

{{- define "ferry.operatorImage" -}}
{{ include "ferry.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.operator.image) }}
{{- end -}}

{{- define "ferry.runnerImage" -}}
{{ include "ferry.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.runner.image) }}
{{- end -}}
