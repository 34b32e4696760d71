"""The group policy model: wire round trips and every check a member makes before installing."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings

from gdoi_support import (
    CBC,
    CBC_SPI,
    GCM,
    GCM_SPI,
    GROUP,
    KEK_SPI,
    LAN_A,
    LAN_B,
    group_policies,
    group_policy,
    group_sa,
    kek_keys,
    kek_policy,
    keys_for,
    signing_key,
)
from groupvpn.crypto.suites import EspKeys
from groupvpn.gdoi import (
    AckRequest,
    Endpoint,
    GroupAssociatedPolicy,
    GroupPolicy,
    PolicyError,
    SaPolicy,
    SenderIds,
    TekKeys,
    TekPolicy,
    TrafficSelector,
)
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.gdoi import Gap, GroupSa, IpsecTek, KeyDownload, KeyPacket, SaTek
from groupvpn.wire.ident import AddressRange, TrafficId
from groupvpn.wire.message import decode_payloads, encode_payloads
from groupvpn.wire.numbers import (
    KEK_ACK_REQUESTED_LEGACY,
    AuthAlgorithm,
    EncapsulationMode,
    EspTransform,
    ExchangeType,
    GapAttribute,
    GdoiProtocol,
    IdType,
    IpsecAttribute,
    KekAckType,
    KekAttribute,
    KeyPacketType,
    NotifyType,
    PayloadType,
    PolicyAction,
    SaDirection,
    SigAlgorithm,
    SigHashAlgorithm,
    TekKeyAttribute,
)

FORWARD = TrafficSelector(0, LAN_A, LAN_B)
KEK_HEX = KEK_SPI.hex()
NET10 = TrafficId.of(ip_network("10.0.0.0/8"))
ALGORITHM_KEY = TekKeyAttribute.TEK_ALGORITHM_KEY
INTEGRITY_KEY = TekKeyAttribute.TEK_INTEGRITY_KEY


def through_the_wire(policy: GroupPolicy) -> tuple[GroupSa, KeyDownload]:
    """Encode SA and KD as one payload chain and decode them again, as PULL messages 2 and 4 carry them."""
    sa, kd = policy.to_wire()
    (sa2, kd2), padding = decode_payloads(PayloadType.SA, encode_payloads([sa, kd]), ExchangeType.GROUPKEY_PULL)
    assert padding == b""
    return sa2, kd2  # type: ignore[return-value]


def refused(sa: GroupSa, kd: KeyDownload, group_id: int = GROUP) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        GroupPolicy.from_wire(group_id, sa, kd)
    return caught.value


def with_tek_attributes(sa: GroupSa, index: int, attributes: tuple[Attribute, ...]) -> GroupSa:
    tek = sa.teks[index].policy
    assert isinstance(tek, IpsecTek)
    teks = list(sa.teks)
    teks[index] = SaTek(GdoiProtocol.IPSEC_ESP, replace(tek, attributes=attributes))
    return replace(sa, teks=tuple(teks))


# -- round trips ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(group_policies())
def test_policy_survives_the_wire(policy: GroupPolicy) -> None:
    sa, kd = through_the_wire(policy)
    back = GroupPolicy.from_wire(policy.group_id, sa, kd)
    assert back == policy
    assert back.to_wire() == policy.to_wire()


def test_the_reference_group_round_trips_with_every_part() -> None:
    policy = group_policy(sa=group_sa(deny=True), sender_ids=SenderIds(12, (5, 6)))
    sa, kd = through_the_wire(policy)
    kinds = [KeyPacketType.KEK, KeyPacketType.TEK, KeyPacketType.TEK, KeyPacketType.SID]
    assert [p.kd_type for p in kd.packets] == kinds
    back = GroupPolicy.from_wire(GROUP, sa, kd)
    assert back == policy
    assert back.kek is not None and back.kek.scheme.hash is SigHashAlgorithm.SHA256  # implied by ECDSA-256
    assert back.gap == GroupAssociatedPolicy(5, 30, 10)


@pytest.mark.parametrize(
    "source, destination",
    [
        (ip_address("2001:db8::1"), ip_address("ff05::1:3")),
        (ip_network("2001:db8:a::/48"), ip_network("::/0")),
        (AddressRange(ip_address("2001:db8::10"), ip_address("2001:db8::ff")), ip_network("2001:db8:b::/64")),
        (ip_address("192.0.2.1"), AddressRange(ip_address("198.51.100.1"), ip_address("198.51.100.9"))),
    ],
)
def test_ipv6_and_ipv4_selectors_of_every_id_type_round_trip(source: object, destination: object) -> None:
    selector = TrafficSelector(17, Endpoint(source, 4500), Endpoint(destination, 4500))  # type: ignore[arg-type]
    sa = SaPolicy((TekPolicy(GCM_SPI, selector, GCM, 600),))
    policy = GroupPolicy(GROUP, sa, (TekKeys(GCM_SPI, keys_for(GCM, "v6")),))
    wire_sa, kd = through_the_wire(policy)
    (sat,) = wire_sa.teks
    assert isinstance(sat.policy, IpsecTek) and sat.policy.src == TrafficId.of(source, 4500)  # type: ignore[arg-type]
    assert GroupPolicy.from_wire(GROUP, wire_sa, kd).teks[0].selector == selector


def test_tek_attributes_on_the_wire() -> None:
    (sat, _, gcm) = group_sa().to_wire().teks
    assert isinstance(sat.policy, IpsecTek) and isinstance(gcm.policy, IpsecTek)
    cbc_attrs = [(a.type, a.int) for a in sat.policy.attributes]
    assert cbc_attrs == [
        (IpsecAttribute.SA_LIFE_TYPE, 1),
        (IpsecAttribute.SA_LIFE_DURATION, 3600),
        (IpsecAttribute.ENCAPSULATION_MODE, EncapsulationMode.TUNNEL),
        (IpsecAttribute.AUTHENTICATION_ALGORITHM, AuthAlgorithm.HMAC_SHA2_256),
        (IpsecAttribute.KEY_LENGTH, 128),
    ]
    assert sat.policy.transform_id == EspTransform.AES_CBC and sat.policy.spi == CBC_SPI
    # GCM: no Authentication Algorithm (combined mode); defaults (preservation, direction) are left out.
    tail = [IpsecAttribute.ENCAPSULATION_MODE, IpsecAttribute.KEY_LENGTH]
    assert [a.type for a in gcm.policy.attributes][-2:] == tail


def test_fixed_length_ciphers_send_no_key_length() -> None:
    from groupvpn.crypto.suites import esp_suite

    triple = esp_suite(EspTransform.TRIPLE_DES, None, AuthAlgorithm.HMAC_SHA1)
    sat = TekPolicy(CBC_SPI, FORWARD, triple).to_wire()
    assert isinstance(sat.policy, IpsecTek)
    assert IpsecAttribute.KEY_LENGTH not in [a.type for a in sat.policy.attributes]


def test_absent_attributes_take_the_rfc_defaults() -> None:
    sa, kd = group_policy().to_wire()
    bare = (Attribute.tv(IpsecAttribute.AUTHENTICATION_ALGORITHM, AuthAlgorithm.HMAC_SHA2_256),
            Attribute.tv(IpsecAttribute.KEY_LENGTH, 128))
    sa = with_tek_attributes(with_tek_attributes(sa, 0, bare), 1, bare)
    tek = GroupPolicy.from_wire(GROUP, sa, kd).teks[0]
    assert (tek.lifetime, tek.direction) == (28800, SaDirection.SYMMETRIC)
    assert tek.preservation.name == "SOURCE_AND_DESTINATION"


def test_group_description_in_a_sat_is_ignored() -> None:
    sa, kd = group_policy().to_wire()
    tek = sa.teks[2].policy
    assert isinstance(tek, IpsecTek)
    sa = with_tek_attributes(sa, 2, (*tek.attributes, Attribute.tv(IpsecAttribute.GROUP_DESCRIPTION, 14)))
    assert GroupPolicy.from_wire(GROUP, sa, kd) == group_policy()


# -- the pairing rule ------------------------------------------------------------------


def test_paired_policies_share_a_tek() -> None:
    policy = GroupPolicy.from_wire(GROUP, *group_policy().to_wire())
    first, second = [t for t in policy.teks if t.spi == CBC_SPI]
    assert second.selector == first.selector.mirrored()


def test_unpaired_policies_for_one_tek_fail_with_the_reason() -> None:
    other = TrafficSelector(0, LAN_A, Endpoint(ip_network("10.3.0.0/16")))
    with pytest.raises(PolicyError) as caught:
        SaPolicy((TekPolicy(CBC_SPI, FORWARD, CBC), TekPolicy(CBC_SPI, other, CBC)))
    assert caught.value.reason == (
        "TEK 00001001 carries two unpaired policies (10.1.0.0/16 -> 10.2.0.0/16; 10.1.0.0/16 -> 10.3.0.0/16); "
        "two policies may share a TEK only as mirror images (A-B and B-A)"
    )


def test_three_policies_for_one_tek_fail_even_if_two_are_paired() -> None:
    teks = (
        TekPolicy(CBC_SPI, FORWARD, CBC),
        TekPolicy(CBC_SPI, FORWARD.mirrored(), CBC),
        TekPolicy(CBC_SPI, TrafficSelector(6, Endpoint(LAN_A.address, 22), LAN_B), CBC),
    )
    with pytest.raises(PolicyError, match=r"^TEK 00001001 carries 3 policies \(.*protocol 6 10\.1\.0\.0/16 port 22 "
                                          r"-> 10\.2\.0\.0/16\); at most two, mirror images"):
        SaPolicy(teks)


def test_a_pair_must_agree_on_everything_but_the_selector() -> None:
    with pytest.raises(PolicyError, match="policy pair .* whose algorithms, lifetimes, direction or address"):
        SaPolicy((TekPolicy(CBC_SPI, FORWARD, CBC, 3600), TekPolicy(CBC_SPI, FORWARD.mirrored(), CBC, 7200)))


def test_unpaired_policies_arriving_on_the_wire_are_refused() -> None:
    sa, kd = group_policy().to_wire()
    tek = sa.teks[1].policy
    assert isinstance(tek, IpsecTek)
    stray = replace(tek, dst=TrafficId.of(ip_network("10.9.0.0/16")))
    error = refused(replace(sa, teks=(sa.teks[0], SaTek(GdoiProtocol.IPSEC_ESP, stray), sa.teks[2])), kd)
    assert "carries two unpaired policies (10.1.0.0/16 -> 10.2.0.0/16; 10.2.0.0/16 -> 10.9.0.0/16)" in error.reason


# -- deny entries ------------------------------------------------------------------------


def test_deny_entries_travel_as_null_sats_with_spi_0_and_no_key_packet() -> None:
    policy = group_policy(sa=group_sa(deny=True))
    sa, kd = policy.to_wire()
    deny = sa.teks[-1].policy
    assert isinstance(deny, IpsecTek)
    assert (deny.transform_id, deny.spi) == (EspTransform.NULL, bytes(4))
    assert [(a.type, a.int) for a in deny.attributes] == [(IpsecAttribute.POLICY_ACTION, PolicyAction.DENY)]
    assert bytes(4) not in [p.spi for p in kd.packets]


def test_deny_entries_are_accepted_and_marked() -> None:
    back = GroupPolicy.from_wire(GROUP, *through_the_wire(group_policy(sa=group_sa(deny=True))))
    deny = [t for t in back.teks if not t.permits]
    assert len(deny) == 1 and deny[0].action is PolicyAction.DENY and deny[0].suite is None
    assert str(deny[0].selector) == "protocol 17 10.1.0.0/16 port 848 -> 10.2.0.0/16"


def test_a_deny_entry_never_fails_the_registration() -> None:
    """Several deny entries, odd transforms, SPIs and attributes of other implementations: only the selector counts."""
    sa, kd = group_policy().to_wire()
    odd = IpsecTek(
        6,
        TrafficId.of(ip_network("10.1.0.0/16")),
        TrafficId.of(ip_network("10.2.0.0/16"), 179),
        EspTransform.AES_CBC,
        CBC_SPI,
        (Attribute.tv(IpsecAttribute.ECN_TUNNEL, 1), Attribute.tv(IpsecAttribute.POLICY_ACTION, PolicyAction.DENY)),
    )
    plain = IpsecTek(0, TrafficId.of(ip_address("10.1.1.1")), TrafficId.of(ip_address("10.2.2.2")), 250, b"\xff" * 4,
                     (Attribute.tv(IpsecAttribute.POLICY_ACTION, PolicyAction.DENY),))
    teks = sa.teks + (SaTek(GdoiProtocol.IPSEC_ESP, odd), SaTek(GdoiProtocol.IPSEC_ESP, plain))
    back = GroupPolicy.from_wire(GROUP, replace(sa, teks=teks), kd)
    assert [str(t.selector) for t in back.teks if not t.permits] == [
        "protocol 6 10.1.0.0/16 -> 10.2.0.0/16 port 179",
        "10.1.1.1 -> 10.2.2.2",
    ]


def test_a_deny_entry_carries_only_its_selector() -> None:
    with pytest.raises(PolicyError, match="deny entry .* carries SA parameters"):
        TekPolicy(bytes(4), FORWARD, None, lifetime=60, action=PolicyAction.DENY)


def test_an_unknown_policy_action_is_refused() -> None:
    sa, kd = group_policy().to_wire()
    tek = sa.teks[2].policy
    assert isinstance(tek, IpsecTek)
    error = refused(with_tek_attributes(sa, 2, (*tek.attributes, Attribute.tv(IpsecAttribute.POLICY_ACTION, 3))), kd)
    assert error.reason.endswith("POLICY_ACTION 3 is not supported")
    assert error.notify_type == NotifyType.ATTRIBUTES_NOT_SUPPORTED


# -- key material --------------------------------------------------------------------------


def _kd_with(policy: GroupPolicy, spi: bytes, attributes: tuple[Attribute, ...]) -> KeyDownload:
    return KeyDownload(tuple(
        KeyPacket(p.kd_type, p.spi, attributes) if p.spi == spi else p for p in policy.key_download().packets
    ))


@pytest.mark.parametrize(
    "spi, attributes, reason",
    [
        (
            CBC_SPI,
            (Attribute.tlv(ALGORITHM_KEY, bytes(32)), Attribute.tlv(INTEGRITY_KEY, bytes(32))),
            "TEK 00001001: TEK_ALGORITHM_KEY is 32 octets, AES-128-CBC/HMAC-SHA-256-128 needs 16",
        ),
        (
            CBC_SPI,
            (Attribute.tlv(ALGORITHM_KEY, bytes(16)), Attribute.tlv(INTEGRITY_KEY, bytes(20))),
            "TEK 00001001: TEK_INTEGRITY_KEY is 20 octets, AES-128-CBC/HMAC-SHA-256-128 needs 32",
        ),
        (
            CBC_SPI,
            (Attribute.tlv(ALGORITHM_KEY, bytes(16)),),
            "TEK 00001001: TEK_INTEGRITY_KEY is 0 octets, AES-128-CBC/HMAC-SHA-256-128 needs 32",
        ),
        (
            GCM_SPI,
            (Attribute.tlv(ALGORITHM_KEY, bytes(32)),),
            "TEK 00002002: TEK_ALGORITHM_KEY is 32 octets, AES-256-GCM-16 needs 36 (key | 4-octet salt)",
        ),
        (
            GCM_SPI,
            (Attribute.tlv(INTEGRITY_KEY, bytes(32)),),
            "TEK key packet 00002002 has no TEK_ALGORITHM_KEY",
        ),
        (
            KEK_SPI,
            (Attribute.tlv(1, bytes(16 + 32)), Attribute.tlv(2, signing_key().public.spki)),
            f"KEK key packet {KEK_HEX}: KEK_ALGORITHM_KEY for 128-bit AES-CBC must be 32 octets "
            "(IV | key), got 48",
        ),
        (
            KEK_SPI,
            (Attribute.tlv(1, bytes(32)), Attribute.tlv(2, signing_key(SigAlgorithm.RSA).public.spki)),
            f"KEK {KEK_HEX}: the 2048-bit SIG_ALGORITHM_KEY does not fit SIG_ALGORITHM ECDSA_256",
        ),
        (
            KEK_SPI,
            (Attribute.tlv(1, bytes(32)), Attribute.tlv(2, b"not a key")),
            f"KEK key packet {KEK_HEX}: SIG_ALGORITHM_KEY is not a DER SubjectPublicKeyInfo",
        ),
        (
            KEK_SPI,
            (Attribute.tlv(1, bytes(32)),),
            f"KEK key packet {KEK_HEX} has no SIG_ALGORITHM_KEY",
        ),
    ],
)
def test_key_material_that_does_not_fit_its_algorithm_is_refused(
    spi: bytes, attributes: tuple[Attribute, ...], reason: str
) -> None:
    policy = group_policy()
    error = refused(policy.sa.to_wire(), _kd_with(policy, spi, attributes))
    assert error.reason == reason
    assert error.notify_type == NotifyType.INVALID_KEY_INFORMATION


def test_kek_key_length_attribute_must_match_the_key() -> None:
    sa = replace(group_sa(), kek=kek_policy(key_bits=256))
    with pytest.raises(PolicyError, match="KEK_ALGORITHM_KEY for 256-bit AES-CBC must be 48 octets"):
        GroupPolicy.from_wire(GROUP, sa.to_wire(), group_policy().key_download())
    with pytest.raises(PolicyError, match="holds a 128-bit key, KEK_KEY_LENGTH says 256"):
        replace(group_policy(), sa=sa)


def test_sig_key_length_must_match_the_public_key() -> None:
    with pytest.raises(PolicyError, match="SIG_KEY_LENGTH is 384 but the SIG_ALGORITHM_KEY has 256 bits"):
        replace(group_policy(), sa=replace(group_sa(), kek=kek_policy(sig_key_bits=384)))


def test_rsa_kek_signatures() -> None:
    kek = kek_policy(sig_algorithm=SigAlgorithm.RSA, sig_hash=SigHashAlgorithm.SHA256, sig_key_bits=2048)
    policy = group_policy(sa=replace(group_sa(), kek=kek))
    assert policy.kek_keys == kek_keys(kek)
    assert GroupPolicy.from_wire(GROUP, *through_the_wire(policy)) == policy


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda kd: KeyDownload(kd.packets[1:]), f"KEK {KEK_HEX} has no KEK key packet"),
        (lambda kd: KeyDownload(kd.packets[:1] + kd.packets[2:]), "SA TEK 00001001 has no TEK key packet"),
        (lambda kd: KeyDownload(kd.packets + kd.packets[1:2]), "TEK 00001001 has two key packets"),
        (lambda kd: KeyDownload(kd.packets + kd.packets[:1]), "the KD carries more than one KEK key packet"),
        (
            lambda kd: KeyDownload(kd.packets + (replace(kd.packets[1], spi=b"\0\0\x30\0"),)),
            "the TEK key packet for SPI 00003000 matches no SA TEK",
        ),
        (
            lambda kd: KeyDownload((replace(kd.packets[0], spi=bytes(16)),) + kd.packets[1:]),
            f"the KEK key packet SPI {bytes(16).hex()} is not the SA KEK SPI {KEK_HEX}",
        ),
        (
            lambda kd: KeyDownload(kd.packets + (SenderIds(8, (1,)).to_wire(), SenderIds(8, (2,)).to_wire())),
            "the KD carries more than one SID key packet",
        ),
    ],
)
def test_every_sa_has_its_key_packet_and_every_key_packet_its_sa(change: object, reason: str) -> None:
    policy = group_policy()
    error = refused(policy.sa.to_wire(), change(policy.key_download()))  # type: ignore[operator]
    assert error.reason == reason


def test_kek_packet_without_an_sa_kek() -> None:
    policy = group_policy()
    sa = replace(policy.sa.to_wire(), kek=None)
    assert refused(sa, policy.key_download()).reason == "the KD carries a KEK key packet but the SA has no SA KEK"


def test_sids_only_with_a_counter_mode_tek() -> None:
    sa = SaPolicy((TekPolicy(CBC_SPI, FORWARD, CBC),))
    with pytest.raises(PolicyError, match="a SID key packet was delivered but no TEK uses a counter mode"):
        GroupPolicy(GROUP, sa, (TekKeys(CBC_SPI, keys_for(CBC, "x")),), sender_ids=SenderIds(8, (1,)))


def _sid(*attributes: Attribute) -> KeyPacket:
    return KeyPacket(KeyPacketType.SID, b"", attributes)


@pytest.mark.parametrize(
    "packet, reason",
    [
        (KeyPacket(KeyPacketType.LKH, KEK_SPI, ()), "key packet type LKH is not supported"),
        (KeyPacket(200, b"", ()), "key packet type UNKNOWN(200) is not supported"),
        (_sid(Attribute.tlv(2, bytes(4))), "the SID key packet carries 0 NUMBER_OF_SID_BITS attributes, not 1"),
        (_sid(Attribute.tv(1, 8), Attribute.tlv(2, b"\x01\x00")), "a SID value does not fit in 8 bits"),
        (
            _sid(Attribute.tv(1, 8), Attribute.tlv(150, b"x")),
            "the SID key packet carries attributes other than NUMBER_OF_SID_BITS and SID_VALUE",
        ),
    ],
)
def test_unsupported_or_broken_key_packets(packet: KeyPacket, reason: str) -> None:
    policy = group_policy()
    assert refused(policy.sa.to_wire(), KeyDownload(policy.key_download().packets + (packet,))).reason == reason


# -- attributes and algorithms -------------------------------------------------------------


def _kek_attributes(extra: tuple[Attribute, ...], drop: int | None = None) -> GroupSa:
    sa = group_sa().to_wire()
    assert sa.kek is not None
    attrs = tuple(a for a in sa.kek.attributes if a.type != drop) + extra
    return replace(sa, kek=replace(sa.kek, attributes=attrs))


@pytest.mark.parametrize(
    "sa, reason",
    [
        (_kek_attributes((Attribute.tv(150, 1),)), f"SA KEK {KEK_HEX}: attribute class 150 is not supported"),
        (_kek_attributes((Attribute.tv(KekAttribute.RESERVED_KE_OAKLEY_GROUP, 14),)),
         f"SA KEK {KEK_HEX}: attribute RESERVED_KE_OAKLEY_GROUP is not supported"),
        (_kek_attributes((Attribute.tv(KekAttribute.KEK_KEY_LENGTH, 128),)),
         f"SA KEK {KEK_HEX}: attribute KEK_KEY_LENGTH appears twice"),
        (_kek_attributes((Attribute.tv(KEK_ACK_REQUESTED_LEGACY, 1),)),
         f"SA KEK {KEK_HEX} requests acknowledgements in both class 9 and legacy class 129"),
        (_kek_attributes((), drop=KekAttribute.SIG_ALGORITHM), f"SA KEK {KEK_HEX} has no SIG_ALGORITHM attribute"),
        (
            _kek_attributes((), drop=KekAttribute.KEK_KEY_LIFETIME),
            f"SA KEK {KEK_HEX} has no KEK_KEY_LIFETIME attribute",
        ),
        (_kek_attributes((Attribute.tv(KekAttribute.KEK_ALGORITHM, 9),), drop=KekAttribute.KEK_ALGORITHM),
         f"SA KEK {KEK_HEX}: KEK_ALGORITHM 9 is not supported"),
        (_kek_attributes((Attribute.tv(KekAttribute.SIG_ALGORITHM, 2),), drop=KekAttribute.SIG_ALGORITHM),
         f"KEK {KEK_HEX}: SIG_ALGORITHM DSS is not supported"),
        (_kek_attributes((Attribute.tv(KekAttribute.SIG_HASH_ALGORITHM, SigHashAlgorithm.SHA512),)),
         f"KEK {KEK_HEX}: ECDSA_256 implies SIG_HASH SHA256, not 5"),
        (
            _kek_attributes((Attribute.lifetime(4, 0xFFFFFFFF),), drop=KekAttribute.KEK_KEY_LIFETIME),
            f"KEK {KEK_HEX}: lifetime of 4294967295 s is outside 10..2592000 s",
        ),
        (replace(group_sa().to_wire(), gap=Gap((Attribute.tv(201, 1),))), "GAP: attribute class 201 is not supported"),
        (replace(group_sa().to_wire(), gap=Gap((Attribute.tv(GapAttribute.SENDER_ID_REQUEST, 2),))),
         "the key server's GAP carries SENDER_ID_REQUEST, which only a member sends (RFC 6407 §5.4.2)"),
    ],
)
def test_kek_and_gap_attributes_a_member_must_abort_on(sa: GroupSa, reason: str) -> None:
    with pytest.raises(PolicyError) as caught:
        SaPolicy.from_wire(sa)
    assert caught.value.reason == reason


def test_the_legacy_ack_class_129_is_understood() -> None:
    policy = group_policy(sa=replace(group_sa(), kek=kek_policy(ack=AckRequest(KekAckType.KEK_SHA512, legacy=True))))
    sa, kd = through_the_wire(policy)
    assert sa.kek is not None and (KEK_ACK_REQUESTED_LEGACY, 3) in [(a.type, a.int) for a in sa.kek.attributes]
    kek = GroupPolicy.from_wire(GROUP, sa, kd).kek
    assert kek is not None and kek.ack == AckRequest(KekAckType.KEK_SHA512, legacy=True)


def test_kek_management_algorithm_is_ignored_in_a_pull() -> None:
    sa = _kek_attributes((Attribute.tv(KekAttribute.KEK_MANAGEMENT_ALGORITHM, 1),))
    assert SaPolicy.from_wire(sa) == group_sa()


IPSEC = IpsecAttribute


def _cbc_attrs(*extra: Attribute, key_length: int = 128, auth: int = 5) -> tuple[Attribute, ...]:
    return (
        Attribute.tv(IPSEC.SA_LIFE_TYPE, 1),
        Attribute.lifetime(IPSEC.SA_LIFE_DURATION, 3600),
        Attribute.tv(IPSEC.AUTHENTICATION_ALGORITHM, auth),
        Attribute.tv(IPSEC.KEY_LENGTH, key_length),
        *extra,
    )


def _unsupported_esp(key_length: int, auth: int, detail: str = "") -> str:
    return f"ESP transform 12 with key length {key_length} and authentication algorithm {auth} is not supported{detail}"


@pytest.mark.parametrize(
    "attributes, reason",
    [
        (_cbc_attrs(Attribute.tv(32002, 1)), "attribute class 32002 is not supported"),
        (_cbc_attrs(Attribute.tv(IPSEC.EXTENDED_SEQUENCE_NUMBER, 1)), "EXTENDED_SEQUENCE_NUMBER is not supported"),
        (
            _cbc_attrs(Attribute.tv(IPSEC.ENCAPSULATION_MODE, EncapsulationMode.TRANSPORT)),
            "encapsulation mode TRANSPORT; only tunnel mode is supported",
        ),
        (_cbc_attrs(key_length=100), _unsupported_esp(100, 5, " (AES-CBC has no 100-bit keys)")),
        (_cbc_attrs(auth=AuthAlgorithm.KPDK), _unsupported_esp(128, 4)),
        (_cbc_attrs(Attribute.tv(IPSEC.SA_DIRECTION, 0)), "SA Direction must not be 0 (reserved)"),
        (_cbc_attrs(Attribute.tv(IPSEC.SA_DIRECTION, 9)), "SA Direction 9 is not supported"),
        (_cbc_attrs(Attribute.tv(IPSEC.SA_LIFE_TYPE, 2)), "SA Life Type KILOBYTES has no SA Life Duration"),
        (
            _cbc_attrs(Attribute.tv(IPSEC.SA_LIFE_TYPE, 1), Attribute.lifetime(IPSEC.SA_LIFE_DURATION, 60)),
            "two SECONDS lifetimes",
        ),
        (_cbc_attrs(Attribute.lifetime(IPSEC.SA_LIFE_DURATION, 60)), "Duration without a preceding SA Life Type"),
        (
            (Attribute.tv(IPSEC.SA_LIFE_TYPE, 1), Attribute.lifetime(IPSEC.SA_LIFE_DURATION, 0), *_cbc_attrs()[2:]),
            "lifetime of 0 s is outside 10..2592000 s",
        ),
    ],
)
def test_tek_attributes_a_member_must_abort_on(attributes: tuple[Attribute, ...], reason: str) -> None:
    sa = group_sa(kek=False, gap=False).to_wire()
    with pytest.raises(PolicyError) as caught:
        SaPolicy.from_wire(with_tek_attributes(sa, 0, attributes))
    # Wire-level problems name the SA TEK, model invariants the TEK; both give SPI and selector.
    prefix = caught.value.reason.split(": ", 1)[0]
    assert prefix in ("SA TEK 00001001 (10.1.0.0/16 -> 10.2.0.0/16)", "TEK 00001001 (10.1.0.0/16 -> 10.2.0.0/16)")
    assert caught.value.reason.endswith(reason)


def test_volume_lifetimes_are_kept() -> None:
    sa = group_sa(kek=False, gap=False).to_wire()
    kb = (Attribute.tv(IPSEC.SA_LIFE_TYPE, 2), Attribute.lifetime(IPSEC.SA_LIFE_DURATION, 1 << 30))
    sa = with_tek_attributes(with_tek_attributes(sa, 0, _cbc_attrs(*kb)), 1, _cbc_attrs(*kb))
    assert SaPolicy.from_wire(sa).teks[0].lifetime_kilobytes == 1 << 30


def _sat(src: TrafficId, dst: TrafficId, transform: int = 12, spi: bytes = CBC_SPI, protocol: int = 1) -> SaTek:
    return SaTek(protocol, IpsecTek(0, src, dst, transform, spi, _cbc_attrs()))


V6 = TrafficId.of(ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    "sat, reason",
    [
        (_sat(NET10, NET10, 2, protocol=GdoiProtocol.IPSEC_AH), "SA TEK protocol IPSEC_AH is not supported (only ESP)"),
        (SaTek(GdoiProtocol.IEC_61850, b"\x00"), "SA TEK protocol IEC_61850 is not supported (only ESP)"),
        (
            _sat(TrafficId(IdType.FQDN, b"ks.example"), NET10),
            "SA TEK 00001001 source is FQDN; only addresses, subnets and ranges are usable",
        ),
        (_sat(NET10, V6), "selector 10.0.0.0/8 -> 2001:db8::/32 mixes IPv4 and IPv6"),
        (
            _sat(replace(NET10, port=80), NET10),
            "selector 10.0.0.0/8 port 80 -> 10.0.0.0/8 has a port but no IP protocol",
        ),
        (_sat(NET10, NET10, 11), "SA TEK 00001001 (10.0.0.0/8 -> 10.0.0.0/8): ESP transform NULL is not supported"),
        (
            _sat(NET10, NET10, spi=b"\0\0\0\xff"),
            "TEK 000000ff (10.0.0.0/8 -> 10.0.0.0/8): SPIs 0-255 are reserved (RFC 4303 §2.1)",
        ),
    ],
)
def test_unusable_sa_teks(sat: SaTek, reason: str) -> None:
    with pytest.raises(PolicyError) as caught:
        TekPolicy.from_wire(sat)
    assert caught.value.reason == reason


def test_a_policy_needs_a_kek_or_a_tek_and_a_group_id_that_fits() -> None:
    with pytest.raises(PolicyError, match="neither a KEK nor a TEK"):
        SaPolicy(())
    with pytest.raises(PolicyError, match="group ID 4294967296 does not fit 4 octets"):
        GroupPolicy(1 << 32, SaPolicy(kek=kek_policy()), kek_keys=kek_keys())


def test_an_ack_free_kek_only_group_round_trips() -> None:
    policy = GroupPolicy(7, SaPolicy(kek=kek_policy(ack=None, sig_key_bits=None)), kek_keys=kek_keys())
    assert GroupPolicy.from_wire(7, *through_the_wire(policy)) == policy


def test_reasons_never_contain_key_material() -> None:
    policy = group_policy()
    key = policy.tek_keys[0].material.encryption
    error = refused(policy.sa.to_wire(), _kd_with(policy, CBC_SPI, (Attribute.tlv(ALGORITHM_KEY, key + b"x"),)))
    assert key.hex() not in error.reason and key.hex() not in repr(policy)
    assert keys_for(CBC, CBC_SPI.hex()) == EspKeys(key, policy.tek_keys[0].material.integrity)
