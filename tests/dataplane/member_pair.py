"""Two group members of ``groupvpn lab``'s topology, with the WAN router between them and a host behind each.

::

    h1 198.19.1.2 -- lan|gm1|wan 198.18.1.2 -- gm1|wan|gm2 -- 198.18.2.2 wan|gm2|lan -- h2 198.19.2.2
                     198.19.1.1          198.18.1.1   198.18.2.1          198.19.2.1
                                                  ks|
                                                     198.18.0.2 ks

``ops.lab`` builds it: everything in 198.18.0.0/15, no default routes, the
WAN router routing each LAN to its member (which header-preserving ESP
needs).  ``build(ipv6=True)`` adds the same links and routes in IPv6 from
2001:2::/48 (RFC 5180): WAN link N 2001:2:0:N::/64, LAN N 2001:2:0:10N::/64,
router ::1, member ::2 on the WAN, member ::1 and host ::2 on the LAN; the
key server stays IPv4 only.  Names carry the test run's PID and a random
suffix, so parallel runs never collide.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv6Network

from groupvpn.crypto.suites import EspSuite
from groupvpn.dataplane.channel import PolicyState
from groupvpn.dataplane.esp_path import SaConfig
from groupvpn.dataplane.manager import Dataplane, DataplaneDescription
from groupvpn.dataplane.spd import Rule, Selector
from groupvpn.dataplane.steering import SteeringPlan, key_server_bypass
from groupvpn.ops.lab import Lab
from groupvpn.ops.netlab import build, destroy
from groupvpn.wire.numbers import IpProtocol, PolicyAction

LAN_A, LAN_B = Lab.lan(1), Lab.lan(2)
HOST_A, HOST_B = str(LAN_A[2]), str(LAN_B[2])
DENIED_PORT = 9  # UDP discard: a deny rule lets it pass in clear
SPI = 0x4A7E0001
SPI6 = 0x4A7E0006  # the IPv6 LANs' SA
DAD_TIMEOUT = 10.0


def wan6(n: int) -> IPv6Network:
    return IPv6Network(f"2001:2:0:{n}::/64")


def lan6(n: int) -> IPv6Network:
    return IPv6Network(f"2001:2:0:{0x100 + n:x}::/64")


LAN6_A, LAN6_B = lan6(1), lan6(2)
HOST6_A, HOST6_B = str(LAN6_A[2]), str(LAN6_B[2])
LAB6 = IPv6Network("2001:2::/48")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20).stdout


@dataclass(frozen=True)
class MemberPair:
    lab: Lab

    @classmethod
    def unique(cls) -> MemberPair:
        return cls(Lab(f"gvd{os.getpid() % 10000}{uuid.uuid4().hex[:4]}-", members=2))

    @property
    def host_a(self) -> str:
        return self.lab.host(1)

    @property
    def member_a(self) -> str:
        return self.lab.gm(1)

    @property
    def wan(self) -> str:
        return self.lab.wan

    @property
    def member_b(self) -> str:
        return self.lab.gm(2)

    @property
    def host_b(self) -> str:
        return self.lab.host(2)

    @property
    def key_server(self) -> str:
        return self.lab.ks

    @property
    def key_server_address(self) -> str:
        return str(self.lab.ks_address.ip)

    @property
    def member_a_wan(self) -> str:
        return str(self.lab.member_wan(1).ip)

    @property
    def member_a_wan6(self) -> str:
        return str(wan6(1)[2])

    @property
    def member_a_lan6(self) -> str:
        return str(LAN6_A[1])

    wan_to_a = "gm1"  # the WAN router's interface towards member A

    def build(self, ipv6: bool = False) -> None:
        build(self.lab.topology(), lambda namespace: None)
        if not ipv6:
            return
        for router in (self.lab.wan, *(self.lab.gm(n) for n in self.lab.numbers)):
            sysctl = ("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            subprocess.run(["ip", "netns", "exec", router, *sysctl], check=True, timeout=20)
        for namespace, lines in self._ipv6_batches().items():
            batch = "\n".join(lines) + "\n"
            subprocess.run(["ip", "-n", namespace, "-batch", "-"], input=batch, text=True, check=True, timeout=20)
        # A router sends no neighbour solicitation for a forwarded packet before its link-local
        # address has passed duplicate address detection: until then, the first packets wait ~2 s.
        deadline = time.monotonic() + DAD_TIMEOUT
        while any(ip("-n", namespace, "-6", "addr", "show", "tentative") for namespace in self.lab.namespaces):
            if time.monotonic() > deadline:
                raise RuntimeError(f"IPv6 addresses are still tentative after {DAD_TIMEOUT} s")
            time.sleep(0.1)

    def _ipv6_batches(self) -> dict[str, list[str]]:
        """The IPv4 topology's links and routes in IPv6, per namespace (``nodad``: usable at once)."""
        lab = self.lab
        batches: dict[str, list[str]] = {lab.wan: []}
        for n in lab.numbers:
            router, member, gateway = wan6(n)[1], wan6(n)[2], lan6(n)[1]
            batches[lab.wan] += [f"addr add {router}/64 dev gm{n} nodad", f"route add {lan6(n)} via {member}"]
            batches[lab.gm(n)] = [
                f"addr add {member}/64 dev wan nodad",
                f"addr add {gateway}/64 dev lan nodad",
                f"route add {LAB6} via {router}",
            ]
            batches[lab.host(n)] = [f"addr add {lan6(n)[2]}/64 dev eth0 nodad", f"route add {LAB6} via {gateway}"]
        return batches

    def remove(self) -> None:
        destroy(self.lab.namespaces)


