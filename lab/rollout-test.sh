#!/bin/bash
# The rollout check (`make rollout-test`, docs/lab.md): static checks of every playbook,
# then a lab of real hosts from nothing, converged twice, smoke-tested, drained and rebuilt.
# Needs root, scripts/install-lab-deps.sh and the debug binaries (`cargo build --bins`).
# Starts its own lab and stops it on exit, also on failure or interrupt. Exit 0 when every
# step passed. Timings: the summary at the end, also in $NEARHOP_LAB_LOGS/timings.txt.
set -euo pipefail
source "$(dirname "$0")/env.sh"
logs="${NEARHOP_LAB_LOGS:-/tmp/nearhop-lab-logs}"
rm -rf "$logs" && mkdir -p "$logs"
lab="$lab_root/lab.py"
timings="$logs/timings.txt"
: >"$timings"
started=$(date +%s)

step() {  # step NAME COMMAND...: run, log to $logs/NAME.log, time it, stop on failure
  local name=$1; shift
  local t0=$(date +%s) rc=0
  echo "== $name"
  "$@" >"$logs/$name.log" 2>&1 || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  printf '%-28s %4ds  %s\n' "$name" "$dt" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" | tee -a "$timings"
  if [ $rc -ne 0 ]; then
    tail -40 "$logs/$name.log"
    echo "rollout-test: $name failed; full log: $logs/$name.log"
    exit $rc
  fi
}

# Every PLAY RECAP line of a run must say changed=0 and failed=0.
converged_unchanged() {
  local log=$1
  awk '/^PLAY RECAP/ {recap=1; next} recap && /changed=/ {print}' "$log" >"$log.recap"
  [ -s "$log.recap" ] || { echo "no PLAY RECAP in $log"; return 1; }
  if grep -vE 'changed=0 .*failed=0 ' "$log.recap"; then
    echo "^ hosts that changed or failed on the second run"
    return 1
  fi
  echo "every host: changed=0 failed=0"; cat "$log.recap"
}

playbook() { (cd "$repo_root/ansible" && ansible-playbook "$@"); }

syntax_check() {
  cd "$repo_root/ansible"
  # Secrets only in Ansible Vault files: every inventory's vault.yml must be encrypted.
  for v in inventories/*/group_vars/all/vault.yml; do
    head -1 "$v" | grep -q '^\$ANSIBLE_VAULT;' || { echo "$v is not encrypted"; return 1; }
  done
  for inv in inventories/example inventories/local "$lab_inventory"; do
    for pb in site.yml render-configs.yml; do
      ansible-playbook -i "$inv" "$pb" --syntax-check
    done
  done
  ansible-playbook -i inventories/example drain-edge.yml -e edge=us-edge-1 --syntax-check
  ansible-playbook -i inventories/local drain-edge.yml -e edge=localhost --syntax-check
  ansible-playbook -i "$lab_inventory" drain-edge.yml -e edge=eu-edge-1 --syntax-check
  for inv in inventories/example "$lab_inventory"; do
    ansible-playbook -i "$inv" promote-replica.yml -e new_primary=eu-db-1 --syntax-check
  done
}

lint() {
  cd "$repo_root/ansible"
  # offline: no collection or schema downloads (the machine reaches no such server).
  ansible-lint --offline
}

# One rendering serves both checks: the example inventory plus region sa, added with only its
# hosts and group_vars/region_sa.yml (tools/check-add-region.py checks that sa reached
# everything derived from the inventory), then tools/check-rendered.py on every file.
render_check() {
  cd "$repo_root/ansible"
  python3 tools/check-add-region.py --keep "$logs/rendered" --check-rendered --bin-dir "$repo_root/target/debug"
  # The example vault's test secrets (public password) are refused anywhere but the lab.
  if ansible-playbook -i inventories/example render-configs.yml --limit us-edge-1 \
      -e render_dir="$logs/rendered-refused" -e nearhop_refuse_placeholder_secrets=true \
      >"$logs/example-secrets-refused.log" 2>&1; then
    echo "the example inventory's test secrets were accepted outside the lab"; return 1
  fi
  grep -q "one of the example inventory's test secrets" "$logs/example-secrets-refused.log"
  echo "example-test-only secrets refused outside the lab"
}

# The lab is this script's: a leftover one (an interrupted run, `make lab`) is replaced.
python3 "$lab" down >/dev/null
trap 'python3 "$lab" down' EXIT

step syntax-check syntax_check
step ansible-lint lint
step render-add-region render_check
step lab-up python3 "$lab" up
step converge-1 playbook -i "$lab_inventory" site.yml
step converge-2 playbook -i "$lab_inventory" site.yml
step converge-2-unchanged converged_unchanged "$logs/converge-2.log"
step smoke-1 python3 "$lab" smoke
step drain-edge playbook -i "$lab_inventory" drain-edge.yml -e edge=eu-edge-1 -e restart=true
step smoke-after-drain python3 "$lab" smoke
step replica-rebuild playbook -i "$lab_inventory" site.yml --limit eu-db-1 -e postgres_replica_rebuild=true
step smoke-after-rebuild python3 "$lab" smoke
# A region is one inventory entry: sa (lab/inventory-sa: its host and group_vars/region_sa.yml)
# joins the running lab; one site.yml run over the primary, control and every DNS host (the
# prefix maps and control's regions change) and sa's host brings it up; then the smoke test
# in four regions, every region's pdns asked for every tunnel.
export NEARHOP_LAB_EXTRA_INVENTORY="$lab_root/inventory-sa"
step add-region-sa python3 "$lab" add
step converge-sa playbook -i "$lab_inventory" -i "$NEARHOP_LAB_EXTRA_INVENTORY" site.yml --limit 'postgres_primary:control:dns:sa-1'
step smoke-4-regions python3 "$lab" smoke
# Failover as a playbook, with a tunnel live: eu's replica becomes the primary, control and the
# other replicas follow it, the old primary is rebuilt as its replica. The held tunnel's
# visitor (every 0.2 s) must get 200 throughout; then new tunnels in every region.
step hold-start python3 "$lab" hold-start eu
step promote-replica playbook -i "$lab_inventory" -i "$NEARHOP_LAB_EXTRA_INVENTORY" promote-replica.yml -e new_primary=eu-db-1
step hold-check python3 "$lab" hold-check
step smoke-after-promote python3 "$lab" smoke

total=$(( $(date +%s) - started ))
printf '%-28s %4ds\n' "total" "$total" | tee -a "$timings"
echo "rollout-test: every step passed ($(nproc) cores); logs in $logs"
