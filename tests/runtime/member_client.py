"""A minimal group member for testing a key server: Main Mode, then one GROUPKEY-PULL per group.

``TestMember`` is sans-IO (the caller carries datagrams and time), so the
same client drives the key server core in memory and the ``groupvpn ks``
daemon over a real UDP socket (``register_over_udp``).  It is not the
member daemon: no retries to other servers, no SA installation.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from groupvpn.gdoi import PullInitiator, PullOutput, RegistrationComplete, RegistrationFailed
from groupvpn.ike import IkeSaEstablished, IkeSaFailed, NotifyReceived, Phase1Initiator, PreSharedKey, Suite
from groupvpn.ike.events import Output
from groupvpn.ike.retransmit import RetransmitPolicy
from groupvpn.ike.sa import Address
from groupvpn.wire.isakmp import Identification
from groupvpn.wire.message import Header
from groupvpn.wire.numbers import ExchangeType

DEFAULT_SUITE = "aes128-sha256-modp2048"
FAST = RetransmitPolicy(initial=0.2, factor=2.0, maximum=1.0, attempts=4)


@dataclass
class TestMember:
    """A member at ``address`` registering to ``groups`` with the key server at ``server``."""

    address: Address
    server: Address
    psk: PreSharedKey
    groups: Sequence[int]
    suites: Sequence[str] = (DEFAULT_SUITE,)
    retransmit: RetransmitPolicy = FAST
    rng: object = None
    sender_ids: int = 1  # asked for when a TEK uses a counter mode
    phase1: Phase1Initiator = field(init=False)
    pulls: dict[int, PullInitiator] = field(init=False, default_factory=dict)  # by Message ID
    ike_failure: IkeSaFailed | None = field(init=False, default=None)
    results: dict[int, RegistrationComplete | RegistrationFailed] = field(init=False, default_factory=dict)

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        kwargs = {} if self.rng is None else {"rng": self.rng}
        self.phase1 = Phase1Initiator(
            self.server,
            self.psk,
            [Suite.parse(name) for name in self.suites],
            Identification.of(ip_address(self.address[0])),
            retransmit=self.retransmit,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def done(self) -> bool:
        return self.ike_failure is not None or len(self.results) == len(self.groups)

    def start(self, now: float) -> list[bytes]:
        return self._phase1(self.phase1.start(now), now)

    def receive(self, datagram: bytes, now: float) -> list[bytes]:
        header = Header.decode(datagram)
        if header.exchange == ExchangeType.GROUPKEY_PULL:
            pull = self.pulls.get(header.message_id)
            return [] if pull is None else self._pull(pull, pull.receive(datagram, now), now)
        return self._phase1(self.phase1.receive(datagram, self.server, now), now)

    def tick(self, now: float) -> list[bytes]:
        sent = self._phase1(self.phase1.handle_timer(now), now)
        for pull in list(self.pulls.values()):
            sent += self._pull(pull, pull.handle_timer(now), now)
        return sent

    @property
    def deadline(self) -> float | None:
        times = [t for t in [self.phase1.timer, *(p.next_deadline for p in self.pulls.values())] if t is not None]
        return min(times, default=None)

    def _phase1(self, out: Output, now: float) -> list[bytes]:
        sent = [d.data for d in out.datagrams]
        for event in out.events:
            if isinstance(event, IkeSaEstablished):
                sent += self._next_pull(now)
            elif isinstance(event, IkeSaFailed):
                self.ike_failure = event
            elif isinstance(event, NotifyReceived):
                for pull in list(self.pulls.values()):
                    sent += self._pull(pull, pull.peer_notify(event.notify_type, event.data, now), now)
        return sent

    def _next_pull(self, now: float) -> list[bytes]:
        """Start the registration to the next group, if any is left.

        One at a time: an error notify under the IKE SA names no PULL, so
        with several under way a refusal would end them all.
        """
        session = self.phase1.session
        if session is None or len(self.pulls) == len(self.groups):
            return []
        mid = session.message_id()
        group = self.groups[len(self.pulls)]
        self.pulls[mid] = PullInitiator(session.sa, group, mid, sender_ids=self.sender_ids, retransmit=self.retransmit)
        return [self.pulls[mid].start(now)]

    def _pull(self, pull: PullInitiator, out: PullOutput, now: float) -> list[bytes]:
        sent = list(out.datagrams)
        for event in out.events:
            self.results[pull.group_id] = event
            sent += self._next_pull(now)
        return sent


def register_over_udp(member: TestMember, timeout: float = 20.0) -> TestMember:
    """Run ``member`` on a UDP socket bound to its address until it is done or ``timeout`` passes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(member.address)
        member.address = sock.getsockname()
        clock = time.monotonic
        end = clock() + timeout
        for datagram in member.start(clock()):
            sock.sendto(datagram, member.server)
        while not member.done and clock() < end:
            wait = min(end, member.deadline or end) - clock()
            sock.settimeout(max(wait, 0.001))
            try:
                datagram, addr = sock.recvfrom(65535)
            except TimeoutError:
                replies = member.tick(clock())
            else:
                replies = member.receive(datagram, clock()) if addr == member.server else []
            for reply in replies:
                sock.sendto(reply, member.server)
    return member
