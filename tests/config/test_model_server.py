"""A full key server configuration, its defaults and the project extensions, as typed values."""

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from groupvpn.config.junos import parse, render_set
from groupvpn.config.model import (
    DEFAULT_STATE_FILE,
    KekSettings,
    KeyServerConfig,
    load,
    load_server,
)
from groupvpn.config.schema import SERVER
from groupvpn.config.values import (
    DH_GROUPS,
    ESP_CIPHERS,
    ESP_INTEGRITY,
    IKE_HASHES,
    CommunicationType,
)
from groupvpn.crypto.dh import SUPPORTED_GROUPS
from groupvpn.crypto.prf import SUPPORTED_HASHES
from groupvpn.gdoi.policy import AckRequest, Endpoint, GroupAssociatedPolicy, TrafficSelector
from groupvpn.wire.numbers import (
    EspTransform,
    KekAckType,
    KekAlgorithm,
    PolicyAction,
    SigHashAlgorithm,
)

FIXTURES = Path(__file__).parent / "fixtures"
TEXT = (FIXTURES / "server.conf").read_text()
S = "set security group-vpn server "


def with_lines(*lines: str) -> KeyServerConfig:
    return load_server(render_set(parse(TEXT, SERVER)) + "".join(f"{S}{line}\n" for line in lines))


def selector(source: str, destination: str, protocol: int = 0, port: int = 0) -> TrafficSelector:
    return TrafficSelector(protocol, Endpoint(ip_network(source)), Endpoint(ip_network(destination), port))


def test_the_full_configuration():
    config = load(TEXT)
    assert isinstance(config, KeyServerConfig)
    assert (config.address, config.port, config.state_file, config.routing_instance) == (
        ip_address("198.18.0.1"),
        848,
        DEFAULT_STATE_FILE,
        None,
    )
    gm1, gm2 = config.gateways
    assert (gm1.name, gm1.addresses, gm2.addresses) == (
        "gm1",
        (ip_address("198.18.0.2"),),
        (ip_address("198.18.0.3"), ip_address("198.18.0.4")),
    )
    assert gm1.policy == gm2.policy
    assert gm1.policy.psk.secret == b"Vr4-members of g1 only" and not gm1.any_address
    assert [s.name for s in config.suites] == ["aes128-sha256-modp2048"]
    (group,) = config.groups
    assert (group.name, group.group_id, group.gateways, group.rekey_fraction) == ("g1", 1234, (gm1, gm2), 0.1)
    assert group.gap == GroupAssociatedPolicy(15, 30, 120)
    assert group.kek == KekSettings(
        communication=CommunicationType.UNICAST,
        algorithm=KekAlgorithm.AES,
        key_bits=128,
        lifetime=7200,
        sig_hash=SigHashAlgorithm.SHA256,
        retransmission_period=10,
        retransmissions=2,
        ack=AckRequest(KekAckType.KEK_SHA256),
        signing_key=Path("/etc/groupvpn/g1-signing.pem"),
    )
    (sa,) = group.sas
    assert (sa.name, sa.proposal.name, sa.proposal.lifetime, sa.proposal.suite.name) == (
        "sa1",
        "aes128-sha256",
        3600,
        "AES-128-CBC/HMAC-SHA-256-128",
    )
    # the inactive deny policy is not there
    assert [(m.name, m.action) for m in sa.match_policies] == [("lan-to-lan", PolicyAction.PERMIT)]
    assert sa.selectors == (selector("10.0.0.0/8", "10.0.0.0/8"),) and group.deny == ()


def test_the_set_form_is_the_same_configuration():
    assert load_server(render_set(parse(TEXT, SERVER))) == load_server(TEXT)


def test_an_activated_deny_policy_is_a_deny_entry_of_the_group():
    config = load_server(TEXT.replace("inactive: match-policy", "match-policy"))
    assert config.groups[0].deny == (selector("0.0.0.0/0", "0.0.0.0/0", protocol=6, port=179),)


def test_defaults_without_server_member_communication():
    text = TEXT[: TEXT.index("server-member-communication")] + TEXT[TEXT.index("ipsec-sa sa1") :]
    assert load_server(text).groups[0].kek == KekSettings()


