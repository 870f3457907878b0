"""Hosts for the multi-host test: Linux network namespaces joined to this machine by veth pairs on a
private bridge, and TCP relays that make a service listening on 127.0.0.1 reachable at the bridge's
address only. Needs root and iproute2 (`ip netns`); CI runs as root on its own machine."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (the command and its error), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (euid is not 0)"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2's `ip` or util-linux's `unshare` is not installed"
    name = f"imgb-probe-{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`ip netns add {name}` failed: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@dataclass(frozen=True)
class Host:
    """A namespace with one veth link to the bridge: `address` is its own, `gateway` the machine's."""

    netns: str
    address: str
    gateway: str

    def prefix(self, hostname: str) -> list[str]:
        """Command prefix that runs a program on this host: in its namespace, under its own hostname
        (a UTS namespace, so that its worker names itself as a separate machine would)."""
        script = f'hostname {hostname} && exec "$@"'
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", script, "--"]


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """`count` namespaces, each linked by a veth pair to a bridge that has the machine's address on a
    private /24 (10.231.N.1); deleted (with their links and the bridge) on the way out, always."""
    tag = f"{os.getpid() % 10000:04d}{random.randint(0, 99):02d}"
    subnet = f"10.231.{random.randint(1, 250)}"
    gateway = f"{subnet}.1"
    bridge = f"ib{tag}"
    made: list[Host] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index in range(count):
            netns, outside, inside = f"imgb-{tag}-{index}", f"ih{tag}{index}", f"in{tag}{index}"
            _ip("netns", "add", netns)
            made.append(Host(netns, f"{subnet}.{index + 2}", gateway))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", netns)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", netns, "addr", "add", f"{made[-1].address}/24", "dev", inside)
            _ip("-n", netns, "link", "set", inside, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:  # the namespace's end of the pair goes with it, and the pair with that end
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


class TcpRelay:
    """Accepts on (host, a free port) and pipes each connection to `target`, both ways."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server((host, 0))
        self.address = (host, int(self.server.getsockname()[1]))
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.close()
