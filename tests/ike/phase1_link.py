"""An in-memory link between a Phase1Initiator and a Phase1Responder, driven by hand.

Datagrams queue in flight until ``deliver`` hands them over (optionally
dropping some); time only moves when a test passes a later ``now``.
Randomness is a seeded SHA-256 stream so every run is identical.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from groupvpn.ike import Output, Phase1Initiator, Phase1Responder, PreSharedKey, PskStore, Suite
from groupvpn.ike.events import Event
from groupvpn.wire.isakmp import Identification

I_ADDR = ("198.18.0.1", 848)
R_ADDR = ("198.18.0.2", 848)
PSK = PreSharedKey(b"a-test-key-of-more-than-20-characters")
OTHER_PSK = PreSharedKey(b"a-different-key-also-over-20-chars")
DEFAULT_SUITE = "aes128-sha256-modp2048"


class SeededRng:
    """``os.urandom`` stand-in: a SHA-256 counter stream from ``seed``."""

    def __init__(self, seed: str) -> None:
        self._seed = seed.encode()
        self._counter = 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:size]


def suites(*names: str, lifetime: int = 86400) -> list[Suite]:
    return [Suite.parse(n, lifetime=lifetime) for n in names]


def initiator(
    offered: Sequence[str] = (DEFAULT_SUITE,), psk: PreSharedKey = PSK, lifetime: int = 86400, **kwargs: object
) -> Phase1Initiator:
    kwargs.setdefault("rng", SeededRng("initiator"))
    return Phase1Initiator(
        R_ADDR, psk, suites(*offered, lifetime=lifetime), Identification.of(IPv4Address(I_ADDR[0])), **kwargs  # type: ignore[arg-type]
    )


def responder(
    accepted: Sequence[str] = (DEFAULT_SUITE,), psks: PskStore | None = None, lifetime: int = 86400, **kwargs: object
) -> Phase1Responder:
    kwargs.setdefault("rng", SeededRng("responder"))
    return Phase1Responder(
        psks or PskStore.single(PSK),
        suites(*accepted, lifetime=lifetime),
        Identification.of(IPv4Address(R_ADDR[0])),
        **kwargs,  # type: ignore[arg-type]
    )


Drop = Callable[[str, bytes], bool]


@dataclass
class Link:
    """``I`` is the initiator side, ``R`` the responder side."""

    initiator: Phase1Initiator
    responder: Phase1Responder
    in_flight: deque[tuple[str, bytes]] = field(default_factory=deque)
    events: dict[str, list[Event]] = field(default_factory=lambda: {"I": [], "R": []})
    sent: dict[str, list[bytes]] = field(default_factory=lambda: {"I": [], "R": []})
    timers: dict[str, float | None] = field(default_factory=lambda: {"I": None, "R": None})

    def take(self, side: str, out: Output) -> Output:
        self.events[side] += out.events
        self.timers[side] = out.timer
        for datagram in out.datagrams:
            assert datagram.addr == (R_ADDR if side == "I" else I_ADDR)
            self.sent[side].append(datagram.data)
            self.in_flight.append(("R" if side == "I" else "I", datagram.data))
        return out

    def start(self, now: float = 0.0) -> Link:
        self.take("I", self.initiator.start(now))
        return self

    def deliver(self, now: float = 0.0, drop: Drop | None = None) -> Link:
        """Hand over everything in flight, and what that triggers, until the link is quiet."""
        for _ in range(100):
            if not self.in_flight:
                return self
            to, data = self.in_flight.popleft()
            if drop is not None and drop(to, data):
                continue
            if to == "R":
                self.take("R", self.responder.receive(data, I_ADDR, now))
            else:
                self.take("I", self.initiator.receive(data, R_ADDR, now))
        raise AssertionError("link never went quiet")

    def tick(self, side: str, now: float) -> Output:
        core = self.initiator if side == "I" else self.responder
        return self.take(side, core.handle_timer(now))

    def kinds(self, side: str) -> list[str]:
        return [type(e).__name__ for e in self.events[side]]


def established(offered: Sequence[str] = (DEFAULT_SUITE,), accepted: Sequence[str] = (DEFAULT_SUITE,), **kw: object) -> Link:
    """A link whose Main Mode completed at t=0."""
    link = Link(initiator(offered, **kw), responder(accepted, **kw)).start().deliver()  # type: ignore[arg-type]
    assert link.kinds("I") == ["IkeSaEstablished"] and link.kinds("R") == ["IkeSaEstablished"], link.events
    return link
