"""Network namespaces joined by veth pairs: a declarative topology built and inspected with iproute2.

A ``Topology`` is plain data (namespaces, point-to-point links with one
IPv4 address per end, static routes, which namespaces forward), so the
plan can be checked without root.  ``build`` creates it with a handful of
``ip -batch`` runs; every veth is created directly inside its two
namespaces, so no interface ever exists in the machine's own namespace and
nothing is routed out of the lab.  ``build`` reports each namespace to a
journal as soon as it exists, before anything is put in it, so a later
``destroy`` can clean up after a crash at any point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address
from typing import Any

IFNAME_MAX = 15  # IFNAMSIZ - 1
COMMAND_TIMEOUT = 20.0
STOP_GRACE = 5.0
# Destinations no lab namespace may have a route to: documentation space and a public resolver.
OUTSIDE = ("192.0.2.1", "8.8.8.8", "2001:db8::1", "2001:4860:4860::8888")


class NetlabError(RuntimeError):
    """An iproute2 command failed, or a topology is inconsistent."""


@dataclass(frozen=True, slots=True)
class Port:
    """One end of a veth link: the interface ``ifname`` in ``netns`` with ``address``."""

    netns: str
    ifname: str
    address: IPv4Interface


@dataclass(frozen=True, slots=True)
class Link:
    a: Port
    b: Port


@dataclass(frozen=True, slots=True)
class Route:
    netns: str
    destination: IPv4Network
    gateway: IPv4Address


@dataclass(frozen=True, slots=True)
class Topology:
    namespaces: tuple[str, ...]
    links: tuple[Link, ...]
    routes: tuple[Route, ...]
    routers: frozenset[str]  # namespaces that forward IPv4

    def __post_init__(self) -> None:
        known = set(self.namespaces)
        if len(known) != len(self.namespaces):
            raise NetlabError("a namespace is listed twice")
        ports = [port for link in self.links for port in (link.a, link.b)]
        seen: set[tuple[str, str]] = set()
        for port in ports:
            if port.netns not in known:
                raise NetlabError(f"link end {port.ifname} is in unknown namespace {port.netns}")
            if not 0 < len(port.ifname) <= IFNAME_MAX or "/" in port.ifname or port.ifname.isspace():
                raise NetlabError(f"{port.ifname!r} is not a Linux interface name")
            if (port.netns, port.ifname) in seen:
                raise NetlabError(f"interface {port.ifname} appears twice in {port.netns}")
            seen.add((port.netns, port.ifname))
        for link in self.links:
            if link.a.address.network != link.b.address.network:
                raise NetlabError(f"{link.a.address} and {link.b.address} are not on one subnet")
        for route in self.routes:
            if route.netns not in known:
                raise NetlabError(f"route in unknown namespace {route.netns}")
            if not any(p.netns == route.netns and route.gateway in p.address.network for p in ports):
                raise NetlabError(f"{route.netns}: gateway {route.gateway} is on none of its links")
        if not self.routers <= known:
            raise NetlabError("a router is not among the namespaces")

    def host_batch(self) -> list[str]:
        """``ip -batch`` lines run in the initial namespace: the veth pairs."""
        return [
            f"link add {link.a.ifname} netns {link.a.netns} type veth peer name {link.b.ifname} netns {link.b.netns}"
            for link in self.links
        ]

    def namespace_batch(self, netns: str) -> list[str]:
        """``ip -n NETNS -batch`` lines: loopback, addresses, links up, then routes."""
        lines = ["link set lo up"]
        for port in (p for link in self.links for p in (link.a, link.b) if p.netns == netns):
            lines += [f"addr add {port.address} dev {port.ifname}", f"link set {port.ifname} up"]
        lines += [f"route add {r.destination} via {r.gateway}" for r in self.routes if r.netns == netns]
        return lines


def ip(*args: str, stdin: str | None = None) -> str:
    """Run ``ip ARGS`` and return its output; a failure raises with iproute2's message."""
    try:
        done = subprocess.run(
            ["ip", *args], check=False, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError:
        raise NetlabError("iproute2's `ip` is not installed") from None
    if done.returncode != 0:
        raise NetlabError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def existing_namespaces() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def build(topology: Topology, journal: Callable[[str], None]) -> None:
    """Create ``topology``; ``journal(name)`` is called as each namespace comes into existence.

    Only namespaces this call created are journaled, so a concurrent
    ``build`` of the same names cannot make the loser delete the winner's.
    """
    taken = existing_namespaces() & set(topology.namespaces)
    if taken:
        raise NetlabError(f"network namespaces already exist: {', '.join(sorted(taken))}")
    for netns in topology.namespaces:
        ip("netns", "add", netns)
        journal(netns)
    ip("-batch", "-", stdin="\n".join(topology.host_batch()) + "\n")
    for netns in topology.namespaces:
        ip("-n", netns, "-batch", "-", stdin="\n".join(topology.namespace_batch(netns)) + "\n")
    for netns in sorted(topology.routers):
        ip("netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def processes(netns: str) -> list[int]:
    """Process IDs living in ``netns`` (empty when it does not exist)."""
    done = subprocess.run(
        ["ip", "netns", "pids", netns], check=False, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    return [int(pid) for pid in done.stdout.split()] if done.returncode == 0 else []


def stop_processes(pids: Iterable[int], grace: float = STOP_GRACE) -> None:
    """SIGTERM ``pids``, then SIGKILL whatever is still alive after ``grace`` seconds."""
    remaining = {pid for pid in pids if _signal(pid, signal.SIGTERM)}
    deadline = time.monotonic() + grace
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = {pid for pid in remaining if alive(pid)}
    for pid in remaining:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> bool:
    """Whether the process existed to receive ``signum``."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def alive(pid: int) -> bool:
    """Running: exists and is not a zombie (detached daemons are reaped by init, sometimes late)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def destroy(namespaces: Iterable[str], grace: float = STOP_GRACE) -> list[str]:
    """Stop every process in ``namespaces`` and delete them (their veths go too); the names removed.

    Idempotent: names that do not exist are skipped.  A namespace is only
    torn down once nothing runs in it, since a process would keep it and
    its links alive after ``ip netns delete``.
    """
    existing = existing_namespaces()
    present = [name for name in dict.fromkeys(namespaces) if name in existing]
    stop_processes((pid for name in present for pid in processes(name)), grace)
    for name in present:
        ip("netns", "delete", name)
    return present


@dataclass(frozen=True, slots=True)
class Interface:
    """What ``lab status`` shows of one interface."""

    netns: str
    ifname: str
    kind: str
    state: str
    addresses: tuple[str, ...]
    peer: str | None  # "netns/ifname" of a veth's other end, "outside" when not in the inspected set

    def as_dict(self) -> dict[str, Any]:
        return {
            "netns": self.netns,
            "ifname": self.ifname,
            "kind": self.kind,
            "state": self.state,
            "addresses": list(self.addresses),
            "peer": self.peer,
        }


def interfaces(namespaces: Sequence[str]) -> list[Interface]:
    """Every interface of ``namespaces`` with its veth peer resolved across them."""
    raw = {netns: json.loads(ip("-j", "-d", "-n", netns, "addr", "show") or "[]") for netns in namespaces}
    by_index = {(netns, link["ifindex"]): link["ifname"] for netns, links in raw.items() for link in links}
    found = []
    for netns, links in raw.items():
        ids = {
            entry["nsid"]: entry.get("name") for entry in json.loads(ip("-j", "-n", netns, "netns", "list-id") or "[]")
        }
        for link in links:
            peer = None
            if "link_netnsid" in link:
                other = ids.get(link["link_netnsid"])
                name = by_index.get((other, link.get("link_index"))) if other in raw else None
                peer = f"{other}/{name}" if name else "outside"
            found.append(
                Interface(
                    netns,
                    link["ifname"],
                    link.get("linkinfo", {}).get("info_kind", link.get("link_type", "")),
                    link.get("operstate", ""),
                    tuple(
                        f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link"
                    ),
                    peer,
                )
            )
    return found


def routes_out(netns: str, destinations: Sequence[str] = OUTSIDE) -> list[str]:
    """The ``destinations`` that ``netns`` has a route to (asks the kernel; sends nothing)."""
    reachable = []
    for destination in destinations:
        family = "-6" if ip_address(destination).version == 6 else "-4"
        probe = subprocess.run(
            ["ip", family, "-n", netns, "route", "get", destination],
            check=False,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if probe.returncode == 0:
            reachable.append(destination)
    return reachable
