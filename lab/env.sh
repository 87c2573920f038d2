# Sourced by the lab's scripts: ansible from the lab's virtualenv (scripts/install-lab-deps.sh),
# the nsenter connection, and the lab's inventory. Run ansible commands from ansible/.
lab_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(dirname "$lab_root")"
export NEARHOP_LAB_VENV="${NEARHOP_LAB_VENV:-/opt/nearhop-lab/venv}"
export PATH="$NEARHOP_LAB_VENV/bin:$PATH"
export NEARHOP_LAB_DIR="${NEARHOP_LAB_DIR:-/var/tmp/nearhop-lab}"
export ANSIBLE_CONNECTION_PLUGINS="$lab_root/ansible/connection_plugins"
export ANSIBLE_PIPELINING=True
export ANSIBLE_FORCE_COLOR=False
export ANSIBLE_NOCOLOR=True
lab_inventory="$lab_root/inventory"
# The example inventory's vault (the lab links it) is encrypted with this documented TEST
# password; production vaults have passwords of their own (docs/deploy.md).
export ANSIBLE_VAULT_PASSWORD_FILE="$repo_root/ansible/inventories/example/vault-test-password.txt"
