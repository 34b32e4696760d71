"""The Junos hierarchies groupvpn reads: what may be configured where.

``MEMBER`` follows the MX Group VPNv2 member (``security group-vpn
member``, plus the ``services service-set`` and ``interfaces ... family
inet service`` statements that attach it to traffic, and the ``firewall
family inet|inet6 service-filter`` terms that keep traffic out of it);
``SERVER`` follows
the SRX group VPN key server (``security group-vpn server``).  Choices
are the Junos spellings; mapping them to registry numbers and checking
numbers, addresses and references between statements is the typed
model's job (``model.py``, which also states the defaults).

Service filter terms match what Linux ``ip rule`` can select (so the
steering is exact): ``source-address`` and ``destination-address``
prefix lists, ``protocol`` (``next-header`` in family inet6),
``source-port`` and ``destination-port``; ``then`` is ``service`` or
``skip``.  ``except`` is read only to be refused with a reason.

Project extensions, for what a Junos device configures elsewhere or not at all:

* member ``ike gateway NAME server-port PORT``: the key servers' GDOI port (848).
* member ``interfaces ... family inet6 service``: a service set applied to
  an IPv6 interface (MX Group VPNv2 runs over IPv4 only).
* server ``listen-address ADDRESS [routing-instance NAME]`` and ``port
  PORT``: the one address and UDP port the key server answers on, which
  is also its Phase 1 identity (default: the groups' ``server-address``,
  port 848).
* server ``state-file PATH``: the key store (keys, SPIs, sequence numbers, members).
* server ``ike gateway NAME any-address``: the gateway's pre-shared key is
  the group-wide key, admitting members from any address not listed in
  another gateway (instead of an ``address`` list).
* group ``rekey-percentage N``: new keys are pushed when N % of a key's
  lifetime remains (SRX: fixed 10 %).
* group ``deactivation-time-delay`` (the GAP DTD next to SRX's ATD) and
  ``action permit|deny`` in a ``match-policy`` (deny entries, RFC 6407 §5.5.1).
* ``server-member-communication``: ``sha-512`` among the signature hashes,
  ``signing-key PATH`` (a PEM private key; generated and kept in the state
  file when absent), ``multicast-group ADDRESS`` and ``multicast-port PORT``
  for ``communication-type multicast``, and ``ack-request rfc8263|legacy|none``
  (RFC 8263 KEK_ACK_REQUESTED, in its registered or pre-RFC class, or none).
"""

from __future__ import annotations

from .junos import Statement, container, flag, leaf, leaf_list, named, schema, wildcard
from .values import (
    ACTIONS,
    DH_GROUPS,
    ESP_CIPHERS,
    ESP_INTEGRITY,
    IKE_CIPHERS,
    IKE_HASHES,
    KEK_CIPHERS,
    SIG_HASHES,
    AckMode,
    CommunicationType,
    DfBit,
    Direction,
    FilterAction,
    choices,
)

IKE_PROPOSAL = named(
    "proposal",
    leaf("authentication-method", "pre-shared-keys"),
    leaf("authentication-algorithm", *IKE_HASHES),
    leaf("dh-group", *DH_GROUPS),
    leaf("encryption-algorithm", *IKE_CIPHERS),
    leaf("lifetime-seconds"),
    leaf("description"),
)

IKE_POLICY = named(
    "policy",
    leaf("mode", "main"),
    leaf_list("proposals"),
    container("pre-shared-key", leaf("ascii-text", secret=True), leaf("hexadecimal", secret=True)),
    leaf("description"),
)

LOCAL_ADDRESS = leaf("local-address", options=(leaf("routing-instance"),))

MEMBER_BLOCK = container(
    "member",
    container(
        "ike",
        IKE_PROPOSAL,
        IKE_POLICY,
        named("gateway", leaf("ike-policy"), leaf_list("server-address"), leaf("server-port"), LOCAL_ADDRESS),
    ),
    container(
        "ipsec",
        named(
            "vpn",
            leaf("ike-gateway"),
            leaf("group"),
            leaf("match-direction", *choices(Direction)),
            leaf("df-bit", *choices(DfBit)),
            container("fail-open", named("rule", leaf("source-address"), leaf("destination-address"))),
            leaf("description"),
        ),
    ),
)

SERVICES = container(
    "services",
    named("service-set", container("interface-service", leaf("service-interface")), leaf_list("ipsec-group-vpn")),
)

INTERFACES = container(
    "interfaces",
    wildcard(
        "interface-name",
        named(
            "unit",
            named(
                "family",
                container(
                    "service",
                    *(container(way, named("service-set", leaf("service-filter"))) for way in choices(Direction)),
                ),
                named("address"),
                choices=("inet", "inet6"),
            ),
        ),
    ),
)

FIREWALL = container(
    "firewall",
    named(
        "family",
        named(
            "service-filter",
            named(
                "term",
                container(
                    "from",
                    *(
                        container(f"{end}-address", wildcard("prefix", flag("except")))
                        for end in ("source", "destination")
                    ),
                    leaf_list("protocol"),
                    leaf_list("next-header"),
                    leaf_list("source-port"),
                    leaf_list("destination-port"),
                ),
                container("then", *(flag(action) for action in choices(FilterAction))),
            ),
        ),
        choices=("inet", "inet6"),
    ),
)

SERVER_BLOCK = container(
    "server",
    leaf("listen-address", options=(leaf("routing-instance"),)),
    leaf("port"),
    leaf("state-file"),
    container(
        "ike",
        IKE_PROPOSAL,
        IKE_POLICY,
        named("gateway", leaf("ike-policy"), leaf_list("address"), flag("any-address"), LOCAL_ADDRESS),
    ),
    container(
        "ipsec",
        named(
            "proposal",
            leaf("authentication-algorithm", *ESP_INTEGRITY),
            leaf("encryption-algorithm", *ESP_CIPHERS),
            leaf("lifetime-seconds"),
            leaf("description"),
        ),
    ),
    named(
        "group",
        leaf("group-id"),
        leaf("description"),
        leaf_list("ike-gateway"),
        leaf("server-address"),
        leaf("rekey-percentage"),
        leaf("activation-time-delay"),
        leaf("deactivation-time-delay"),
        leaf("anti-replay-time-window"),
        flag("no-anti-replay"),
        container(
            "server-member-communication",
            leaf("communication-type", *choices(CommunicationType)),
            leaf("encryption-algorithm", *KEK_CIPHERS),
            leaf("lifetime-seconds"),
            leaf("sig-hash-algorithm", *SIG_HASHES),
            leaf("retransmission-period"),
            leaf("number-of-retransmission"),
            leaf("signing-key"),
            leaf("multicast-group"),
            leaf("multicast-port"),
            leaf("ack-request", *choices(AckMode)),
        ),
        named(
            "ipsec-sa",
            leaf("proposal"),
            named(
                "match-policy",
                leaf("source"),
                leaf("destination"),
                leaf("source-port"),
                leaf("destination-port"),
                leaf("protocol"),
                leaf("action", *ACTIONS),
            ),
        ),
    ),
)


def _group_vpn(*blocks: Statement) -> Statement:
    return container("security", container("group-vpn", *blocks))


MEMBER: Statement = schema(_group_vpn(MEMBER_BLOCK), SERVICES, INTERFACES, FIREWALL)
SERVER: Statement = schema(_group_vpn(SERVER_BLOCK))
# Both daemons' statements: a file is read with this only to tell which daemon it configures.
EITHER: Statement = schema(_group_vpn(MEMBER_BLOCK, SERVER_BLOCK), SERVICES, INTERFACES, FIREWALL)
