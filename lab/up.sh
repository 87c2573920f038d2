#!/bin/bash
# `make lab`: start the lab's hosts and converge site.yml on them (docs/lab.md). The lab
# stays up for you to use; `lab/lab.py down` stops everything it started. If the converge
# fails, the lab is stopped again.
set -euo pipefail
source "$(dirname "$0")/env.sh"
python3 "$lab_root/lab.py" up
trap 'echo "lab: converge failed; stopping the lab"; python3 "$lab_root/lab.py" down' ERR
(cd "$repo_root/ansible" && ansible-playbook -i "$lab_inventory" site.yml)
# The parent zone and the visitors' resolver (the smoke test resolves through them).
(cd "$repo_root/ansible" && ansible-playbook -i "$lab_inventory" "$lab_root/lab-dns.yml")
trap - ERR
cat <<MSG
lab: up and converged. Try:
  lab/lab.py status                       the hosts
  lab/lab.py exec client-1                a shell on the client host (ssh, dig, curl)
  lab/lab.py smoke                        the smoke test
  source lab/env.sh; (cd ansible && ansible-playbook -i ../lab/inventory site.yml)
  lab/lab.py down                         stop every process and remove the lab
MSG
