#!/usr/bin/env python3
"""Checks the files render-configs.yml wrote, with the real programs where possible.

    python3 tools/check-rendered.py RENDER_DIR [--bin-dir ../target/debug] [--skip-binaries]

For every host directory under RENDER_DIR:

* control.toml, edge.toml, pdns-backend.toml: parsed with tomllib; every key must be a field of
  the matching struct in control/src/config.rs, edge/src/config.rs, pdns-backend/src/config.rs
  (read from the source, so the check follows the code); then each file is loaded by the real
  binary, with environment overrides that make it stop right *after* configuration is loaded
  and validated, without touching any database or host:
    - nearhop-control: NEARHOP_CONTROL_DATABASE_URL points at a closed local port; a valid
      config ends with "the database is unavailable", an invalid one with a config error.
    - nearhop-edge: NEARHOP_EDGE_SSH_LISTEN=192.0.2.1:1 (not a local address), host key in a
      temp dir, credential_file (or, with edge_use_legacy_secret, edge_secret_file) pointing
      at the rendered stand-in credential (or secret); a valid config ends with
      "binding SSH listener".
    - nearhop-pdns-backend: NEARHOP_PDNS_BACKEND_HTTP_LISTEN=192.0.2.1:1; a valid config ends
      with "binding http listener".
* pdns.conf: `pdns_server --config-dir=<dir> --config=check` (exit 0 means every setting is
  known and well-formed).
* systemd units and drop-ins: `systemd-analyze verify` (with ExecStart paths pointed at
  --bin-dir); any warning (unknown key, bad value) is a failure. Exec lines must not hold a
  bare `$name` meant for the shell (systemd would expand it; `$$` is the escape).

Exit status 0 when everything passed.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FAILURES = []


def fail(msg):
    FAILURES.append(msg)
    print(f"FAIL {msg}")


def ok(msg):
    print(f"ok   {msg}")


def struct_fields(rust_file, struct):
    """Field names of `pub struct <struct> { ... }` in a Rust source file."""
    text = (REPO / rust_file).read_text()
    m = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", text, re.S)
    if not m:
        raise SystemExit(f"struct {struct} not found in {rust_file}")
    return set(re.findall(r"^\s*pub (\w+)\s*:", m.group(1), re.M))


def check_keys(path, table, allowed, where):
    unknown = sorted(set(table) - allowed)
    if unknown:
        fail(f"{path}: unknown keys {unknown} in {where}")
    return not unknown


def schema_control(path, doc):
    top = struct_fields("control/src/config.rs", "Config")
    region = struct_fields("control/src/config.rs", "RegionConfig")
    zones = struct_fields("control/src/config.rs", "Zones")
    zone = struct_fields("control/src/config.rs", "ZoneConfig")
    good = check_keys(path, doc, top, "top level")
    for i, r in enumerate(doc.get("regions", [])):
        good &= check_keys(path, r, region, f"regions[{i}]")
    z = doc.get("zones", {})
    good &= check_keys(path, z, zones, "zones")
    for kind, t in z.items():
        good &= check_keys(path, t, zone, f"zones.{kind}")
    return good


def schema_edge(path, doc):
    return check_keys(path, doc, struct_fields("edge/src/config.rs", "Config"), "top level")


def schema_backend(path, doc):
    top = struct_fields("pdns-backend/src/config.rs", "Config")
    apex = struct_fields("pdns-backend/src/config.rs", "ApexConfig")
    zone = struct_fields("pdns-backend/src/config.rs", "ZoneConfig")
    good = check_keys(path, doc, top, "top level")
    good &= check_keys(path, doc.get("apex", {}), apex, "apex")
    for name, t in doc.get("zones", {}).items():
        good &= check_keys(path, t, zone, f"zones.{name}")
    return good


def run(cmd, env_extra, timeout=60):
    env = dict(os.environ)
    env.update(env_extra)
    env["RUST_BACKTRACE"] = "0"
    env["NO_COLOR"] = "1"
    env["RUST_LOG"] = "error"
    env["NEARHOP_LOG"] = "error"
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def binary_control(bin_dir, path):
    rc, out = run(
        [str(bin_dir / "nearhop-control"), "--config", str(path), "token", "revoke", "--token-id", "0"],
        {"NEARHOP_CONTROL_DATABASE_URL": "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"},
    )
    if "the database is unavailable" in out:
        ok(f"{path}: nearhop-control loaded and validated it (stopped at the database, as intended)")
    else:
        fail(f"{path}: nearhop-control refused it:\n{out}")


def binary_edge(bin_dir, path, tmp):
    env = {
        "NEARHOP_EDGE_SSH_LISTEN": "192.0.2.1:1",
        "NEARHOP_EDGE_HOST_KEY_PATH": str(Path(tmp) / "edge_host_key"),
    }
    # The rendered files sit under the render root, not at the paths edge.toml names.
    for name, key in (("edge_credential", "CREDENTIAL_FILE"), ("edge_secret", "EDGE_SECRET_FILE")):
        if (path.parent / name).exists():
            env[f"NEARHOP_EDGE_{key}"] = str(path.parent / name)
    rc, out = run([str(bin_dir / "nearhop-edge"), "--config", str(path)], env)
    if "binding SSH listener 192.0.2.1:1" in out:
        ok(f"{path}: nearhop-edge loaded and validated it (stopped at the test bind, as intended)")
    else:
        fail(f"{path}: nearhop-edge refused it:\n{out}")


def binary_backend(bin_dir, path):
    rc, out = run(
        [str(bin_dir / "nearhop-pdns-backend"), "--config", str(path)],
        {"NEARHOP_PDNS_BACKEND_HTTP_LISTEN": "192.0.2.1:1"},
    )
    if "binding http listener 192.0.2.1:1" in out:
        ok(f"{path}: nearhop-pdns-backend loaded and validated it (stopped at the test bind, as intended)")
    else:
        fail(f"{path}: nearhop-pdns-backend refused it:\n{out}")


def check_pdns(path):
    if not shutil.which("pdns_server"):
        print(f"skip {path}: pdns_server not installed")
        return
    rc, out = run(["pdns_server", f"--config-dir={path.parent}", "--config=check"], {})
    if rc == 0:
        ok(f"{path}: pdns_server --config=check accepts it")
    else:
        fail(f"{path}: pdns_server --config=check:\n{out}")


def check_exec_dollars(unit_path):
    """systemd expands $NAME and ${NAME} in Exec*= lines (unknown ones to nothing); a literal
    $ must be written $$. Flags a bare $ in front of a name, ( or { that is not an Environment=
    variable of the same unit: almost always a shell variable meant for /bin/sh -c."""
    text = unit_path.read_text()
    env = set(re.findall(r"^Environment=\"?([A-Za-z_][A-Za-z0-9_]*)=", text, re.M))
    good = True
    for line in text.splitlines():
        if not re.match(r"^Exec[A-Za-z]*=", line):
            continue
        bare = line.replace("$$", "")
        for m in re.finditer(r"\$\{?([A-Za-z_][A-Za-z0-9_]*|\()", bare):
            if m.group(1) not in env:
                fail(f"{unit_path}: `${m.group(1)}` in {line.split('=')[0]} is expanded by systemd; write $$ for the shell")
                good = False
    return good


def check_units(host_dir, bin_dir):
    units = sorted((host_dir / "etc/systemd/system").glob("*.service"))
    dropins = sorted((host_dir / "etc/systemd/system").glob("*.service.d/*.conf"))
    if not (units or dropins) or not shutil.which("systemd-analyze"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = []
        for u in units:
            if check_exec_dollars(u):
                ok(f"{u}: no unescaped $ in Exec lines")
            text = u.read_text().replace("/usr/local/bin/", f"{bin_dir}/")
            (tmp / u.name).write_text(text)
            names.append(u.name)
        for d in dropins:
            unit = d.parent.name[: -len(".d")]
            (tmp / d.parent.name).mkdir(exist_ok=True)
            shutil.copy(d, tmp / d.parent.name / d.name)
            vendor = Path("/lib/systemd/system") / unit
            if not (tmp / unit).exists():
                if vendor.exists():
                    shutil.copy(vendor, tmp / unit)
                    names.append(unit)
                else:
                    print(f"skip {d}: {unit} is not installed here")
        env = {"SYSTEMD_UNIT_PATH": f"{tmp}:"}
        for name in names:
            rc, out = run(["systemd-analyze", "verify", str(tmp / name)], env)
            # Only our own files count; a missing vendor dependency is not ours.
            lines = [l for l in out.splitlines() if l.strip()]
            if rc == 0 and not lines:
                ok(f"{host_dir.name}: systemd-analyze verify {name} (with its drop-ins)")
            else:
                fail(f"{host_dir.name}: systemd-analyze verify {name}:\n" + "\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("render_dir", type=Path)
    ap.add_argument("--bin-dir", type=Path, default=REPO / "target/debug")
    ap.add_argument("--skip-binaries", action="store_true")
    args = ap.parse_args()
    bin_dir = args.bin_dir.resolve()
    hosts = sorted(p for p in args.render_dir.iterdir() if p.is_dir())
    if not hosts:
        raise SystemExit(f"nothing rendered under {args.render_dir}")
    counts = {"toml": 0, "pdns": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for host in hosts:
            etc = host / "etc/nearhop"
            for name, schema, binary in [
                ("control.toml", schema_control, binary_control),
                ("edge.toml", schema_edge, None),
                ("pdns-backend.toml", schema_backend, binary_backend),
            ]:
                path = etc / name
                if not path.exists():
                    continue
                counts["toml"] += 1
                try:
                    doc = tomllib.loads(path.read_text())
                except tomllib.TOMLDecodeError as e:
                    fail(f"{path}: not valid TOML: {e}")
                    continue
                if schema(path, doc):
                    ok(f"{path}: valid TOML, every key is a field of the config struct")
                if args.skip_binaries:
                    continue
                if name == "edge.toml":
                    binary_edge(bin_dir, path, tmp)
                else:
                    binary(bin_dir, path)
            pdns = host / "etc/powerdns/pdns.conf"
            if pdns.exists():
                counts["pdns"] += 1
                check_pdns(pdns)
            check_units(host, bin_dir)
    print(f"\n{len(hosts)} hosts, {counts['toml']} TOML files, {counts['pdns']} pdns.conf; "
          f"{len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
