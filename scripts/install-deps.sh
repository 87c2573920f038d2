#!/usr/bin/env bash
# Installs what the local stack and the tests need on Debian 12, if missing.
# Needs root or sudo for apt-get; prints what it would install otherwise.
set -euo pipefail

packages=(
  postgresql            # primary and streaming replicas
  libpq-dev             # diesel's libpq binding (control)
  pdns-server           # pdns_server
  pdns-backend-remote   # our backend's connector
  pdns-backend-pgsql    # stock gpgsql: fallback and benchmark baseline
  pdns-tools            # pdns_control
  openssh-client        # the tunnel creator's client
  putty-tools           # plink: PuTTY's client (edge_clients test)
  dropbear-bin          # dbclient: Dropbear's client (edge_clients test)
  openssh-server        # sshd: the edge benchmark's baseline
  dnsutils              # dig
  unbound               # a real recursive resolver in front of pdns (dns_no_nxdomain test)
  pebble                # the ACME test server (acme_pebble test, make up ACME=1)
  prometheus            # promtool: checks and unit-tests the alert rules (alert_rules test); its server is never started
  dnsperf               # DNS benchmarks
  wrk                   # HTTP benchmarks
  nginx-light           # the edge benchmark's local HTTP server
  curl
  nghttp2-client        # h2load: the edge benchmark's HTTP/2 and HTTPS rows
  chromium              # headless browser of the request inspector's page test
)

# Paramiko, for the Python client of the edge_clients test, into the python3 that runs it.
ensure_paramiko() {
  if python3 -c 'import paramiko' 2>/dev/null; then
    return 0
  fi
  echo "installing: paramiko (pip)"
  python3 -m pip install --quiet paramiko
}

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  ensure_paramiko
  exit 0
fi

echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "error: ${missing[*]} missing and neither root nor sudo is available" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# Debian's packages would start system-wide services (pdns on port 53, a postgres cluster);
# the stack runs its own processes, so keep the package scripts from starting any.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  created_policy=1
fi
trap '[ -n "$created_policy" ] && $sudo rm -f "$policy"' EXIT
$sudo apt-get update -qq || echo "warning: apt-get update failed; trying with the current lists" >&2
installed() { dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" { print $2 }' | sort; }
before=$(installed)
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Nor at the next boot: the packages enable their units (postgresql, pdns on port 53, sshd,
# nginx, unbound, prometheus), which a developer's machine or a CI image rebooted would start.
# Only the units of packages this install brought (the listed ones and what they pulled in:
# postgresql.service comes with postgresql-common, nginx.service with nginx-common) are
# disabled; units of packages that were there before stay as they were. (`systemctl disable`
# edits the links only; it needs no running systemd.)
if command -v systemctl >/dev/null 2>&1; then
  new_packages=$(comm -13 <(echo "$before") <(installed))
  for p in $new_packages; do
    units=$(dpkg -L "$p" 2>/dev/null |
      grep -E '^/(usr/)?lib/systemd/system/[^/@]+\.(service|socket|timer)$' || true)
    for unit in $units; do
      $sudo systemctl disable --quiet "$(basename "$unit")" >/dev/null 2>&1 || true
    done
  done
fi
ensure_paramiko
