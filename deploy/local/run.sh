#!/usr/bin/env bash
# make run: the demo TLS backend and ewgate on deploy/local/ewgate.yaml, loopback only.
# EWGATE_CONFIG and DEMO_LISTEN override the config and the demo backend's address (tests).
#
# ewgate runs as this script's child, and this script forwards SIGTERM, SIGINT and SIGHUP to it
# and exits with its status once it has drained, stopping the demo backend: stopping `make run`
# (or this script) by its PID stops ewgate and frees its ports. (Before, ewgate was left running
# and the next `make run` failed with "address already in use".)
set -euo pipefail
set -m # children in their own process groups: a terminal's Ctrl-C reaches ewgate once, through the trap
bin=${1:-bin}
here=$(cd "$(dirname "$0")" && pwd)
config=${EWGATE_CONFIG:-$here/ewgate.yaml}

"$bin/ewgate-demo" --listen "${DEMO_LISTEN:-127.0.0.1:18443}" &
demo=$!
gw=
stop_all() {
	[ -n "$gw" ] && kill -TERM "$gw" 2>/dev/null
	kill "$demo" 2>/dev/null
	return 0
}
trap stop_all EXIT

cat <<MSG
ewgate: status  http://127.0.0.1:15021/healthz/ready  (readiness only; /healthz/control for the VM side)
        metrics http://127.0.0.1:15020/metrics
        admin   http://127.0.0.1:15000/debug/routes   (every page: /debug/registrations, /debug/authn, /metrics)
        mesh    127.0.0.1:15443  -> outbound_.8443_._.demo.default.svc.cluster.local -> demo backend 127.0.0.1:18443
                (routes over xDS from the built-in control plane on 127.0.0.1:15010)
        ingress 127.0.0.1:15444  -> demo.example.com -> demo backend 127.0.0.1:18443
try:    openssl s_client -connect 127.0.0.1:15443 -servername outbound_.8443_._.demo.default.svc.cluster.local -alpn istio
        curl -sk --resolve demo.example.com:15444:127.0.0.1 https://demo.example.com:15444/
stop:   Ctrl-C or kill <pid of make or of this script> (drains open connections; a second one closes them at once)
MSG
# The traps are set before ewgate starts: a signal that comes before ewgate's PID is known is
# remembered and forwarded as soon as it is (before, such a signal killed the script).
pending=
for sig in TERM INT HUP; do
	trap "pending=$sig; [ -z \"\$gw\" ] || kill -$sig \"\$gw\" 2>/dev/null || true" "$sig"
done
"$bin/ewgate" serve --config "$config" --log-format console &
gw=$!
[ -z "$pending" ] || kill "-$pending" "$gw" 2>/dev/null || true
# A trapped signal ends `wait` early: wait again while ewgate drains, then exit with its status.
status=0
while :; do
	wait "$gw" && status=0 || status=$?
	kill -0 "$gw" 2>/dev/null || break
done
gw=
exit "$status"
