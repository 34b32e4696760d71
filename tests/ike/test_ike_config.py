"""Suites by name and as transform attributes, pre-shared key lookup, retransmission policy."""

from __future__ import annotations

import pytest

from groupvpn.ike import Identity, PreSharedKey, ProposalError, PskError, PskStore, RetransmitPolicy, Suite
from groupvpn.ike.mainmode import NoProposalChosen, accept_choice, choose, offer
from groupvpn.ike.proposals import TransformRejected
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.isakmp import SecurityAssociation
from groupvpn.wire.numbers import (
    DOI,
    AuthMethod,
    DhGroup,
    EncryptionAlgorithm,
    HashAlgorithm,
    IkeAttribute,
    LifeType,
    Situation,
)

A = IkeAttribute


@pytest.mark.parametrize(
    "name, fields, key_size",
    [
        ("3des-sha1-modp1024", (EncryptionAlgorithm.TRIPLE_DES_CBC, None, HashAlgorithm.SHA1, DhGroup.MODP_1024), 24),
        ("aes256-sha512-ecp521", (EncryptionAlgorithm.AES_CBC, 256, HashAlgorithm.SHA2_512, DhGroup.ECP_521), 32),
        ("DES-MD5-MODP768", (EncryptionAlgorithm.DES_CBC, None, HashAlgorithm.MD5, DhGroup.MODP_768), 8),
    ],
)
def test_suite_names_and_attributes_round_trip(name: str, fields: tuple, key_size: int) -> None:
    suite = Suite.parse(name, lifetime=3600)
    assert (suite.encryption, suite.key_length, suite.hash, suite.group) == fields
    assert suite.name == name.lower() and suite.key_size == key_size
    assert Suite.from_attributes(suite.attributes()) == suite


def test_attribute_order_matches_the_digest_example() -> None:
    encoded = b"".join(a.encode() for a in Suite.parse("aes128-sha256-modp2048").attributes())
    assert encoded == bytes.fromhex("80010007800e008080020004800300018004000e800b0001000c000400015180")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("aes128-sha256", "is not cipher-hash-group"),
        ("aes100-sha256-modp2048", "unknown cipher 'aes100'"),
        ("aes128-tiger-modp2048", "unknown hash 'tiger'"),
        ("aes128-sha256-ec2n155", "unknown group 'ec2n155'"),
    ],
)
def test_unknown_proposal_names_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ProposalError, match=problem):
        Suite.parse(text)


def _attrs(**changes: int | None) -> list[Attribute]:
    values: dict[IkeAttribute, int | None] = {
        A.ENCRYPTION_ALGORITHM: EncryptionAlgorithm.AES_CBC,
        A.KEY_LENGTH: 128,
        A.HASH_ALGORITHM: HashAlgorithm.SHA1,
        A.AUTHENTICATION_METHOD: AuthMethod.PRE_SHARED_KEY,
        A.GROUP_DESCRIPTION: DhGroup.MODP_2048,
    }
    values.update({A[k]: v for k, v in changes.items()})
    return [Attribute.tv(k, v) for k, v in values.items() if v is not None]


@pytest.mark.parametrize(
    "attrs, problem",
    [
        (_attrs(AUTHENTICATION_METHOD=AuthMethod.RSA_SIGNATURES), "authentication method RSA_SIGNATURES is not supported"),
        (_attrs(KEY_LENGTH=None), "AES_CBC without a key length"),
        (_attrs(KEY_LENGTH=160), "AES_CBC key length 160"),
        (_attrs(ENCRYPTION_ALGORITHM=EncryptionAlgorithm.BLOWFISH_CBC), "encryption algorithm BLOWFISH_CBC is not supported"),
        (_attrs(HASH_ALGORITHM=HashAlgorithm.TIGER), "hash algorithm TIGER is not supported"),
        (_attrs(GROUP_DESCRIPTION=DhGroup.EC2N_155), "Diffie-Hellman group EC2N_155 is not supported"),
        (_attrs(GROUP_DESCRIPTION=99), "unknown Diffie-Hellman group 99"),
        (_attrs(HASH_ALGORITHM=None), "HASH_ALGORITHM is missing"),
        (_attrs() + [Attribute.tv(A.HASH_ALGORITHM, 2)], "HASH_ALGORITHM appears twice"),
        (_attrs() + [Attribute.tv(A.FIELD_SIZE, 2)], "FIELD_SIZE is not supported"),
        (_attrs() + [Attribute.lifetime(A.LIFE_DURATION, 5)], "life duration without a preceding life type"),
        (
            _attrs(ENCRYPTION_ALGORITHM=EncryptionAlgorithm.TRIPLE_DES_CBC, KEY_LENGTH=128),
            "key length 128 given for fixed-length TRIPLE_DES_CBC",
        ),
    ],
)
def test_unacceptable_transforms_say_why(attrs: list[Attribute], problem: str) -> None:
    with pytest.raises(TransformRejected, match=problem):
        Suite.from_attributes(attrs)