def test_the_extensions():
    config = with_lines(
        "listen-address 198.18.0.1 routing-instance ks-ns",
        "port 1848",
        "state-file /var/lib/groupvpn/lab.db",
        "ike gateway gm1 local-address 198.18.0.1 routing-instance ks-ns",
        "ike gateway anyone ike-policy gms",
        "ike gateway anyone any-address",
        "group g1 ike-gateway anyone",
        "group g1 rekey-percentage 5",
        "group g1 server-member-communication communication-type multicast",
        "group g1 server-member-communication multicast-group 239.192.0.1",
        "group g1 server-member-communication ack-request legacy",
        "group g1 server-member-communication encryption-algorithm 3des-cbc",
        "group g1 server-member-communication sig-hash-algorithm sha-512",
    )
    assert (config.port, config.state_file, config.routing_instance) == (
        1848,
        Path("/var/lib/groupvpn/lab.db"),
        "ks-ns",
    )
    anyone = config.gateways[-1]
    assert (anyone.name, anyone.any_address, anyone.addresses) == ("anyone", True, ())
    (group,) = config.groups
    assert [g.name for g in group.gateways] == ["gm1", "gm2", "anyone"] and group.rekey_fraction == 0.05
    kek = group.kek
    assert (kek.communication, kek.multicast, kek.ack, kek.algorithm, kek.key_bits, kek.sig_hash) == (
        CommunicationType.MULTICAST,
        Endpoint(ip_address("239.192.0.1"), 848),
        AckRequest(KekAckType.KEK_SHA256, legacy=True),
        KekAlgorithm.TRIPLE_DES,
        None,
        SigHashAlgorithm.SHA512,
    )


def test_no_acks_and_no_anti_replay():
    text = render_set(parse(TEXT, SERVER)).replace(f"{S}group g1 anti-replay-time-window 120\n", "")
    config = load_server(
        text + f"{S}group g1 server-member-communication ack-request none\n{S}group g1 no-anti-replay\n"
    )
    (group,) = config.groups
    assert group.kek.ack is None and group.gap.anti_replay_window == 0


def test_mirror_image_policies_share_an_sa_and_protocols_have_names():
    config = load_server(
        TEXT.replace("source 10.0.0.0/8;", "source 10.1.0.0/16;")
        .replace("destination 10.0.0.0/8;", "destination 10.2.0.0/16;")
        .replace("protocol 0;", "protocol udp;")
        .replace("source-port 0;", "source-port 5000;")
        .replace(
            "inactive: match-policy bypass-bgp {",
            "match-policy back { source 10.2.0.0/16; destination 10.1.0.0/16; protocol 17; destination-port 5000; }\n"
            "inactive: match-policy bypass-bgp {",
        )
    )
    there = TrafficSelector(17, Endpoint(ip_network("10.1.0.0/16"), 5000), Endpoint(ip_network("10.2.0.0/16")))
    assert config.groups[0].sas[0].selectors == (there, there.mirrored())


def test_ipv6_selectors_and_a_gcm_proposal():
    config = load_server(
        TEXT.replace("10.0.0.0/8", "2001:db8::/32").replace(
            "authentication-algorithm hmac-sha-256-128;\n                    encryption-algorithm aes-128-cbc;",
            "encryption-algorithm aes-256-gcm;",
        )
    )
    sa = config.groups[0].sas[0]
    assert sa.selectors == (selector("2001:db8::/32", "2001:db8::/32"),)
    suite = sa.proposal.suite
    assert (suite.transform, suite.key_bits, suite.auth, suite.icv_size) == (EspTransform.AES_GCM_16, 256, None, 16)


@pytest.mark.parametrize("cipher", sorted(ESP_CIPHERS))
def test_every_esp_cipher_name_makes_a_suite(cipher):
    integrity = [None] if cipher.endswith("-gcm") else sorted(ESP_INTEGRITY)
    for auth in integrity:
        lines = [f"ipsec proposal p encryption-algorithm {cipher}", "group g1 ipsec-sa sa1 proposal p"]
        if auth is not None:
            lines.append(f"ipsec proposal p authentication-algorithm {auth}")
        suite = with_lines(*lines).groups[0].sas[0].proposal.suite
        assert (suite.transform, suite.key_bits) == ESP_CIPHERS[cipher]
        assert suite.auth == (None if auth is None else ESP_INTEGRITY[auth])


def test_every_phase1_name_is_implemented():
    assert set(DH_GROUPS.values()) <= SUPPORTED_GROUPS
    assert set(IKE_HASHES.values()) <= SUPPORTED_HASHES
