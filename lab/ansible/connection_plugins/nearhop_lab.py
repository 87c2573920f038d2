# Ansible connection to a host of nearhop's lab (lab/lab.py, docs/lab.md): runs commands
# inside the host's namespaces with nsenter. No sshd and no daemon: lab.py records the
# host's init PID, and every command, file upload and download enters that PID's mount,
# UTS, IPC, network and PID namespaces and its root (the host's overlay of /).

from __future__ import annotations

DOCUMENTATION = """
name: nearhop_lab
short_description: Enter a nearhop lab host's namespaces with nsenter
description:
  - Runs commands, uploads and downloads files inside a host started by lab/lab.py.
  - The host is found by its name in the lab's state directory (hosts/NAME/pid).
author: nearhop
options:
  remote_addr:
    description:
      - Name of the lab host. With delegate_to, Ansible sets ansible_host to the delegated
        host's name, so that one wins over inventory_hostname.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  lab_dir:
    description: The lab's state directory (lab.py's NEARHOP_LAB_DIR).
    default: /var/tmp/nearhop-lab
    env:
      - name: NEARHOP_LAB_DIR
    vars:
      - name: nearhop_lab_dir
"""

import os
import subprocess
from pathlib import Path

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

# What a login shell on a Debian host would have; the controller's PATH (a virtualenv,
# pyenv shims) means nothing inside the host.
HOST_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "USER=root",
    "LOGNAME=root",
]


class Connection(ConnectionBase):
    """nsenter into a lab host."""

    transport = "nearhop_lab"
    has_pipelining = True
    default_user = "root"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pid = None

    def _host(self):
        return self.get_option("remote_addr") or self._play_context.remote_addr

    def _connect(self):
        if self._connected:
            return self
        pidfile = Path(self.get_option("lab_dir")) / "hosts" / self._host() / "pid"
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError) as e:
            raise AnsibleConnectionFailure(
                f"lab host {self._host()} is not running ({pidfile}: {e}); start the lab with `make lab`"
            )
        self._pid = pid
        self._connected = True
        return self

    def _enter(self, argv):
        return [
            "nsenter", "--target", str(self._pid),
            "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd",
            "--", "/usr/bin/env", "-i", *HOST_ENV, *argv,
        ]

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        display.vvv(f"EXEC {cmd}", host=self._host())
        proc = subprocess.Popen(
            self._enter(["/bin/sh", "-c", cmd]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        self._connect()
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._host())
        # Written from inside the host, so that the path resolves in its root (symlinks too).
        with open(to_bytes(in_path), "rb") as src:
            proc = subprocess.run(
                self._enter(["/bin/sh", "-c", 'cat > "$1"', "put", out_path]),
                stdin=src, capture_output=True,
            )
        if proc.returncode != 0:
            raise AnsibleError(f"failed to put {in_path} to {out_path}: {proc.stderr.decode(errors='replace')}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        self._connect()
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._host())
        with open(to_bytes(out_path), "wb") as dst:
            proc = subprocess.run(
                self._enter(["/bin/cat", in_path]), stdout=dst, stderr=subprocess.PIPE,
            )
        if proc.returncode != 0:
            raise AnsibleError(f"failed to fetch {in_path}: {proc.stderr.decode(errors='replace')}")

    def close(self):
        self._connected = False
