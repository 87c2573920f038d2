#!/usr/bin/env python3
"""nearhop's Ansible lab: real hosts on this machine, made of Linux namespaces (docs/lab.md).

    lab/lab.py up                 start every host of lab/inventory (fails if the lab is up)
    lab/lab.py add                start the hosts of $NEARHOP_LAB_EXTRA_INVENTORY not yet up
    lab/lab.py down               stop every host and remove the lab's network and state
    lab/lab.py status             the hosts and whether they run
    lab/lab.py exec HOST CMD...   run a command inside a host
    lab/lab.py pid HOST           a host's init PID (for nsenter)
    lab/lab.py smoke              the smoke test from the client host (lab/smoke-client.sh)
    lab/lab.py logs [LINES]       the last LINES (default 80) of every service's log on every
                                  running host (/var/log/fake-systemd/<unit>.log)
    lab/lab.py hold-start [REGION]  a tunnel held live through REGION's edge (default: the
                                  first region), a visitor asking it every 0.2 s
    lab/lab.py hold-check         stop that visitor: every answer must have been 200
                                  (lab/hold-client.sh)

Each host is its own mount, UTS, IPC, network and PID namespace (lab/hostinit.sh): an
overlayfs copy-on-write view of this machine's / with its own /run, /tmp and /dev/shm, and
one veth pair to a bridge that lives in a private network namespace of the lab
(`ip netns` name nearhop-lab). Hosts talk to each other over that bridge, on the addresses
of the inventory (lab_ip, 198.18.0.0/15); the lab's namespaces have no route out, and
nothing on the machine (its own network namespace included) has an address on the bridge.

`down` kills each host's init: the kernel then ends every process of that PID namespace
(PostgreSQL, pdns, the nearhop services), and the host's mounts go with its mount
namespace. Run as root. State: $NEARHOP_LAB_DIR (default /var/tmp/nearhop-lab). $NEARHOP_LAB_EXTRA_INVENTORY names a
second inventory used with lab/inventory (e.g. lab/inventory-sa: a region added to the
running lab); `add` starts its hosts, and `smoke` covers its regions too.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

LAB = Path(__file__).resolve().parent
REPO = LAB.parent
LAB_DIR = Path(os.environ.get("NEARHOP_LAB_DIR", "/var/tmp/nearhop-lab"))
NETNS = "nearhop-lab"
BRIDGE = "br0"
PREFIX_LEN = 15  # every lab address is in 198.18.0.0/15, on one bridge
STANDIN = REPO / "ansible" / "tools" / "fake-systemctl.py"


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, text=True, **kw)


def inventory():
    """lab/inventory (and the extra one) as ansible-inventory --list sees it: the one source
    of the lab's hosts."""
    sources = ["-i", str(LAB / "inventory")]
    extra = os.environ.get("NEARHOP_LAB_EXTRA_INVENTORY")
    if extra:
        sources += ["-i", str(Path(extra).resolve())]
    # As lab/env.sh sets them: the lab's ansible, and the example vault's test password
    # (the lab's secrets are that vault's).
    env = dict(os.environ)
    env.setdefault("ANSIBLE_VAULT_PASSWORD_FILE",
                   str(REPO / "ansible" / "inventories" / "example" / "vault-test-password.txt"))
    venv = os.environ.get("NEARHOP_LAB_VENV", "/opt/nearhop-lab/venv")
    env["PATH"] = f"{venv}/bin:{env.get('PATH', '')}"
    out = subprocess.run(
        ["ansible-inventory", *sources, "--list"],
        check=True, capture_output=True, text=True, cwd=REPO / "ansible", env=env,
    ).stdout
    return json.loads(out)


def group_hosts(inv, group):
    """Hosts of a group and of its children."""
    g = inv.get(group, {})
    hosts = list(g.get("hosts", []))
    for child in g.get("children", []):
        hosts += [h for h in group_hosts(inv, child) if h not in hosts]
    return hosts


