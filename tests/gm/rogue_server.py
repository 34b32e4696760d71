"""A key server that offers one fixed policy without vetting it, to prove members refuse bad ones.

The real key server builds every policy through the ``gdoi.policy``
constructors, so it cannot send what members must reject (two unpaired
policies on one TEK).  ``RogueServer`` is a real Phase 1 responder and
real GROUPKEY-PULL responders around an ``Offer`` built by hand.  It is
sans-IO for the in-memory tests; ``python rogue_server.py`` serves it on
UDP for the end-to-end test.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path

from groupvpn.crypto.suites import EspKeys, esp_suite
from groupvpn.gdoi import (
    Endpoint,
    GroupPolicy,
    Offer,
    Peer,
    PullResponder,
    Refusal,
    SaPolicy,
    SenderIds,
    TekKeys,
    TekPolicy,
    TrafficSelector,
)
from groupvpn.ike import Phase1Responder, PreSharedKey, PskStore, Suite
from groupvpn.ike.events import Datagram
from groupvpn.ike.sa import Address
from groupvpn.wire.isakmp import Identification
from groupvpn.wire.message import Header
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform, ExchangeType, NotifyType

UNPAIRED_SPI = bytes.fromhex("0000beef")


def unpaired_policy(group_id: int) -> GroupPolicy:
    """Two policies on one TEK that are not mirror images (A-B and A-C): the seed says refuse it.

    ``SaPolicy`` refuses to be built like this, which is the point, so
    its fields are set directly.
    """
    suite = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256)
    lan_a, lan_b, lan_c = (Endpoint(ip_network(f"198.18.{n}.0/24")) for n in (110, 120, 130))
    teks = (
        TekPolicy(UNPAIRED_SPI, TrafficSelector(0, lan_a, lan_b), suite, 3600),
        TekPolicy(UNPAIRED_SPI, TrafficSelector(0, lan_a, lan_c), suite, 3600),
    )
    sa = object.__new__(SaPolicy)
    for name, value in (("teks", teks), ("kek", None), ("gap", None)):
        object.__setattr__(sa, name, value)
    keys = TekKeys(UNPAIRED_SPI, EspKeys(bytes(range(16)), bytes(range(32))))
    return GroupPolicy(group_id, sa, (keys,))


@dataclass
class RogueServer:
    """Answers Main Mode for ``psk`` and every GROUPKEY-PULL with ``offer``, whatever the group."""

    address: str
    psk: PreSharedKey
    suites: tuple[Suite, ...]
    offer: Offer
    rng: object = os.urandom
    phase1: Phase1Responder = field(init=False)
    pulls: dict[tuple[bytes, int], PullResponder] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        identity = Identification.of(ip_address(self.address))
        self.phase1 = Phase1Responder(PskStore.single(self.psk), self.suites, identity, rng=self.rng)  # type: ignore[arg-type]

    def lookup(self, group_id: int, peer: Peer) -> Offer | Refusal:
        return self.offer

    def allocate_sender_ids(self, group_id: int, peer: Peer, count: int) -> SenderIds | Refusal:
        return Refusal(NotifyType.ATTRIBUTES_NOT_SUPPORTED, "no sender IDs here")

    def receive(self, datagram: bytes, addr: Address, now: float) -> list[Datagram]:
        header = Header.decode(datagram)
        if header.exchange != ExchangeType.GROUPKEY_PULL or header.message_id == 0:
            return list(self.phase1.receive(datagram, addr, now).datagrams)
        sa = self.phase1.sa(header.icookie + header.rcookie)
        if sa is None:
            return []
        key = (sa.cookies, header.message_id)
        pull = self.pulls.setdefault(key, PullResponder(sa, header.message_id, self, rng=self.rng))  # type: ignore[arg-type]
        return [Datagram(d, addr) for d in pull.receive(datagram, now).datagrams]


def main() -> None:
    parser = argparse.ArgumentParser(description="serve an unpaired policy to any member")
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=848)
    parser.add_argument("--psk-file", type=Path, required=True)
    parser.add_argument("--proposal", default="aes128-sha256-modp2048")
    args = parser.parse_args()
    psk = PreSharedKey.from_text(args.psk_file.read_text())
    server = RogueServer(args.address, psk, (Suite.parse(args.proposal),), Offer(unpaired_policy(0)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((args.address, args.port))
        while True:
            data, addr = sock.recvfrom(65535)
            for reply in server.receive(data, (addr[0], addr[1]), time.time()):
                sock.sendto(reply.data, reply.addr)


if __name__ == "__main__":
    main()