def test_lifetimes_in_transforms() -> None:
    assert Suite.from_attributes(_attrs()).lifetime == 28800  # absent: RFC 2407 §4.5 default
    kilobytes = _attrs() + [Attribute.tv(A.LIFE_TYPE, LifeType.KILOBYTES), Attribute.lifetime(A.LIFE_DURATION, 1000)]
    assert Suite.from_attributes(kilobytes).lifetime == 28800
    both = kilobytes + [Attribute.tv(A.LIFE_TYPE, LifeType.SECONDS), Attribute.number(A.LIFE_DURATION, 600)]
    assert Suite.from_attributes(both).lifetime == 600


def test_offer_uses_the_situation_of_its_doi() -> None:
    suites = [Suite.parse("aes128-sha1-modp2048"), Suite.parse("3des-sha1-modp1024")]
    ipsec = offer(suites, DOI.IPSEC)
    gdoi = offer(suites, DOI.GDOI)
    assert (ipsec.doi, ipsec.situation) == (DOI.IPSEC, Situation.SIT_IDENTITY_ONLY)
    assert (gdoi.doi, gdoi.situation) == (DOI.GDOI, Situation.NONE)
    assert [t.number for t in gdoi.proposals[0].transforms] == [1, 2]
    assert SecurityAssociation.decode_body(gdoi.encode_body(), 0) == gdoi


def test_choice_rules() -> None:
    offered = [Suite.parse("aes128-sha1-modp2048"), Suite.parse("3des-sha1-modp1024")]
    reply, suite = choose(offer(offered, DOI.GDOI), [Suite.parse("3des-sha1-modp1024", lifetime=100)])
    assert suite.name == "3des-sha1-modp1024" and suite.lifetime == 100
    assert accept_choice(offered, reply).name == "3des-sha1-modp1024"
    with pytest.raises(NoProposalChosen, match="responder chose 3des-sha1-modp1024, which was not offered"):
        accept_choice(offered[:1], reply)
    with pytest.raises(NoProposalChosen, match=r"responder returned 2 transforms in 1 proposals"):
        accept_choice(offered, offer(offered, DOI.GDOI))


def test_psk_lookup_order() -> None:
    a, b, c = (PreSharedKey(bytes([65 + i]) * 20) for i in range(3))
    peer_id = Identity.fqdn("ks.example")
    store = PskStore(by_address={"198.18.0.2": a}, by_identity={peer_id: b}, default=c)
    assert store.for_initiator("198.18.0.2") is a
    assert store.for_initiator("198.18.0.2", peer_id) is b
    assert store.for_initiator("198.18.0.3") is c
    assert [x.key for x in store.candidates("198.18.0.2")] == [a]
    assert [(x.key, x.identity) for x in store.candidates("198.18.0.3")] == [(b, peer_id), (c, None)]
    assert PskStore().candidates("198.18.0.3") == ()


def test_psk_configuration_errors() -> None:
    assert PreSharedKey.from_text("  twenty-characters-long-key \n").secret == b"twenty-characters-long-key"
    with pytest.raises(PskError, match="exactly one line"):
        PreSharedKey.from_text("first-line-of-twenty\nsecond-line-of-twenty")
    with pytest.raises(PskError, match="at least 20"):
        PreSharedKey.from_text("short")
    with pytest.raises(PskError, match="not an IP address"):
        PskStore(by_address={"ks.example": PreSharedKey(b"k" * 20)})


def test_retransmit_policy_backoff_is_capped() -> None:
    policy = RetransmitPolicy(initial=0.5, factor=3.0, maximum=4.0, attempts=6)
    assert [policy.wait_after(k) for k in range(1, 7)] == [0.5, 1.5, 4.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError):
        RetransmitPolicy(attempts=0)
