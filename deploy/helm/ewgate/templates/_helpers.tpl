{{/* The object name: name, else the release name (as Istio's gateway chart). */}}
{{- define "ewgate.name" -}}
{{- .Values.name | default .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "ewgate.selectorLabels" -}}
app: {{ include "ewgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ewgate.labels" -}}
{{ include "ewgate.selectorLabels" . }}
app.kubernetes.io/name: ewgate
app.kubernetes.io/part-of: ewgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- range $k, $v := .Values.labels }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}

{{- define "ewgate.metadata" -}}
labels:
  {{- include "ewgate.labels" . | nindent 2 }}
{{- with .Values.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "ewgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "ewgate.name" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end }}

{{- define "ewgate.controlSecret" -}}
{{- .Values.control.cert.secretName | default (printf "%s-control-tls" (include "ewgate.name" .)) -}}
{{- end }}

{{/* validate fails the render on values that cannot work, naming the value and the fix. */}}
{{- define "ewgate.validate" -}}
{{- if not (has .Values.mode (list "istiod" "standalone")) -}}
{{- fail (printf "mode %q: want istiod or standalone" .Values.mode) -}}
{{- end -}}
{{- if not .Values.network -}}
{{- fail "network is empty: set the network this gateway fronts (xds.node.network and the Service label topology.istio.io/network)" -}}
{{- end -}}
{{- $drain := .Values.drainTimeout | toString -}}
{{- if not (regexMatch "^[0-9]+(s|m)$" $drain) -}}
{{- fail (printf "drainTimeout %q: want whole seconds or minutes, e.g. 30s or 2m" $drain) -}}
{{- end -}}
{{- $drainS := trimSuffix "s" $drain | int -}}
{{- if hasSuffix "m" $drain -}}
{{- $drainS = mul (trimSuffix "m" $drain | int) 60 -}}
{{- end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $drainS (int .Values.preStopSeconds)) -}}
{{- fail (printf "terminationGracePeriodSeconds %v is not longer than preStopSeconds %v + drainTimeout %s: the kubelet would kill a draining pod; raise it" .Values.terminationGracePeriodSeconds .Values.preStopSeconds $drain) -}}
{{- end -}}
{{- if and .Values.config .Values.extraConfig -}}
{{- fail "config and extraConfig are both set: config is the whole file, verbatim; put the extra keys in it" -}}
{{- end -}}
{{- end }}

{{/* The default issuer: this cluster's service-account tokens, keys from the in-cluster API server. */}}
{{- define "ewgate.issuers" -}}
{{- if .Values.issuers -}}
{{- toYaml .Values.issuers -}}
{{- else -}}
- issuer: https://kubernetes.default.svc.cluster.local
  cluster: {{ .Values.clusterID }}
  discovery_url: https://kubernetes.default.svc
  ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
  bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
{{- end -}}
{{- end }}

{{/* The ewgate config rendered from the values (docs/config.md), as a dict. */}}
{{- define "ewgate.configDict" -}}
{{- $ns := .Release.Namespace -}}
{{- $cfg := dict
  "log" (deepCopy .Values.log)
  "admin" (dict "address" "127.0.0.1:15000" "status_address" "0.0.0.0:15021" "metrics_address" "0.0.0.0:15020" "pprof" false)
  "drain_timeout" (.Values.drainTimeout | toString)
  "reload" (dict "watch_interval" "2s")
  "listeners" (list (dict "name" "mesh" "kind" "mesh" "address" (printf "0.0.0.0:%v" .Values.mesh.port) "routes_from" "xds" "max_connections" .Values.mesh.maxConnections))
-}}
{{- if eq .Values.mode "istiod" -}}
{{- $_ := set $cfg "xds" (dict
  "server" .Values.istiod.address
  "tls" (dict "ca_file" "/var/run/secrets/istio/root-cert.pem" "server_name" .Values.istiod.serverName)
  "token_file" "/var/run/secrets/tokens/istio-token"
  "node" (dict "namespace" $ns "cluster_id" .Values.clusterID "network" .Values.network "labels" (deepCopy .Values.podLabels))) -}}
{{- else -}}
{{- $_ := set $cfg "xds" (dict "node" (dict "network" .Values.network)) -}}
{{- $_ := set $cfg "control_plane" (dict
  "address" "127.0.0.1:15010"
  "ca" (dict "cert_file" "/etc/ewgate/ca/ca.crt" "key_file" "/etc/ewgate/ca/ca.key" "trust_domain" .Values.standalone.trustDomain)) -}}
{{- with .Values.standalone.services -}}
{{- $_ := set $cfg "services" . -}}
{{- end -}}
{{- end -}}
{{- if .Values.control.enabled -}}
{{- $upstream := dict "cluster" .Values.clusterID "builtin" true -}}
{{- if eq .Values.mode "istiod" -}}
{{- $upstream = dict "cluster" .Values.clusterID "address" .Values.istiod.address "ca_file" "/var/run/secrets/istio/root-cert.pem" "server_name" .Values.istiod.serverName "identity" .Values.control.identity -}}
{{- end -}}
{{- $_ := set $cfg "authn" (dict "issuers" (include "ewgate.issuers" . | fromYamlArray)) -}}
{{- $_ := set $cfg "control" (dict
  "address" (printf "0.0.0.0:%v" .Values.control.port)
  "tls" (dict "cert_file" "/etc/ewgate/control/tls.crt" "key_file" "/etc/ewgate/control/tls.key")
  "upstreams" (list $upstream)) -}}
{{- $_ := set $cfg "registrar" (dict "lease_namespace" $ns) -}}
{{- $_ := set $cfg "kubernetes" (dict) -}}
{{- end -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy .Values.extraConfig)) -}}
{{- end }}
