#!/usr/bin/env python3
"""Opens a nearhop tunnel with Paramiko, as a Python program would.

Asks the edge for remote forwards (`Transport.request_port_forward`, like `ssh -R`), serves
each forwarded channel from the local service it names, and prints what the edge says on a
session channel (the URL). Runs until the edge closes the connection or it is stopped.

    python3 paramiko_tunnel.py --port 2222 --user TOKEN -R 0:localhost:8000 a.tunnel.test

The integration tests run it against a real edge (integration-tests/src/clients.rs);
docs/user-guide.md shows it to users.
"""

import argparse
import socket
import sys
import threading
import time

import paramiko


def pipe(src, dst):
    """Copies src to dst until src ends, then ends dst's sending side."""
    try:
        while True:
            data = src.recv(32768)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(channel, target):
    """Joins one forwarded channel (one visitor connection) to the local service."""
    try:
        local = socket.create_connection(target)
    except OSError as e:
        print(f"cannot reach {target[0]}:{target[1]}: {e}", file=sys.stderr, flush=True)
        channel.close()
        return
    back = threading.Thread(target=pipe, args=(local, channel), daemon=True)
    back.start()
    pipe(channel, local)
    back.join()
    channel.close()
    local.close()


def parse_forward(spec):
    """`[bind:]port:host:hostport`, as `ssh -R` takes it."""
    parts = spec.split(":")
    if len(parts) == 3:
        parts.insert(0, "")
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        raise argparse.ArgumentTypeError(f"{spec!r} is not [bind:]port:host:hostport")
    return parts[0], int(parts[1]), (parts[2], int(parts[3]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("command", nargs="*", help="tunnel options (b:user:pass, w:CIDR, ...)")
    ap.add_argument("--port", type=int, default=22)
    ap.add_argument("--user", required=True, help="TOKEN[+KEYWORD...]")
    ap.add_argument("-R", dest="forwards", action="append", type=parse_forward, default=[])
    ap.add_argument(
        "--exec-delay",
        type=float,
        default=0.0,
        help="seconds to wait between opening the session and sending the command (tests)",
    )
    ap.add_argument(
        "--host-key",
        help="the edge's public key ('ssh-ed25519 AAAA...'); without it, any key is accepted",
    )
    args = ap.parse_args()

    sock = socket.create_connection((args.host, args.port))
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=30)
    key = transport.get_remote_server_key()
    seen = f"{key.get_name()} {key.get_base64()}"
    if args.host_key and seen != " ".join(args.host_key.split()[:2]):
        sys.exit(f"host key mismatch: the edge showed {seen}")
    print(f"cipher: {transport.remote_cipher}", flush=True)
    # The edge takes the token from the user name and accepts any method.
    transport.auth_none(args.user)

    targets = {}

    def on_channel(channel, _origin, server):
        target = targets.get(server[1])
        if target is None:
            channel.close()
            return
        threading.Thread(target=serve, args=(channel, target), daemon=True).start()

    for bind, port, target in args.forwards:
        try:
            granted = transport.request_port_forward(bind, port, handler=on_channel)
        except paramiko.SSHException as e:
            sys.exit(f"the edge refused -R {bind}:{port}: {e}")
        targets[granted] = target

    # The forwards first, then the session: the edge prints the URL on it.
    session = transport.open_session()
    session.set_combine_stderr(True)
    if args.exec_delay:
        time.sleep(args.exec_delay)
    if args.command:
        session.exec_command(" ".join(args.command))
    else:
        session.invoke_shell()
    while True:
        data = session.recv(4096)
        if not data:
            break
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
    transport.close()


if __name__ == "__main__":
    main()
