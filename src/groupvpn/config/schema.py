"""The Junos hierarchies groupvpn reads: what may be configured where.

``MEMBER`` follows the MX Group VPNv2 member (``security group-vpn
member``, plus the ``services service-set`` and ``interfaces ... family
inet service`` statements that attach it to traffic); ``SERVER`` follows
the SRX group VPN key server (``security group-vpn server``).  Project
extensions over Junos: ``action permit|deny`` in a server ``match-policy``
(GDOI can carry deny policies, RFC 6407 §5.5.1), a group's
``deactivation-time-delay`` (the GAP DTD next to SRX's ATD) and ``sha-512``
among the KEK signature hashes.  Choices are the Junos spellings; mapping them to
registry numbers and checking numbers, addresses and references between
statements is the typed model's job.
"""

from __future__ import annotations

from .junos import Statement, container, flag, leaf, leaf_list, named, schema, wildcard

_CBC = ("3des-cbc", "aes-128-cbc", "aes-192-cbc", "aes-256-cbc")

IKE_PROPOSAL = named(
    "proposal",
    leaf("authentication-method", "pre-shared-keys"),
    leaf("authentication-algorithm", "md5", "sha1", "sha-256", "sha-384"),
    leaf("dh-group", "group1", "group2", "group5", "group14", "group15", "group16", "group19", "group20", "group21"),
    leaf("encryption-algorithm", "des-cbc", *_CBC),
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

MEMBER: Statement = schema(
    container(
        "security",
        container(
            "group-vpn",
            container(
                "member",
                container(
                    "ike",
                    IKE_PROPOSAL,
                    IKE_POLICY,
                    named("gateway", leaf("ike-policy"), leaf_list("server-address"), LOCAL_ADDRESS),
                ),
                container(
                    "ipsec",
                    named(
                        "vpn",
                        leaf("ike-gateway"),
                        leaf("group"),
                        leaf("match-direction", "input", "output"),
                        leaf("df-bit", "clear", "set", "copy"),
                        container("fail-open", named("rule", leaf("source-address"), leaf("destination-address"))),
                        leaf("description"),
                    ),
                ),
            ),
        ),
    ),
    container(
        "services",
        named("service-set", container("interface-service", leaf("service-interface")), leaf("ipsec-group-vpn")),
    ),
    container(
        "interfaces",
        wildcard(
            "interface-name",
            named(
                "unit",
                named(
                    "family",
                    container(
                        "service",
                        *(container(way, named("service-set", leaf("service-filter"))) for way in ("input", "output")),
                    ),
                    named("address"),
                    choices=("inet",),
                ),
            ),
        ),
    ),
)

SERVER: Statement = schema(
    container(
        "security",
        container(
            "group-vpn",
            container(
                "server",
                container(
                    "ike",
                    IKE_PROPOSAL,
                    IKE_POLICY,
                    named("gateway", leaf("ike-policy"), leaf_list("address"), LOCAL_ADDRESS),
                ),
                container(
                    "ipsec",
                    named(
                        "proposal",
                        leaf(
                            "authentication-algorithm",
                            "hmac-md5-96",
                            "hmac-sha1-96",
                            "hmac-sha-256-128",
                            "hmac-sha-384-192",
                            "hmac-sha-512-256",
                        ),
                        leaf(
                            "encryption-algorithm",
                            "des-cbc",
                            *_CBC,
                            "aes-128-gcm",
                            "aes-192-gcm",
                            "aes-256-gcm",
                        ),
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
                    leaf("member-threshold"),
                    leaf("activation-time-delay"),
                    leaf("deactivation-time-delay"),
                    leaf("anti-replay-time-window"),
                    flag("no-anti-replay"),
                    container(
                        "server-member-communication",
                        leaf("communication-type", "unicast", "multicast"),
                        leaf("encryption-algorithm", *_CBC),
                        leaf("lifetime-seconds"),
                        leaf("sig-hash-algorithm", "sha1", "sha-256", "sha-384", "sha-512"),
                        leaf("retransmission-period"),
                        leaf("number-of-retransmission"),
                        leaf("certificate"),
                        leaf("heartbeat"),
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
                            leaf("action", "permit", "deny"),
                        ),
                    ),
                ),
            ),
        ),
    ),
)
