"""One Phase 1 against a peer, then delete it: the engine of ``groupvpn ike test``.

Runs ``Phase1Initiator`` on a ``UdpDriver`` until it reports the SA or a
failure; optionally proves the SA usable with one DPD round trip, then
deletes it with an informational DELETE.  The local address for our ID
payload is the one the kernel would use towards the peer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from ..ike.events import FailureReason, IkeSaEstablished, IkeSaFailed, PeerAlive
from ..ike.initiator import Phase1Initiator
from ..ike.proposals import Suite
from ..ike.psk import PreSharedKey
from ..ike.retransmit import RetransmitPolicy
from ..ike.sa import Address, IkeSa
from ..wire.isakmp import Identification
from .udp import UdpDriver

# Slack on top of the retransmission schedule before the driver gives up on the core.
_GRACE = 5.0


@dataclass(frozen=True)
class IkeTestResult:
    """Outcome of one test: the SA when established, else the failure."""

    peer: Address
    local: Address
    elapsed: float
    sa: IkeSa | None = None
    failure: FailureReason | None = None
    message: str = ""
    dpd_checked: bool = False
    dpd_round_trip: float | None = None
    deleted: bool = False


def route_source(peer: Address) -> str:
    """The local address the kernel picks for ``peer`` (a connected UDP socket sends nothing)."""
    family = socket.AF_INET6 if ip_address(peer[0]).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(peer)
        return str(probe.getsockname()[0])


async def ike_test(
    peer: Address,
    psk: PreSharedKey,
    suites: Sequence[Suite],
    *,
    local_host: str | None = None,
    source_port: int = 0,
    doi: int = 2,
    dpd_check: bool = False,
    retransmit: RetransmitPolicy = RetransmitPolicy(),
) -> IkeTestResult:
    host = local_host or route_source(peer)
    identity = Identification.of(ip_address(host))
    initiator = Phase1Initiator(peer, psk, suites, identity, doi=doi, retransmit=retransmit)
    driver = await UdpDriver.open(initiator, (host, source_port))
    budget = sum(retransmit.wait_after(k) for k in range(1, retransmit.attempts + 1)) + _GRACE
    try:
        started = driver.now()
        driver.step(initiator.start)
        event = await driver.next_event(budget)
        elapsed = driver.now() - started
        if isinstance(event, IkeSaFailed):
            return IkeTestResult(peer, driver.local, elapsed, failure=event.reason, message=event.message)
        assert isinstance(event, IkeSaEstablished), event
        round_trip = await _dpd_round_trip(driver, initiator, budget) if dpd_check else None
        alive = initiator.session is not None and not initiator.session.closed
        driver.step(initiator.delete)
        return IkeTestResult(
            peer, driver.local, elapsed, sa=event.sa, dpd_checked=dpd_check, dpd_round_trip=round_trip, deleted=alive
        )
    finally:
        # Let the loop flush the last sendto before the socket goes away.
        await asyncio.sleep(0)
        driver.close()


async def _dpd_round_trip(driver: UdpDriver, initiator: Phase1Initiator, budget: float) -> float | None:
    """Seconds from R-U-THERE to its ACK, or None when the peer never acknowledged."""
    sent = driver.now()
    driver.step(initiator.probe)
    deadline = sent + budget
    while (left := deadline - driver.now()) > 0:
        try:
            event = await driver.next_event(left)
        except asyncio.TimeoutError:
            break
        if isinstance(event, PeerAlive):
            return driver.now() - sent
    return None