def inventory_hosts():
    """{name: lab_ip} of every host of lab/inventory."""
    hostvars = inventory()["_meta"]["hostvars"]
    hosts = {}
    for name, hv in hostvars.items():
        if "lab_ip" not in hv:
            raise SystemExit(f"lab: inventory host {name} has no lab_ip")
        hosts[name] = hv["lab_ip"]
    return dict(sorted(hosts.items()))


def host_dir(name):
    return LAB_DIR / "hosts" / name


def host_pid(name):
    try:
        pid = int((host_dir(name) / "pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def netns_exists():
    return Path(f"/run/netns/{NETNS}").exists()


def enter(pid, argv):
    return ["nsenter", "--target", str(pid), "--mount", "--uts", "--ipc", "--net", "--pid",
            "--root", "--wd", "--", *argv]


def start_host(name, ip, i, etc_hosts):
    """Boots one host (lab/hostinit.sh) and plugs it into the bridge as port vh<i>."""
    d = host_dir(name)
    d.mkdir(parents=True)
    log = open(d / "init.log", "w")
    unshare = subprocess.Popen(
        ["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork",
         "--propagation", "private",
         "/bin/bash", str(LAB / "hostinit.sh"), name, str(d), str(STANDIN), str(etc_hosts)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    (d / "unshare.pid").write_text(str(unshare.pid))
    deadline = time.monotonic() + 30
    while not (d / "ready").exists():
        if unshare.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"lab: host {name} did not boot; see {d / 'init.log'}:\n"
                             + (d / "init.log").read_text())
        time.sleep(0.05)
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
    pid = int(children[0])
    (d / "pid").write_text(str(pid))

    # One veth pair: vhN on the bridge in the lab's namespace, eth0 in the host.
    port = f"vh{i}"
    sh("ip", "link", "add", port, "netns", NETNS, "type", "veth",
       "peer", "name", "eth0", "netns", str(pid))
    sh("ip", "-n", NETNS, "link", "set", port, "master", BRIDGE, "up")
    net = ["nsenter", "--target", str(pid), "--net", "--"]
    sh(*net, "ip", "link", "set", "lo", "up")
    sh(*net, "ip", "addr", "add", f"{ip}/{PREFIX_LEN}", "dev", "eth0")
    sh(*net, "ip", "link", "set", "eth0", "up")
    # systemd's units give pdns and the edge CAP_NET_BIND_SERVICE for ports 53 and 80;
    # the stand-in does not apply capabilities, so the lab opens low ports to every user
    # of the host's network namespace instead (this sysctl is per namespace).
    sh(*net, "sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=0")
    print(f"lab: {name} up ({ip}, init pid {pid})")


def up():
    if netns_exists() or (LAB_DIR / "hosts").exists():
        raise SystemExit(f"lab: already up (or left over): run `lab/lab.py down` first")
    if os.geteuid() != 0:
        raise SystemExit("lab: must run as root (namespaces, mounts, veth pairs)")
    hosts = inventory_hosts()
    (LAB_DIR / "hosts").mkdir(parents=True)
    etc_hosts = LAB_DIR / "etc-hosts"
    etc_hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                         + "".join(f"{ip}\t{name}\n" for name, ip in hosts.items()))

    sh("ip", "netns", "add", NETNS)
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    sh("ip", "-n", NETNS, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", NETNS, "link", "set", BRIDGE, "up")

    for i, (name, ip) in enumerate(hosts.items()):
        start_host(name, ip, i, etc_hosts)

    check_reachable(hosts)
    print(f"lab: {len(hosts)} hosts up, bridge {BRIDGE} in network namespace {NETNS}")


def check_reachable(hosts):
    """Every host reaches every other before anyone uses the lab."""
    names = list(hosts)
    first = host_pid(names[0])
    for name in names[1:]:
        r = sh("nsenter", "--target", str(first), "--net", "--", "ping", "-c1", "-W2", hosts[name],
               check=False, capture_output=True)
        if r.returncode != 0:
            raise SystemExit(f"lab: {names[0]} cannot reach {name} ({hosts[name]})")


def add():
    """Starts the hosts of the inventory that are not up yet (a region added to a running lab)."""
    if not netns_exists():
        raise SystemExit("lab: not up (`make lab` or lab/lab.py up first)")
    hosts = inventory_hosts()
    running = sorted(p.name for p in (LAB_DIR / "hosts").iterdir())
    new = {n: ip for n, ip in hosts.items() if n not in running}
    etc_hosts = LAB_DIR / "etc-hosts"
    etc_hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                         + "".join(f"{ip}\t{name}\n" for name, ip in hosts.items()))
    for i, (name, ip) in enumerate(new.items(), start=len(running)):
        start_host(name, ip, i, etc_hosts)
    check_reachable(hosts)
    print(f"lab: {len(new)} host(s) added, {len(hosts)} up")


def alive(pid):
    """Running (a zombie waiting for its reaper counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def lab_process(pid, kind):
    """Is PID still the process the lab started (not a PID reused since)? The init runs in
    a PID namespace of its own; the unshare that started it runs unshare."""
    try:
        if kind == "pid":
            return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"unshare")
    except OSError:
        return False


def down():
    stopped = 0
    hosts_dir = LAB_DIR / "hosts"
    pids = []
    for d in sorted(hosts_dir.iterdir()) if hosts_dir.exists() else []:
        for kind in ("pid", "unshare.pid"):
            try:
                pid = int((d / kind).read_text())
            except (OSError, ValueError):
                continue
            if not lab_process(pid, kind):
                continue
            try:
                # Only the processes the lab started: each host's init (its PID namespace
                # ends with it) and the unshare that waited for it.
                os.kill(pid, signal.SIGKILL)
                stopped += 1
                pids.append(pid)
            except OSError:
                pass
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    if netns_exists():
        sh("ip", "netns", "del", NETNS)
    if LAB_DIR.exists():
        # The hosts' upper layers: everything the roles wrote.
        shutil.rmtree(LAB_DIR)
    print(f"lab: down ({stopped} processes ended, state removed)")


def new_pro_token(control_pid, name):
    """A fresh pro account made on the control host; its token."""
    out = subprocess.run(
        enter(control_pid, ["sudo", "-u", "nearhop", "/usr/local/bin/nearhop-control",
                            "--config", "/etc/nearhop/control.toml", "--json",
                            "account", "create", "--plan", "pro", "--name", name]),
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)["token"]


def client_script(client_pid, script, args):
    """Copies lab/<script> into the client host's /tmp and runs it there with args."""
    inside = f"/tmp/nearhop-{script}"
    with open(LAB / script) as f:
        sh(*enter(client_pid, ["/bin/sh", "-c", f"cat > {inside}"]), stdin=f)
    return subprocess.run(enter(client_pid, ["/bin/bash", inside, *args])).returncode


def hold(argv):
    """hold-start [REGION] / hold-check: one tunnel kept live across a maintenance step."""
    inv = inventory()
    hostvars = inv["_meta"]["hostvars"]
    client_pid = host_pid(group_hosts(inv, "lab_clients")[0])
    control_pid = host_pid(group_hosts(inv, "control")[0])
    if client_pid is None or control_pid is None:
        raise SystemExit("lab: the lab is not up (`make lab`)")
    if argv[0] == "hold-check":
        return client_script(client_pid, "hold-client.sh", ["check"])
    regions = [g[len("region_"):] for g in inv if g.startswith("region_") and group_hosts(inv, g)]
    region = argv[1] if len(argv) > 1 else regions[0]
    if region not in regions:
        raise SystemExit(f"lab: no region {region} (regions: {' '.join(regions)})")
    hv = hostvars[group_hosts(inv, f"region_{region}")[0]]
    token = new_pro_token(control_pid, f"lab-hold-{region}-{int(time.time())}")
    return client_script(client_pid, "hold-client.sh",
                         ["start", str(hv.get("edge_ssh_port", 2222)),
                          hv.get("nearhop_zone_pro", "a.tunnel.test"), hv["nearhop_edge_ipv4"], token])


def smoke():
    """From the client host, in every region: a tunnel, its name resolved through the lab's
    resolver and asked of every name server, a visitor. A fresh pro account per region, made on the control host."""
    inv = inventory()
    hostvars = inv["_meta"]["hostvars"]
    control = group_hosts(inv, "control")[0]
    client = group_hosts(inv, "lab_clients")[0]
    regions = [g[len("region_"):] for g in inv if g.startswith("region_") and group_hosts(inv, g)]
    dns_ips = [hostvars[h]["lab_ip"] for r in regions for h in group_hosts(inv, f"region_{r}")
               if h in group_hosts(inv, "dns")]
    control_pid = host_pid(control)
    client_pid = host_pid(client)
    if control_pid is None or client_pid is None:
        raise SystemExit("lab: the lab is not up (`make lab`)")
    tunnels = []
    for r in regions:
        edge_ip = hostvars[group_hosts(inv, f"region_{r}")[0]]["nearhop_edge_ipv4"]
        prefix = (hostvars[group_hosts(inv, f"region_{r}")[0]].get("nearhop_region_client_prefixes") or [""])[0]
        token = new_pro_token(control_pid, f"lab-smoke-{r}-{int(time.time())}")
        tunnels.append(f"{r}:{edge_ip}:{token}:{prefix}")
    resolvers = group_hosts(inv, "lab_resolvers")
    resolver = hostvars[resolvers[0]]["lab_ip"] if resolvers else "-"
    any_host = hostvars[client]
    with open(LAB / "smoke-client.sh") as script:
        return subprocess.run(
            enter(client_pid, ["/bin/bash", "-s", "--", str(any_host.get("edge_ssh_port", 2222)),
                               any_host.get("nearhop_zone_pro", "a.tunnel.test"), resolver,
                               *tunnels, "--", *dns_ips]),
            stdin=script).returncode


def status():
    hosts_dir = LAB_DIR / "hosts"
    if not hosts_dir.exists():
        print("lab: down")
        return 1
    rc = 0
    for d in sorted(hosts_dir.iterdir()):
        pid = host_pid(d.name)
        print(f"{d.name:12} {'up, init pid ' + str(pid) if pid else 'NOT RUNNING'}")
        rc |= pid is None
    return rc


def logs(lines):
    """The tail of every supervised service's log on every running host: what
    rollout-test.sh keeps when a step fails, before the lab and its logs are removed."""
    hosts_dir = LAB_DIR / "hosts"
    if not hosts_dir.exists():
        print("lab: down (no logs)")
        return 1
    for d in sorted(hosts_dir.iterdir()):
        pid = host_pid(d.name)
        if pid is None:
            print(f"===== {d.name}: not running")
            continue
        script = ('for f in /var/log/fake-systemd/*.log; do [ -e "$f" ] || continue; '
                  f'echo "===== {d.name}: $f"; tail -n {lines} "$f"; done')
        subprocess.run(enter(pid, ["/bin/sh", "-c", script]), check=False)
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "up":
        try:
            up()
        except BaseException:
            down()
            raise
        return 0
    if cmd == "add":
        add()
        return 0
    if cmd == "down":
        down()
        return 0
    if cmd == "status":
        return status()
    if cmd == "smoke":
        return smoke()
    if cmd == "logs":
        try:
            lines = int(argv[2]) if len(argv) > 2 else 80
        except ValueError:
            print(f"lab: logs takes a number of lines, not {argv[2]!r}", file=sys.stderr)
            return 2
        return logs(max(lines, 1))
    if cmd in ("hold-start", "hold-check"):
        return hold(argv[1:])
    if cmd in ("exec", "pid") and len(argv) >= 3:
        pid = host_pid(argv[2])
        if pid is None:
            print(f"lab: host {argv[2]} is not running", file=sys.stderr)
            return 1
        if cmd == "pid":
            print(pid)
            return 0
        env = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME=/root", "LANG=C.UTF-8"]
        return subprocess.run(enter(pid, env + (argv[3:] or ["/bin/bash"]))).returncode
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
