#!/bin/bash
# Runs inside the lab's client host (lab/smoke.sh pipes it in): the tunnel creator and the
# visitor of docs/lab.md's smoke test.
#
#   smoke-client.sh SSH_PORT ZONE RESOLVER_IP REGION:EDGE_IP:TOKEN:CLIENT_PREFIX... -- DNS_IP...
#
# First the connect name: asked of every region's pdns with the region's client prefix as
# EDNS Client Subnet, it must answer that region's edge (the prefix map derived from the
# inventory, in every backend).
# For each region: `ssh -N -R0:127.0.0.1:PORT TOKEN@EDGE_IP`, the URL the edge prints, then
# at once the name resolved through the lab's recursive resolver (RESOLVER_IP, unbound: the
# parent zone's delegation, then one of the region name servers; "-" skips it) and asked of
# every name server, both of a region with two (each pdns_server (each must answer CNAME <region>.<zone> and
# the region's edge address: the record reached every replica before the URL was printed),
# then one visitor request through the address DNS gave: it must return 200 and the local
# service's page. Everything it starts (the local service, the ssh clients) it stops by PID.
set -uo pipefail
ssh_port=$1 zone=$2 resolver=$3; shift 3
tunnels=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do tunnels+=("$1"); shift; done
shift
dns_servers=("$@")

work=$(mktemp -d /tmp/nearhop-smoke.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
failed=0
fail() { echo "FAIL $*"; failed=1; }
ok() { echo "ok   $*"; }

# The developer's local service: a page only it serves.
mkdir -p "$work/www"
marker="nearhop-lab-smoke-$RANDOM$RANDOM"
echo "$marker" > "$work/www/index.html"
python3 -m http.server 8000 --bind 127.0.0.1 --directory "$work/www" >"$work/http.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.1; done

for t in "${tunnels[@]}"; do
  IFS=: read -r region edge_ip token prefix <<<"$t"
  [ -z "$prefix" ] && continue
  for dns in "${dns_servers[@]}"; do
    got=$(dig +norecurse +time=2 +tries=1 +short +subnet="$prefix" @"$dns" "$zone" A)
    if [ "$got" = "$edge_ip" ]; then
      ok "$region: pdns $dns answers the connect name $zone for clients in $prefix with $got"
    else
      fail "$region: pdns $dns answered '$got' for $zone from $prefix (want $edge_ip)"
    fi
  done
done

for t in "${tunnels[@]}"; do
  IFS=: read -r region edge_ip token prefix <<<"$t"
  log="$work/ssh-$region.log"
  # -N: no session channel; the edge tells the URL in the authentication banner (stderr).
  ssh -N -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o LogLevel=ERROR -o ServerAliveInterval=5 -o ExitOnForwardFailure=yes \
      -R0:127.0.0.1:8000 "$token@$edge_ip" >"$log" 2>&1 </dev/null &
  pids+=($!)
  url=""
  for _ in $(seq 300); do
    url=$(grep -oE "http://[a-z0-9.-]+\.$zone(:[0-9]+)?" "$log" | head -1)
    [ -n "$url" ] && break
    sleep 0.1
  done
  if [ -z "$url" ]; then
    fail "$region: no URL printed by edge $edge_ip within 30 s; ssh said: $(tr '\n' ' ' <"$log")"
    continue
  fi
  ok "$region: ssh -R through $edge_ip printed $url"
  name=${url#http://}; name=${name%%:*}
  port=80; [[ "$url" =~ :([0-9]+)$ ]] && port=${BASH_REMATCH[1]}

  # At once, as a visitor would: through the recursive resolver, no retry.
  answer_ip=""
  if [ "$resolver" != "-" ]; then
    out=$(dig +time=3 +tries=1 +short @"$resolver" "$name" A)
    first=$(echo "$out" | head -1) last=$(echo "$out" | tail -1)
    if [ "$first" = "$region.$zone." ] && [ "$last" = "$edge_ip" ]; then
      ok "$region: resolver $resolver (delegation from the parent zone) answers $name CNAME $first A $last"
    else
      fail "$region: resolver $resolver answered '$(echo "$out" | tr '\n' ' ')' for $name (want CNAME $region.$zone. A $edge_ip)"
    fi
  fi

  # Asked at once, of every name server: no retry, the record must be there.
  for dns in "${dns_servers[@]}"; do
    out=$(dig +norecurse +time=2 +tries=1 +short @"$dns" "$name" A)
    first=$(echo "$out" | head -1) last=$(echo "$out" | tail -1)
    if [ "$first" = "$region.$zone." ] && [ "$last" = "$edge_ip" ]; then
      ok "$region: pdns $dns answers $name CNAME $first A $last"
      answer_ip=$last
    else
      fail "$region: pdns $dns answered '$(echo "$out" | tr '\n' ' ')' for $name (want CNAME $region.$zone. A $edge_ip)"
    fi
  done
  [ -z "$answer_ip" ] && continue

  # The visitor: the address DNS gave, the tunnel's name as Host.
  code=$(curl -s -o "$work/body-$region" -w '%{http_code}' --max-time 10 \
              --resolve "$name:$port:$answer_ip" "http://$name:$port/")
  if [ "$code" = "200" ] && grep -q "$marker" "$work/body-$region"; then
    ok "$region: visitor GET http://$name:$port/ via $answer_ip -> 200 from the local service"
  else
    fail "$region: visitor GET http://$name:$port/ via $answer_ip -> $code"
  fi
done

[ $failed -eq 0 ] && echo "smoke: every check passed" || echo "smoke: FAILED"
exit $failed
