#!/usr/bin/env python3
"""Checks that a region is one inventory entry: adds region `sa` to a copy of an inventory
with nothing but its hosts and group_vars/region_sa.yml, renders every configuration with
render-configs.yml and checks that the new region reached everything derived from the
inventory.

    python3 tools/check-add-region.py [--inventory inventories/example] [--keep DIR]
        [--check-rendered --bin-dir ../target/debug]

Run from ansible/ with ansible-playbook on PATH and PyYAML importable (the lab's virtualenv,
scripts/install-lab-deps.sh). What is checked in the rendered files:

* control.toml: a [[regions]] entry `sa` with the region's edge address and the backend URL
  of sa's dns host; sa's name server among the zones' nameservers;
* every pdns-backend.toml: sa's client prefix routed to ["sa", ...] in [apex.prefixes], and
  the prefixes of the other regions still there;
* the primary's pg_hba.conf admits sa's replica for replication; sa's replica streams
  through slot replica_sa with application_name sa;
* prometheus-scrape.yml: sa's backend and edge as targets labelled region sa.

Before regions were derived from the inventory the nearhop role refused sa's hosts
("needs nearhop_region ... one of [us, eu, ap]"), so this check failed at rendering.
Exit status 0 when every check passed.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ANSIBLE_DIR = Path(__file__).resolve().parents[1]

REGION = "sa"
DB_HOST = "sa-db-1"
EDGE_HOST = "sa-edge-1"
DB_PRIVATE = "10.40.0.10"
DB_PUBLIC = "198.51.100.50"
EDGE_PRIVATE = "10.40.0.21"
EDGE_IPV4 = "203.0.113.50"
CLIENT_PREFIX = "192.0.2.0/26"

REGION_VARS = f"""---
nearhop_region: {REGION}
# Public address of the region's edge ({EDGE_HOST}): {REGION}.<zone> A record.
nearhop_edge_ipv4: {EDGE_IPV4}
nearhop_region_client_prefixes: ["{CLIENT_PREFIX}"]
nearhop_region_apex_fallback: [us]
"""

FAILURES = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        FAILURES.append(msg)


def add_region(inv: Path):
    """Adds sa's two hosts to hosts.yml and writes group_vars/region_sa.yml: nothing else."""
    hosts_file = inv / "hosts.yml"
    doc = yaml.safe_load(hosts_file.read_text())
    groups = doc["all"]["children"]

    def group_hosts(name, parent=None):
        where = groups[parent]["children"] if parent else groups
        g = where.setdefault(name, {})
        if g.get("hosts") is None:
            g["hosts"] = {}
        return g["hosts"]

    group_hosts("postgres_replicas", parent="postgres")[DB_HOST] = None
    group_hosts("dns")[DB_HOST] = None
    group_hosts("edges")[EDGE_HOST] = None
    groups[f"region_{REGION}"] = {
        "hosts": {
            DB_HOST: {
                "ansible_host": DB_PUBLIC,
                "nearhop_private_ip": DB_PRIVATE,
                "nearhop_public_ip": DB_PUBLIC,
            },
            EDGE_HOST: {"ansible_host": "198.51.100.51", "nearhop_private_ip": EDGE_PRIVATE},
        }
    }
    hosts_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    (inv / "group_vars" / f"region_{REGION}.yml").write_text(REGION_VARS)


