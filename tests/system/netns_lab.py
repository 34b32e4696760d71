"""Lab namespaces on one bridge, and the `groupvpn` daemons run in or for them.

Every name carries a tag unique to the run, so parallel runs never
collide.  Hosts get IPv4 addresses (/24) and IPv6 addresses (/64, with
duplicate address detection off so an address is usable at once); there
is no route out.  ``teardown`` stops every process and deletes every
namespace, also after a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gm"))
from processes import Daemon, groupvpn, server_head  # noqa: E402  (server_head is re-exported for the system tests)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Lab:
    """Namespaces on one bridge, and the daemons and processes started in or for them."""

    directory: Path
    tag: str = field(default_factory=lambda: f"gvr{os.getpid() % 100000}{uuid.uuid4().hex[:4]}")
    namespaces: list[str] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def namespace(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        self._add(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def host(self, role: str, *addresses: str) -> str:
        """A namespace for ``role`` with interface ``wan`` on the bridge, holding ``addresses``."""
        name = self.namespace(role)
        self._add(name)
        port = f"p-{role}"
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "wan", "netns", name)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        for address in addresses:
            if ip_address(address).version == 4:
                ip("-n", name, "addr", "add", f"{address}/24", "dev", "wan")
            else:
                ip("-n", name, "addr", "add", f"{address}/64", "dev", "wan", "nodad")
        ip("-n", name, "link", "set", "wan", "up")
        return name

    def ks(self, text: str) -> Daemon:
        """The key server configured by ``text``, run inside the namespace of role ``ks``."""
        return self._made(Daemon("ks", "ks", self.directory, self.namespace("ks")).write(text))

    def member(self, role: str, text: str, *, inside: bool) -> Daemon:
        """The member configured by ``text``: inside the namespace of ``role``, or from the root namespace."""
        daemon = Daemon("member", role, self.directory, self.namespace(role) if inside else None)
        return self._made(daemon.write(text))

    def spawn(self, role: str, command: Sequence[str]) -> None:
        """Any other process, inside the namespace of ``role``."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace(role), *command], stderr=subprocess.PIPE)
        self.processes.append(process)

    def _made(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon)
        return daemon

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        for process in self.processes:
            process.kill()
            process.wait(10)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def registration(member: Daemon) -> dict[str, Any] | None:
    """The member's first VPN as `show ... kek security-associations detail` reports it."""
    view = member.try_show("kek-security-associations", detail=True)
    return None if view is None else view["records"][0]


def registered(member: Daemon) -> dict[str, Any] | None:
    record = registration(member)
    return record if record is not None and record["state"] == "registered" else None


def failed(member: Daemon) -> dict[str, Any] | None:
    record = registration(member)
    return record if record is not None and record["last_failure"] else None


def show_json(member: Daemon, *words: str) -> dict[str, Any]:
    """`groupvpn show security group-vpn member WORDS --json`, as an operator would run it."""
    result = groupvpn("show", "security", "group-vpn", "member", *words, "--json", "--socket", str(member.socket))
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


