#!/usr/bin/env python3
"""A stand-in for `systemctl`, for running site.yml for real on a machine (container) whose
PID 1 is not systemd. Test use only; never install it on a real host.

    mkdir -p /tmp/fakebin && ln -sf $PWD/tools/fake-systemctl.py /tmp/fakebin/systemctl
    PATH=/tmp/fakebin:$PATH ansible-playbook -i inventories/local site.yml

It understands what ansible.builtin.systemd_service asks (show, is-enabled, enable, disable,
start, stop, restart, reload, daemon-reload) for:
  - postgresql@<ver>-<cluster>: Debian's pg_ctlcluster;
  - any other unit: its unit file (/etc/systemd/system, then /lib/systemd/system) and drop-ins
    (<unit>.service.d/*.conf): ExecStart as User/Group with Environment=, RuntimeDirectory and
    StateDirectory created, ExecStartPost run after the start ($$ unescaped, as systemd does),
    KillSignal on stop with TimeoutStopSec, then SIGKILL.
State: /run/fake-systemd/<unit>.pid, logs: /var/log/fake-systemd/<unit>.log.
"""

import os
import pwd
import grp
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path("/run/fake-systemd")
LOGS = Path("/var/log/fake-systemd")
ENABLED = STATE / "enabled"


def unit_name(u):
    return u if "." in u else u + ".service"


def unit_files(u):
    u = unit_name(u)
    files = []
    for d in ("/etc/systemd/system", "/lib/systemd/system"):
        p = Path(d) / u
        if p.exists():
            files.append(p)
            break
    for d in ("/lib/systemd/system", "/etc/systemd/system"):
        files += sorted((Path(d) / (u + ".d")).glob("*.conf"))
    return files


def parse(u):
    cfg = {}
    for f in unit_files(u):
        for line in f.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            k, v = line.split("=", 1)
            cfg.setdefault(k, []).append(v)
    return cfg


def pg(u):
    m = re.match(r"postgresql@(\d+)-(\w+)(\.service)?$", u)
    return (m.group(1), m.group(2)) if m else None


def pidfile(u):
    return STATE / (unit_name(u) + ".pid")


def running(u):
    p = pg(u)
    if p:
        out = subprocess.run(["pg_lsclusters", "-h", p[0], p[1]], capture_output=True, text=True).stdout
        return " online" in out
    try:
        pid = int(pidfile(u).read_text())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def start(u):
    p = pg(u)
    if p:
        return subprocess.run(["pg_ctlcluster", p[0], p[1], "start"]).returncode
    if running(u):
        return 0
    cfg = parse(u)
    if not cfg.get("ExecStart"):
        print(f"Unit {unit_name(u)} not found.", file=sys.stderr)
        return 5
    user = (cfg.get("User") or ["root"])[-1]
    group = (cfg.get("Group") or [user])[-1]
    pw = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid
    for key, base in (("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")):
        for d in " ".join(cfg.get(key, [])).split():
            path = Path(base) / d
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, pw.pw_uid, gid)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": pw.pw_dir}
    for e in cfg.get("Environment", []):
        for item in shlex.split(e):
            k, v = item.split("=", 1)
            env[k] = v
    argv = shlex.split([x for x in cfg["ExecStart"] if x][-1].replace("$$", "$"))
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / (unit_name(u) + ".log"), "ab")

    def demote():
        os.setsid()
        os.setgid(gid)
        os.initgroups(user, gid)
        os.setuid(pw.pw_uid)

    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=demote, cwd="/")
    STATE.mkdir(parents=True, exist_ok=True)
    pidfile(u).write_text(str(proc.pid))
    for post in cfg.get("ExecStartPost", []):
        subprocess.run(shlex.split(post.replace("$$", "$")), env=env)
    time.sleep(0.3)
    if proc.poll() is not None:
        print(f"{unit_name(u)} exited at once with {proc.returncode}", file=sys.stderr)
        return 1
    return 0


def stop(u):
    p = pg(u)
    if p:
        return subprocess.run(["pg_ctlcluster", p[0], p[1], "stop"]).returncode
    if not running(u):
        return 0
    cfg = parse(u)
    pid = int(pidfile(u).read_text())
    sig = getattr(signal, (cfg.get("KillSignal") or ["SIGTERM"])[-1])
    timeout = float((cfg.get("TimeoutStopSec") or ["90"])[-1])
    os.kill(pid, sig)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pidfile(u).unlink(missing_ok=True)
    return 0


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--") and a != "-l"]
    if not args:
        return 0
    cmd, units = args[0], args[1:]
    ENABLED.mkdir(parents=True, exist_ok=True)
    if cmd in ("daemon-reload", "daemon-reexec"):
        return 0
    rc = 0
    for u in units:
        known = bool(pg(u)) or bool(unit_files(u))
        if cmd == "show":
            active = "active" if running(u) else "inactive"
            en = "enabled" if (ENABLED / unit_name(u)).exists() else "disabled"
            print(f"Id={unit_name(u)}\nLoadState={'loaded' if known else 'not-found'}\n"
                  f"ActiveState={active}\nSubState={'running' if active == 'active' else 'dead'}\n"
                  f"UnitFileState={en}")
        elif cmd == "is-enabled":
            en = (ENABLED / unit_name(u)).exists()
            print("enabled" if en else "disabled")
            rc = 0 if en else 1
        elif cmd == "is-active":
            a = running(u)
            print("active" if a else "inactive")
            rc = 0 if a else 3
        elif cmd == "enable":
            (ENABLED / unit_name(u)).touch()
        elif cmd == "disable":
            (ENABLED / unit_name(u)).unlink(missing_ok=True)
        elif cmd == "start":
            rc = start(u)
        elif cmd == "stop":
            rc = stop(u)
        elif cmd == "restart":
            if pg(u):
                p = pg(u)
                rc = subprocess.run(["pg_ctlcluster", p[0], p[1], "restart"]).returncode
            else:
                stop(u)
                rc = start(u)
        elif cmd == "reload":
            p = pg(u)
            if p:
                rc = subprocess.run(["pg_ctlcluster", p[0], p[1], "reload"]).returncode
            else:
                rc = 0 if running(u) else 7
        else:
            print(f"fake systemctl: {cmd} not supported", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
