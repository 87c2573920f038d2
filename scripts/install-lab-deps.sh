#!/usr/bin/env bash
# Installs what the Ansible lab (`make lab`, `make rollout-test`, docs/lab.md) needs on
# Debian 12, if missing: the packages the lab's hosts run (the same as the local stack's,
# scripts/install-deps.sh), the tools that build the lab (namespaces, veth, bridge), and
# ansible-core + ansible-lint from PyPI in a virtualenv. Idempotent: a second run installs
# nothing. Needs root or sudo for apt-get.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# The services the lab's hosts run are the local stack's: postgresql, pdns, unbound, dig, ...
"$here/install-deps.sh"

venv="${NEARHOP_LAB_VENV:-/opt/nearhop-lab/venv}"
# Versions the roles were checked with (docs/deploy.md); both need Python >= 3.11 (Debian 12's).
ansible_core="ansible-core>=2.19,<2.20"
ansible_lint="ansible-lint>=26,<27"

packages=(
  iproute2              # ip netns, veth pairs, the lab's bridge
  util-linux            # unshare, nsenter (the lab's hosts and Ansible's way in)
  sudo                  # the roles' become_method (become_user postgres, nearhop, pdns)
  python3-apt           # ansible.builtin.apt on the lab's hosts (Debian's python3)
  python3-venv          # the controller's virtualenv
  openssh-client        # the smoke test's tunnel client
  dnsutils              # dig
  unbound               # the lab's recursive resolver
  pdns-backend-bind     # the lab's parent zone (tunnel.test) from a zone file, on one more pdns
  curl
  procps                # ps in the lab scripts
  iputils-ping          # lab.py checks that every host reaches every other
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  elif [ ${#missing[@]} -gt 0 ] || [ ! -x "$venv/bin/ansible-playbook" ]; then
    echo "error: ${missing[*]:-the virtualenv $venv} missing and neither root nor sudo is available" >&2
    exit 1
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # As in install-deps.sh: keep package scripts from starting system-wide services.
  policy=/usr/sbin/policy-rc.d
  created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created_policy=1
  fi
  trap '[ -n "$created_policy" ] && $sudo rm -f "$policy"' EXIT
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq || echo "warning: apt-get update failed; trying with the current lists" >&2
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi

# ansible-core and ansible-lint: pip into a virtualenv made with Debian's python3 (the
# system's packages stay untouched). Reinstalled only when missing or outside the pins.
if [ ! -x "$venv/bin/python" ]; then
  $sudo mkdir -p "$(dirname "$venv")"
  $sudo /usr/bin/python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "$ansible_core" "$ansible_lint" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    if version(req.name) not in req.specifier:
        sys.exit(1)
PY
then
  echo "installing into $venv: $ansible_core $ansible_lint"
  $sudo "$venv/bin/pip" install -q --disable-pip-version-check "$ansible_core" "$ansible_lint"
fi