def find_one(render: Path, relpath: str):
    return sorted(render.glob(f"*/{relpath}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inventory", default="inventories/example")
    ap.add_argument("--keep", help="render into this directory and keep it")
    ap.add_argument("--check-rendered", action="store_true",
                    help="also run tools/check-rendered.py on the result (needs the binaries)")
    ap.add_argument("--bin-dir", default=str(ANSIBLE_DIR.parent / "target" / "debug"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nearhop-add-region-"))
    try:
        inv = work / "inventory"
        shutil.copytree(ANSIBLE_DIR / args.inventory, inv)
        add_region(inv)
        render = Path(args.keep) if args.keep else work / "rendered"
        if render.exists():
            shutil.rmtree(render)
        run = subprocess.run(
            ["ansible-playbook", "-i", str(inv), "render-configs.yml", "-e", f"render_dir={render}"],
            cwd=ANSIBLE_DIR, capture_output=True, text=True)
        check(run.returncode == 0, f"render-configs.yml with region {REGION} added (exit {run.returncode})")
        if run.returncode != 0:
            print("\n".join(l for l in run.stdout.splitlines() if "FAILED" in l or "fatal" in l
                            or "msg" in l)[-3000:])
            return 1

        controls = find_one(render, "etc/nearhop/control.toml")
        check(len(controls) == 1, "one control.toml rendered")
        control = tomllib.loads(controls[0].read_text())
        regions = {r["name"]: r for r in control.get("regions", [])}
        check(REGION in regions, f"control.toml has region {REGION} (regions: {sorted(regions)})")
        sa = regions.get(REGION, {})
        check(sa.get("ipv4") == EDGE_IPV4, f"control.toml: {REGION} ipv4 = {EDGE_IPV4}")
        check(sa.get("backend_url") == [f"http://{DB_PRIVATE}:9153"],
              f"control.toml: {REGION} backend_url lists {DB_HOST}'s backend")
        for kind in ("pro", "free"):
            ns = control.get("zones", {}).get(kind, {}).get("nameservers", [])
            check(f"ns-{REGION}.tunnel-dns.test" in ns, f"control.toml: zone {kind} nameservers include ns-{REGION} ({ns})")

        backends = find_one(render, "etc/nearhop/pdns-backend.toml")
        check(len(backends) == 4, f"a pdns-backend.toml for each of 4 dns hosts ({len(backends)})")
        for b in backends:
            prefixes = tomllib.loads(b.read_text()).get("apex", {}).get("prefixes", {})
            check(prefixes.get(CLIENT_PREFIX) == [REGION, "us"],
                  f"{b.parts[-4]}: apex prefix {CLIENT_PREFIX} → [{REGION}, us] ({prefixes.get(CLIENT_PREFIX)})")
            check(len(prefixes) >= 4 and all(
                isinstance(v, list) and v[0] in {"us", "eu", "ap", REGION} for v in prefixes.values()),
                f"{b.parts[-4]}: the other regions' prefixes are still routed ({len(prefixes)} prefixes)")

        primary_hba = render / "us-db-1/etc/postgresql/15/main/pg_hba.conf"
        check(primary_hba.exists() and f"replication     replicator    {DB_PRIVATE}/32" in primary_hba.read_text(),
              f"primary's pg_hba.conf admits {DB_HOST} for replication")
        replica_conf = render / DB_HOST / "etc/postgresql/15/main/conf.d/nearhop.conf"
        text = replica_conf.read_text() if replica_conf.exists() else ""
        check(f"primary_slot_name = 'replica_{REGION}'" in text and f"application_name={REGION}'" in text,
              f"{DB_HOST} streams through slot replica_{REGION} as application_name {REGION}")

        scrape = yaml.safe_load((render / "prometheus-scrape.yml").read_text())
        jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
        for job, target in (("nearhop-pdns-backend", f"{DB_PRIVATE}:9153"), ("nearhop-edge", f"{EDGE_PRIVATE}:9090")):
            groups = jobs.get(job, {}).get("static_configs", [])
            found = [g for g in groups if target in g.get("targets", [])]
            check(len(found) == 1 and found[0].get("labels", {}).get("region") == REGION,
                  f"prometheus-scrape.yml: {job} scrapes {target} with region {REGION}")
            check({g.get("labels", {}).get("region") for g in groups} >= {"us", "eu", "ap", REGION},
                  f"prometheus-scrape.yml: {job} keeps every region")

        if args.check_rendered:
            r = subprocess.run([sys.executable, str(ANSIBLE_DIR / "tools/check-rendered.py"), str(render),
                                "--bin-dir", args.bin_dir], cwd=ANSIBLE_DIR)
            check(r.returncode == 0, "tools/check-rendered.py on the rendered files")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{len(FAILURES)} failed" if FAILURES else "every check passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
