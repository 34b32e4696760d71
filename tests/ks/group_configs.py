"""The group the key server tests key: one SA, LAN A <-> LAN B, and an ECDSA-signed KEK acks are asked for.

Key server, member and rekey tests all build it here, each changing only
what its scenario is about.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from groupvpn.crypto.suites import EspSuite, esp_suite
from groupvpn.gdoi import AckRequest, Endpoint, GroupAssociatedPolicy, TrafficSelector
from groupvpn.ks.keys import GroupConfig, KekConfig, TekConfig
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform, KekAckType, SigAlgorithm

KS_ADDR = ("198.18.0.1", 848)
MULTICAST = Endpoint(ip_address("239.192.0.1"), 848)
LAN_A = Endpoint(ip_network("198.18.10.0/24"))
LAN_B = Endpoint(ip_network("198.18.20.0/24"))
A_TO_B = TrafficSelector(0, LAN_A, LAN_B)
CBC = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256)
ACK = AckRequest(KekAckType.KEK_SHA256)
GAP = GroupAssociatedPolicy(activation_delay=5, deactivation_delay=30, anti_replay_window=10)


def group_config(
    group_id: int,
    *,
    server: tuple[str, int] = KS_ADDR,
    kek_lifetime: int = 3600,
    ack: AckRequest | None = ACK,
    tek_lifetime: int = 1800,
    suite: EspSuite = CBC,
    gap: GroupAssociatedPolicy | None = GAP,
    **changes: object,
) -> GroupConfig:
    """TEK ``sa1`` for A -> B and its mirror image, and a KEK whose pushes come from ``server`` (host, port)."""
    kek = KekConfig(
        lifetime=kek_lifetime,
        source=Endpoint(ip_address(server[0]), server[1]),
        destination=MULTICAST,
        sig_algorithm=SigAlgorithm.ECDSA_256,
        sig_hash=None,
        ack=ack,
    )
    tek = TekConfig("sa1", suite, lifetime=tek_lifetime, selectors=(A_TO_B, A_TO_B.mirrored()))
    fields: dict[str, object] = {"group_id": group_id, "kek": kek, "teks": (tek,), "gap": gap}
    fields.update(changes)
    return GroupConfig(**fields)  # type: ignore[arg-type]
