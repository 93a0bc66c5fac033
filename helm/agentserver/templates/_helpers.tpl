{{/* The release's full name: "<release>-agentserver", or the release name when it says so. */}}
{{- define "agentserver.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agentserver.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentserver.labels" -}}
{{ include "agentserver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "agentserver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agentserver.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The backend as the server names it: the brief's `k8s` is `kubernetes`. */}}
{{- define "agentserver.backend" -}}
{{- $b := lower .Values.backend -}}
{{- if or (eq $b "k8s") (eq $b "kube") -}}kubernetes{{- else -}}{{ $b }}{{- end -}}
{{- end -}}

{{/* The chart's own Secret (made only when some secret value was given inline). */}}
{{- define "agentserver.secretName" -}}
{{- include "agentserver.fullname" . -}}
{{- end -}}

{{/* Where one secret comes from: a per-topic existing Secret, the global one, or ours. */}}
{{- define "agentserver.secretRef" -}}
{{- $ctx := index . 0 -}}{{- $topic := index . 1 -}}{{- $key := index . 2 -}}
name: {{ coalesce $topic $ctx.Values.existingSecret (include "agentserver.secretName" $ctx) }}
key: {{ $key }}
{{- end -}}

{{/* True (non-empty) when any secret value is given inline, so the chart keeps a Secret. */}}
{{- define "agentserver.inlineSecrets" -}}
{{- $v := .Values -}}
{{- if and $v.database.url (not $v.database.existingSecret) }}database-url {{ end -}}
{{- if and $v.anthropicApiKey (not $v.anthropicExistingSecret) }}anthropic-api-key {{ end -}}
{{- if and $v.anthropicAuthToken (not $v.anthropicExistingSecret) }}anthropic-auth-token {{ end -}}
{{- if and $v.oidc.github.clientSecret (not $v.oidc.existingSecret) }}github-client-secret {{ end -}}
{{- if and $v.oidc.generic.clientSecret (not $v.oidc.existingSecret) }}oidc-client-secret {{ end -}}
{{- if not $v.existingSecret }}sandbox-env-key {{ end -}}
{{- end -}}

{{/* The sandbox env key: given, else the one already in our Secret (upgrades keep it), else
a new one (sprig's randBytes is already base64: made URL-safe, as Fernet wants). */}}
{{- define "agentserver.sandboxEnvKey" -}}
{{- if .Values.sandboxEnvKey -}}
{{- .Values.sandboxEnvKey -}}
{{- else -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "agentserver.secretName" .) -}}
{{- $data := dig "data" "sandbox-env-key" "" $found -}}
{{- if $data -}}{{ $data | b64dec }}{{- else -}}{{ randBytes 32 | replace "+" "-" | replace "/" "_" }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Kubernetes quantities as the server's settings read them. */}}
{{- define "agentserver.nanoCpus" -}}
{{- $cpu := toString . -}}
{{- if hasSuffix "m" $cpu -}}{{ mul (trimSuffix "m" $cpu | int64) 1000000 }}{{- else -}}{{ mulf (float64 $cpu) 1000000000 | int64 }}{{- end -}}
{{- end -}}
{{- define "agentserver.bytes" -}}
{{- regexReplaceAll "^([0-9]+)([KMG])i$" (toString .) "${1}${2}iB" -}}
{{- end -}}

{{- define "agentserver.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The namespaces sandboxes live in, for the sandbox NetworkPolicy (one namespace mode). */}}
{{- define "agentserver.sandboxNamespace" -}}
{{- default .Release.Namespace .Values.sandbox.namespace -}}
{{- end -}}
