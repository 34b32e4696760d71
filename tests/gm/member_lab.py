"""A member core and key server cores in memory: datagrams carried by hand, time moved by the test.

``Lab`` delivers whatever is in flight, then jumps the clock to the next
timer of the member (or of a key server), so retries and failover that
take minutes run in milliseconds.  A server address with no core behind
it is a dead key server: datagrams to it vanish.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from groupvpn.gm.member import GatewaySettings, Member, MemberEvent, MemberOutput, Timing, VpnSettings
from groupvpn.gm.sadb import SaDatabase
from groupvpn.ike import PreSharedKey, Suite
from groupvpn.ike.sa import Address
from groupvpn.ks.server import Gateway, GroupSettings, KeyServer, ServerSettings
from groupvpn.ks.store import KeyStore
from groupvpn.wire.numbers import GDOI_PORT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ike"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ks"))
from group_configs import group_config  # noqa: E402
from phase1_link import SeededRng  # noqa: E402
from rogue_server import RogueServer  # noqa: E402

T0 = 1_700_000_000.0
KS1 = ("198.18.0.1", 848)
KS2 = ("198.18.0.5", 848)
KS3 = ("198.18.0.9", 848)
GM = "198.18.1.2"
GM_ADDR = (GM, 848)
GM_KEY = PreSharedKey(b"members-of-group-one-key")
WRONG_KEY = PreSharedKey(b"not-the-key-anybody-configured")
SUITE = "aes128-sha256-modp2048"
# What the seed's defaults and the default retransmission give: a silent server fails an
# attempt after 1+2+4+8+8 s, and the next attempt comes 10 s later.
IKE_GIVE_UP = 23.0
RETRY = 10.0


def key_server(store: KeyStore, address: Address = KS1, members: Sequence[str] = (GM,), now: float = T0) -> KeyServer:
    """Groups 1 and 2 for ``members`` (the gateway lists them); group 3 admits nobody we know."""
    settings = ServerSettings(
        address=address[0],
        suites=(Suite.parse(SUITE),),
        gateways=(Gateway("gms", GM_KEY, frozenset(members)), Gateway("others", GM_KEY, frozenset({"198.18.99.9"}))),
        groups=tuple(
            GroupSettings(group_config(g, server=address), (gw,)) for g, gw in ((1, "gms"), (2, "gms"), (3, "others"))
        ),
    )
    return KeyServer(settings, store, now, rng=SeededRng(f"ks {address[0]}"))


def gateway(
    servers: Sequence[Address] = (KS1,), psk: PreSharedKey = GM_KEY, suite: str = SUITE, name: str = "gw"
) -> GatewaySettings:
    hosts = tuple(s[0] for s in servers)
    return GatewaySettings(name, hosts, GM, psk, (Suite.parse(suite),), server_port=servers[0][1])


def vpn(
    name: str = "lan", group_id: int = 1, gw: GatewaySettings | None = None, interface: str = "eth1"
) -> VpnSettings:
    return VpnSettings(name, group_id, gw or gateway(), frozenset({interface}))


Server = KeyServer | RogueServer


@dataclass
class Lab:
    member: Member
    servers: dict[Address, Server] = field(default_factory=dict)
    address: Address = GM_ADDR  # the member's socket
    now: float = T0
    events: list[MemberEvent] = field(default_factory=list)
    server_events: list[object] = field(default_factory=list)
    sent: list[tuple[Address, bytes]] = field(default_factory=list)  # what the member sent, and to whom
    lost: int = 0
    in_flight: deque[tuple[Address, Address, bytes]] = field(default_factory=deque)  # (to, from, data)

    @classmethod
    def make(cls, vpns: Sequence[VpnSettings], servers: dict[Address, Server], **timing: object) -> Lab:
        member = Member(vpns, SaDatabase(), timing=Timing(**timing), rng=SeededRng("member"))  # type: ignore[arg-type]
        address = (vpns[0].gateway.local_address, GDOI_PORT) if vpns else GM_ADDR
        return cls(member, servers, address)

    @property
    def sadb(self) -> SaDatabase:
        return self.member.sadb

    def apply(self, out: MemberOutput) -> MemberOutput:
        self.events += out.events
        for datagram in out.datagrams:
            self.sent.append((datagram.addr, datagram.data))
            self.in_flight.append((datagram.addr, self.address, datagram.data))
        return out

    def call(self, action: Callable[[float], MemberOutput]) -> MemberOutput:
        """Run one member call at the current time, then deliver what follows."""
        out = self.apply(action(self.now))
        self.deliver()
        return out

    def link(self, up: bool, interface: str = "eth1") -> MemberOutput:
        return self.call(lambda now: self.member.link_changed(interface, up, now))

    def deliver(self) -> None:
        for _ in range(10_000):
            if not self.in_flight:
                return
            self.step()
        raise AssertionError("the network never went quiet")

    def step(self) -> None:
        """Hand over the first datagram in flight."""
        to, source, data = self.in_flight.popleft()
        if to == self.address:
            self.apply(self.member.receive(data, source, self.now))
            return
        server = self.servers.get(to)
        if server is None:
            self.lost += 1
        elif isinstance(server, KeyServer):
            out = server.receive(data, source, self.now)
            self.server_events += out.events
            self.in_flight.extend((d.addr, to, d.data) for d in out.datagrams)
        else:
            self.in_flight.extend((d.addr, to, d.data) for d in server.receive(data, source, self.now))

    def run(self, until: Callable[[], bool], limit: float = 3600.0) -> float:
        """Move time from timer to timer until ``until()`` holds; returns the time it took."""
        start = self.now
        self.deliver()
        while not until():
            deadline = self.member.timer
            if deadline is None or deadline - start > limit:
                raise AssertionError(f"nothing more happens within {limit} s; events: {self.kinds()}")
            self.now = max(self.now, deadline)
            self.apply(self.member.handle_timer(self.now))
            for server in self.servers.values():
                if isinstance(server, KeyServer):
                    self.server_events += server.handle_timer(self.now).events
            self.deliver()
        return self.now - start

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]

    def state(self, name: str = "lan") -> str:
        return self.member.registrations[name].state.name
