#!/usr/bin/env bash
# make run: the demo TLS backend and ewgate on deploy/local/ewgate.yaml, loopback only.
set -euo pipefail
bin=${1:-bin}
here=$(cd "$(dirname "$0")" && pwd)

"$bin/ewgate-demo" --listen 127.0.0.1:18443 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true' EXIT

cat <<MSG
ewgate: status  http://127.0.0.1:15021/healthz/ready  (readiness only; /healthz/control for the VM side)
        metrics http://127.0.0.1:15020/metrics
        admin   http://127.0.0.1:15000/debug/routes   (every page: /debug/registrations, /debug/authn, /metrics)
        mesh    127.0.0.1:15443  -> outbound_.8443_._.demo.default.svc.cluster.local -> demo backend 127.0.0.1:18443
                (routes over xDS from the built-in control plane on 127.0.0.1:15010)
        ingress 127.0.0.1:15444  -> demo.example.com -> demo backend 127.0.0.1:18443
try:    openssl s_client -connect 127.0.0.1:15443 -servername outbound_.8443_._.demo.default.svc.cluster.local -alpn istio
        curl -sk --resolve demo.example.com:15444:127.0.0.1 https://demo.example.com:15444/
stop:   Ctrl-C (drains open connections; a second Ctrl-C closes them at once)
MSG
"$bin/ewgate" serve --config "$here/ewgate.yaml" --log-format console
