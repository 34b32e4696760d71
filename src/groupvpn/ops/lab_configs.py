"""The key server and member configurations ``groupvpn lab up`` writes: Junos curly-brace text.

The configurations are built as ``config.junos`` trees and rendered, then
loaded back through the typed model (``config.model``), so a lab can never
hand its daemons a file they would reject.  One group
(id ``GROUP_ID``) protects traffic between the member LANs with
AES-128-GCM-16, the suite the performance targets are set for; being a
counter mode, it has every member register for sender IDs, which the key
server hands out from its durable per-group counter.  Phase 1 uses one lab-wide pre-shared
key that the caller generates and that lives only in these files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from ..config.junos import Node, render_curly
from ..config.model import KeyServerConfig, MemberConfig, load_member, load_server

GROUP_ID = 1
GROUP = "lab"
IKE_PROPOSAL = "lab-psk-sha256-dh14-aes128"
# The ESP suites a lab group can use, named as strongSwan's ESP proposals so a
# benchmark names both sides alike: the keywords of its Junos ``ipsec proposal``.
ESP_SUITES: dict[str, tuple[tuple[str, str], ...]] = {
    "aes128gcm16": (("encryption-algorithm", "aes-128-gcm"),),
    "aes256-sha256": (("encryption-algorithm", "aes-256-cbc"), ("authentication-algorithm", "hmac-sha-256-128")),
}
DEFAULT_ESP_SUITE = "aes128gcm16"
SERVICE_SET = "lab"
MIN_PSK_LENGTH = 20  # the daemons refuse shorter pre-shared keys


def _s(
    keyword: str, *values: str | int | IPv4Address | IPv4Network | IPv4Interface, children: Sequence[Node] = ()
) -> Node:
    return Node(keyword, tuple(str(value) for value in values), tuple(children))


def _ike_proposal() -> Node:
    return _s(
        "proposal",
        IKE_PROPOSAL,
        children=(
            _s("authentication-method", "pre-shared-keys"),
            _s("authentication-algorithm", "sha-256"),
            _s("dh-group", "group14"),
            _s("encryption-algorithm", "aes-128-cbc"),
            _s("lifetime-seconds", 3600),
        ),
    )


def _ike_policy(name: str, psk: str) -> Node:
    if len(psk) < MIN_PSK_LENGTH:
        raise ValueError(f"the lab pre-shared key must have at least {MIN_PSK_LENGTH} characters")
    return _s(
        "policy",
        name,
        children=(
            _s("mode", "main"),
            _s("proposals", IKE_PROPOSAL),
            _s("pre-shared-key", children=(_s("ascii-text", psk),)),
        ),
    )


def _group_vpn(role: str, *children: Node) -> Node:
    return _s("security", children=(_s("group-vpn", children=(_s(role, children=children),)),))


def server_config(
    server: IPv4Address,
    members: Sequence[IPv4Address],
    protected: IPv4Network,
    psk: str,
    esp: str = DEFAULT_ESP_SUITE,
) -> str:
    """The key server: one gateway per member address, one group protecting ``protected`` to itself with ``esp``."""
    proposal = f"lab-{esp}"
    gateways = tuple(
        _s(
            "gateway",
            f"gm{n}",
            children=(_s("ike-policy", "lab-members"), _s("address", address), _s("local-address", server)),
        )
        for n, address in enumerate(members, 1)
    )
    tree = _s(
        "",
        children=(
            _group_vpn(
                "server",
                _s("ike", children=(_ike_proposal(), _ike_policy("lab-members", psk), *gateways)),
                _s(
                    "ipsec",
                    children=(
                        _s(
                            "proposal",
                            proposal,
                            children=(
                                *(_s(keyword, value) for keyword, value in ESP_SUITES[esp]),
                                _s("lifetime-seconds", 3600),
                            ),
                        ),
                    ),
                ),
                _s(
                    "group",
                    GROUP,
                    children=(
                        _s("group-id", GROUP_ID),
                        _s("ike-gateway", *(f"gm{n}" for n in range(1, len(members) + 1))),
                        _s("server-address", server),
                        _s(
                            "server-member-communication",
                            children=(
                                _s("communication-type", "unicast"),
                                _s("encryption-algorithm", "aes-128-cbc"),
                                _s("lifetime-seconds", 7200),
                                _s("sig-hash-algorithm", "sha-256"),
                                _s("retransmission-period", 10),
                                _s("number-of-retransmission", 2),
                            ),
                        ),
                        _s(
                            "ipsec-sa",
                            "lan-to-lan",
                            children=(
                                _s("proposal", proposal),
                                _s(
                                    "match-policy",
                                    "lans",
                                    children=(
                                        _s("source", protected),
                                        _s("destination", protected),
                                        _s("action", "permit"),
                                    ),
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )
    return _checked(tree, load_server)


def member_config(server: IPv4Address, wan: IPv4Interface, interface: str, psk: str) -> str:
    """A member registering from ``wan`` (on ``interface``) with the key server, group ``GROUP_ID``."""
    tree = _s(
        "",
        children=(
            _group_vpn(
                "member",
                _s(
                    "ike",
                    children=(
                        _ike_proposal(),
                        _ike_policy("lab-ks", psk),
                        _s(
                            "gateway",
                            "lab-ks",
                            children=(
                                _s("ike-policy", "lab-ks"),
                                _s("server-address", server),
                                _s("local-address", wan.ip),
                            ),
                        ),
                    ),
                ),
                _s(
                    "ipsec",
                    children=(
                        _s(
                            "vpn",
                            GROUP,
                            children=(
                                _s("ike-gateway", "lab-ks"),
                                _s("group", GROUP_ID),
                                _s("match-direction", "output"),
                            ),
                        ),
                    ),
                ),
            ),
            _s("services", children=(_s("service-set", SERVICE_SET, children=(_s("ipsec-group-vpn", GROUP),)),)),
            _s(
                "interfaces",
                children=(
                    _s(
                        interface,
                        children=(
                            _s(
                                "unit",
                                0,
                                children=(
                                    _s(
                                        "family",
                                        "inet",
                                        children=(
                                            _s(
                                                "service",
                                                children=tuple(
                                                    _s(way, children=(_s("service-set", SERVICE_SET),))
                                                    for way in ("input", "output")
                                                ),
                                            ),
                                            _s("address", wan),
                                        ),
                                    ),
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )
    return _checked(tree, load_member)


def _checked(tree: Node, load: Callable[[str], KeyServerConfig | MemberConfig]) -> str:
    """``tree`` rendered, after proving the daemon's loader accepts the text (ConfigError otherwise)."""
    text = render_curly(tree)
    load(text)
    return text
