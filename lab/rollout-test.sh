#!/bin/bash
# The rollout check (`make rollout-test`, docs/lab.md): static checks of every playbook,
# then a lab of real hosts from nothing, converged twice, smoke-tested (through a resolver and
# a parent zone's delegation), drained, rebuilt, grown by a region, upgraded edge by edge and
# failed over to another region's replica with a tunnel live.
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
    # The services' own logs die with the lab (the EXIT trap removes it): keep their tails,
    # and show the warnings and errors, which usually say why the step failed.
    python3 "$lab" logs 200 >"$logs/services.log" 2>&1 || true
    echo "-- warnings and errors in the lab's service logs (all: $logs/services.log):"
    grep -E '^=====|WARN|ERROR|FATAL|PANIC|panicked' "$logs/services.log" \
      | grep -B1 -vE '^=====' | grep -v '^--$' | tail -60 || true
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
    ansible-playbook -i "$inv" upgrade-edges.yml --syntax-check
  done
  ansible-playbook -i "$lab_inventory" "$lab_root/lab-dns.yml" --syntax-check
}

lint() {
  cd "$repo_root/ansible"
  # offline: no collection or schema downloads (the machine reaches no such server).
  ansible-lint --offline
  ansible-lint --offline "$lab_root/lab-dns.yml"
}

# The rolling upgrade's new edge binary: this build's, with a marker appended (an ELF file runs
# the same with trailing bytes), so that every edge really gets a different file.
edge_v2="$logs/edge-v2"
make_edge_v2() {
  mkdir -p "$edge_v2"
  cp "$repo_root/target/debug/nearhop-edge" "$edge_v2/"
  printf '\nnearhop-lab-upgrade-v2\n' >>"$edge_v2/nearhop-edge"
}
# Every edge runs the upgraded binary (the running process's file, not only the one on disk).
edges_run_v2() {
  local want got h
  want=$(sha256sum "$edge_v2/nearhop-edge" | cut -d' ' -f1)
  for h in $(cd "$repo_root/ansible" && ansible-inventory -i "$lab_inventory" -i "$NEARHOP_LAB_EXTRA_INVENTORY" --list |
             python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)["edges"]["hosts"]))'); do
    got=$(python3 "$lab" exec "$h" sh -c 'sha256sum /proc/$(pgrep -x nearhop-edge)/exe' | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$h runs $got, not the upgraded $want"; return 1; }
    echo "$h runs the upgraded edge ($want)"
  done
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

# After promote-replica.yml, the inventory edit its last message asks for (docs/deploy.md,
# "Promoting a replica"), made on a copy of the lab's inventory: eu-db-1 in postgres_primary,
# us-db-1 in postgres_replicas, nearhop_primary_region eu.
promoted_inventory="$logs/inventory-promoted"
edit_inventory_after_promotion() {
  rm -rf "$promoted_inventory" && cp -rL "$lab_inventory" "$promoted_inventory"
  "$NEARHOP_LAB_VENV/bin/python" - "$promoted_inventory" <<'PY'
import sys, yaml
from pathlib import Path
inv = Path(sys.argv[1])
hosts = yaml.safe_load((inv / "hosts.yml").read_text())
pg = hosts["all"]["children"]["postgres"]["children"]
pg["postgres_primary"]["hosts"] = {"eu-db-1": None}
replicas = [h for h in pg["postgres_replicas"]["hosts"] if h != "eu-db-1"] + ["us-db-1"]
pg["postgres_replicas"]["hosts"] = {h: None for h in replicas}
(inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
main = inv / "group_vars" / "all" / "main.yml"
text = main.read_text().replace("nearhop_primary_region: us", "nearhop_primary_region: eu")
assert "nearhop_primary_region: eu" in text
main.write_text(text)
PY
  echo "edited copy: $promoted_inventory (postgres_primary: eu-db-1; nearhop_primary_region: eu)"
}

# The lab is this script's: a leftover one (an interrupted run, `make lab`) is replaced.
python3 "$lab" down >/dev/null
trap 'python3 "$lab" down' EXIT

step syntax-check syntax_check
step ansible-lint lint
step render-add-region render_check
step lab-up python3 "$lab" up
step converge-1 playbook -i "$lab_inventory" site.yml
# Above nearhop: the parent zone delegating the tunnel zones (with glue) and the resolver.
step lab-dns playbook -i "$lab_inventory" "$lab_root/lab-dns.yml"
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
step lab-dns-sa playbook -i "$lab_inventory" -i "$NEARHOP_LAB_EXTRA_INVENTORY" "$lab_root/lab-dns.yml"
step smoke-4-regions python3 "$lab" smoke
# Rolling upgrade: every edge, one at a time, out of the connect name and drained before its
# restart on the new binary, back in after (the playbook waits on both in DNS).
step make-edge-v2 make_edge_v2
step upgrade-edges playbook -i "$lab_inventory" -i "$NEARHOP_LAB_EXTRA_INVENTORY" upgrade-edges.yml -e nearhop_bin_src_dir="$edge_v2"
step edges-run-v2 edges_run_v2
step smoke-after-upgrade python3 "$lab" smoke
# Failover as a playbook, with a tunnel live: eu's replica becomes the primary, control and the
# other replicas follow it, the old primary is rebuilt as its replica. The held tunnel's
# visitor (every 0.2 s) must get 200 throughout; then new tunnels in every region.
step hold-start python3 "$lab" hold-start eu
step promote-replica playbook -i "$lab_inventory" -i "$NEARHOP_LAB_EXTRA_INVENTORY" promote-replica.yml -e new_primary=eu-db-1
step hold-check python3 "$lab" hold-check
step smoke-after-promote python3 "$lab" smoke
# The operator's part after a promotion: the inventory edited as the playbook says, then
# site.yml with it (the new primary configured as the primary, us-db-1 as a replica), limited
# to the hosts the edit concerns (databases, control, DNS: the edges read none of it).
step edit-inventory edit_inventory_after_promotion
step converge-promoted playbook -i "$promoted_inventory" -i "$NEARHOP_LAB_EXTRA_INVENTORY" site.yml --limit 'postgres:control:dns'
step smoke-promoted python3 "$lab" smoke

total=$(( $(date +%s) - started ))
printf '%-28s %4ds\n' "total" "$total" | tee -a "$timings"
echo "rollout-test: every step passed ($(nproc) cores); logs in $logs"
