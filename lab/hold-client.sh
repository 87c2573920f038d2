#!/bin/bash
# Runs inside the lab's client host (lab/lab.py hold-start / hold-check pipe it in): one
# tunnel held live across a maintenance step, with a visitor asking it every 0.2 s.
#
#   hold-client.sh start SSH_PORT ZONE EDGE_IP TOKEN   the tunnel up, visitor loop started in
#                                                      the background; prints the URL
#   hold-client.sh check                               visitor loop stopped; every answer
#                                                      must have been 200 with the page
#
# State in /tmp/nearhop-hold of the client host. The background loop stops its ssh client and
# local service by PID when told to (check), and is itself a child of the host's init.
set -uo pipefail
dir=/tmp/nearhop-hold

run() {  # the background part: tunnel, then visitors until $dir/stop appears
  local ssh_port=$1 zone=$2 edge_ip=$3 token=$4
  local marker="nearhop-lab-hold-$RANDOM$RANDOM"
  mkdir -p "$dir/www"
  echo "$marker" >"$dir/www/index.html"
  echo "$marker" >"$dir/marker"
  python3 -m http.server 8001 --bind 127.0.0.1 --directory "$dir/www" >"$dir/http.log" 2>&1 &
  local http_pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8001/ && break; sleep 0.1; done
  ssh -N -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o LogLevel=ERROR -o ServerAliveInterval=5 -o ExitOnForwardFailure=yes \
      -R0:127.0.0.1:8001 "$token@$edge_ip" >"$dir/ssh.log" 2>&1 </dev/null &
  local ssh_pid=$!
  local url=""
  for _ in $(seq 300); do
    url=$(grep -oE "http://[a-z0-9.-]+\.$zone(:[0-9]+)?" "$dir/ssh.log" | head -1)
    [ -n "$url" ] && break
    sleep 0.1
  done
  if [ -n "$url" ]; then
    echo "$url" >"$dir/url.tmp" && mv "$dir/url.tmp" "$dir/url"
    local name=${url#http://}; name=${name%%:*}
    local port=80; [[ "$url" =~ :([0-9]+)$ ]] && port=${BASH_REMATCH[1]}
    while [ ! -e "$dir/stop" ]; do
      code=$(curl -s -o "$dir/body" -w '%{http_code}' --max-time 5 \
                  --resolve "$name:$port:$edge_ip" "http://$name:$port/")
      grep -q "$marker" "$dir/body" 2>/dev/null || code="$code-wrong-page"
      echo "$(date +%s.%N | cut -c1-14) $code" >>"$dir/codes"
      sleep 0.2
    done
  else
    echo "no URL within 30 s" >"$dir/url-failed"
  fi
  kill "$ssh_pid" "$http_pid" 2>/dev/null
  wait "$ssh_pid" "$http_pid" 2>/dev/null
  touch "$dir/done"
}

case "${1:-}" in
  start)
    shift
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$0" "$dir/hold-client.sh"
    setsid bash "$dir/hold-client.sh" run "$@" >"$dir/run.log" 2>&1 </dev/null &
    for _ in $(seq 320); do
      [ -s "$dir/url" ] && { echo "hold: tunnel up at $(cat "$dir/url") through $3"; exit 0; }
      [ -e "$dir/url-failed" ] && break
      sleep 0.1
    done
    echo "hold: FAILED, no URL; ssh said: $(tr '\n' ' ' <"$dir/ssh.log" 2>/dev/null)"
    exit 1
    ;;
  run)
    shift
    run "$@"
    ;;
  check)
    [ -d "$dir" ] || { echo "hold: nothing held (hold-start first)"; exit 1; }
    touch "$dir/stop"
    for _ in $(seq 200); do [ -e "$dir/done" ] && break; sleep 0.1; done
    total=$(wc -l <"$dir/codes" 2>/dev/null || echo 0)
    good=$(grep -c ' 200$' "$dir/codes" 2>/dev/null || echo 0)
    first=$(head -1 "$dir/codes" | cut -d' ' -f1) last=$(tail -1 "$dir/codes" | cut -d' ' -f1)
    echo "hold: $good of $total visitor requests answered 200 with the page, from $first to $last ($(cat "$dir/url"))"
    if [ "$total" -lt 5 ] || [ "$good" -ne "$total" ]; then
      grep -v ' 200$' "$dir/codes" | head -20
      echo "hold: FAILED"
      exit 1
    fi
    ;;
  *)
    echo "usage: hold-client.sh start SSH_PORT ZONE EDGE_IP TOKEN | check" >&2
    exit 2
    ;;
esac