def policy(
    suite: EspSuite, keys: object, version: int = 1, families: tuple[int, ...] = (4,), **sa: object
) -> PolicyState:
    """The group's policy as both members hold it: UDP discard denied, LAN A <-> LAN B encrypted.

    One SA per family in ``families``: rules ``a-b`` and ``b-a`` under
    ``SPI`` for the IPv4 LANs, ``a-b6`` and ``b-a6`` under ``SPI6`` for the
    IPv6 ones.
    """
    discard = Selector(protocol=IpProtocol.UDP, destination_ports=(DENIED_PORT, DENIED_PORT))
    rules = [Rule("deny-discard", discard, PolicyAction.DENY)]
    sas, encrypting = [], {}
    lans = {4: ("", LAN_A, LAN_B, SPI), 6: ("6", LAN6_A, LAN6_B, SPI6)}
    for suffix, a, b, spi in (lans[family] for family in families):
        a_to_b, b_to_a = Selector(a, b), Selector(b, a)
        rules += [Rule(f"a-b{suffix}", a_to_b), Rule(f"b-a{suffix}", b_to_a)]
        sas.append(SaConfig(spi, suite, keys, selectors=(a_to_b, b_to_a), **sa))  # type: ignore[arg-type]
        encrypting.update({f"a-b{suffix}": spi, f"b-a{suffix}": spi})
    return PolicyState(version, tuple(rules), tuple(sas), encrypting)


def description(pair: MemberPair, families: tuple[int, ...] = (4,)) -> DataplaneDescription:
    """Both members' data plane: LAN ``lan``, WAN ``wan``, the key server bypassed, reports every 0.2 s."""
    plan = SteeringPlan.numbered(0, ["lan"], ["wan"], key_server_bypass([pair.key_server_address]), families)
    return DataplaneDescription(plan, report_interval=0.2)


@contextmanager
def running(
    pair: MemberPair, description: DataplaneDescription, state: PolicyState, workers: int = 2
) -> Iterator[tuple[Dataplane, Dataplane]]:
    """Member A's and member B's data planes started with ``state``, stopped when the block ends."""
    started: list[Dataplane] = []
    try:
        for namespace in (pair.member_a, pair.member_b):
            dataplane = Dataplane(namespace, description, workers=workers)
            dataplane.update(state)
            dataplane.start()
            started.append(dataplane)
        yield started[0], started[1]
    finally:
        for dataplane in started:
            dataplane.stop()
