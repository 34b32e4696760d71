"""Policies for the GDOI tests: a reference group, builders, and hypothesis strategies."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from hypothesis import strategies as st

from groupvpn.crypto.gdoi import Kek
from groupvpn.crypto.sig import SigningKey
from groupvpn.crypto.suites import SUITES, EspKeys, EspSuite, esp_suite
from groupvpn.gdoi import (
    AckRequest,
    Endpoint,
    GroupAssociatedPolicy,
    GroupPolicy,
    KekKeys,
    KekPolicy,
    SaPolicy,
    SenderIds,
    TekKeys,
    TekPolicy,
    TrafficSelector,
)
from groupvpn.wire.ident import AddressRange
from groupvpn.wire.numbers import (
    AddressPreservation,
    AuthAlgorithm,
    EspTransform,
    KekAckType,
    KekAlgorithm,
    SaDirection,
    SigAlgorithm,
    SigHashAlgorithm,
)

GROUP = 1234
KEK_SPI = bytes.fromhex("00112233445566778899aabbccddeeff")
CBC_SPI = bytes.fromhex("00001001")
GCM_SPI = bytes.fromhex("00002002")
CBC = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256)
GCM = esp_suite(EspTransform.AES_GCM_16, 256)
KS = Endpoint(ip_address("198.18.0.2"), 848)
REKEY = Endpoint(ip_address("239.192.0.1"), 848)
LAN_A = Endpoint(ip_network("10.1.0.0/16"))
LAN_B = Endpoint(ip_network("10.2.0.0/16"))


@cache
def signing_key(algorithm: SigAlgorithm = SigAlgorithm.ECDSA_256) -> SigningKey:
    return SigningKey.generate(algorithm)


def octets(seed: str, size: int) -> bytes:
    """Deterministic key-like octets."""
    return hashlib.shake_256(seed.encode()).digest(size)


def keys_for(suite: EspSuite, seed: str) -> EspKeys:
    return EspKeys(
        octets(seed + " encryption", suite.encryption_key_size), octets(seed + " integrity", suite.integrity_key_size)
    )


def kek_policy(**changes: object) -> KekPolicy:
    fields: dict[str, object] = {
        "spi": KEK_SPI,
        "algorithm": KekAlgorithm.AES,
        "key_bits": 128,
        "lifetime": 86400,
        "sig_algorithm": SigAlgorithm.ECDSA_256,
        "sig_hash": None,
        "source": KS,
        "destination": REKEY,
        "sig_key_bits": 256,
        "ack": AckRequest(KekAckType.KEK_SHA256),
    }
    fields.update(changes)
    return KekPolicy(**fields)  # type: ignore[arg-type]


def kek_keys(policy: KekPolicy | None = None) -> KekKeys:
    policy = policy or kek_policy()
    kek = Kek.from_material(policy.algorithm, octets("kek", 16 + 16), policy.key_bits)
    return KekKeys(kek, signing_key(policy.sig_algorithm).public)


def group_sa(*, kek: bool = True, gap: bool = True, deny: bool = False) -> SaPolicy:
    """A KEK, a paired AES-CBC/HMAC-SHA-256 TEK (LAN A <-> LAN B), an AES-GCM TEK for IPv6 UDP, a GAP."""
    v6 = TrafficSelector(
        17, Endpoint(ip_network("2001:db8:1::/48"), 5000), Endpoint(ip_network("2001:db8:2::/48"), 5000)
    )
    forward = TrafficSelector(0, LAN_A, LAN_B)
    teks = [
        TekPolicy(CBC_SPI, forward, CBC, 3600),
        TekPolicy(CBC_SPI, forward.mirrored(), CBC, 3600),
        TekPolicy(GCM_SPI, v6, GCM, 1800, direction=SaDirection.SYMMETRIC),
    ]
    if deny:
        teks.append(TekPolicy.deny(TrafficSelector(17, Endpoint(ip_network("10.1.0.0/16"), 848), LAN_B)))
    return SaPolicy(
        tuple(teks),
        kek_policy() if kek else None,
        GroupAssociatedPolicy(activation_delay=5, deactivation_delay=30, anti_replay_window=10) if gap else None,
    )


def group_policy(
    group_id: int = GROUP, *, sa: SaPolicy | None = None, sender_ids: SenderIds | None = None
) -> GroupPolicy:
    sa = sa or group_sa()
    suites = {t.spi: t.suite for t in sa.permits}
    tek_keys = tuple(TekKeys(spi, keys_for(suite, spi.hex())) for spi, suite in suites.items() if suite)
    return GroupPolicy(group_id, sa, tek_keys, None if sa.kek is None else kek_keys(sa.kek), sender_ids)


# -- hypothesis strategies -------------------------------------------------------------


def _address(version: int) -> st.SearchStrategy[object]:
    bits = 32 if version == 4 else 128
    make, net = (IPv4Address, IPv4Network) if version == 4 else (IPv6Address, IPv6Network)
    raw = st.integers(0, (1 << bits) - 1)
    host = raw.map(make)
    network = st.tuples(raw, st.integers(0, bits)).map(lambda p: net((p[0], p[1]), strict=False))
    span = st.tuples(raw, raw).map(lambda p: AddressRange(make(min(p)), make(max(p))))
    return st.one_of(host, network, span)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    version = draw(st.sampled_from([4, 6]))
    protocol = draw(st.sampled_from([0, 6, 17, 47, 132]))
    port = st.integers(0, 0xFFFF) if protocol else st.just(0)
    return TrafficSelector(
        protocol,
        Endpoint(draw(_address(version)), draw(port)),  # type: ignore[arg-type]
        Endpoint(draw(_address(version)), draw(port)),  # type: ignore[arg-type]
    )


lifetimes = st.integers(10, 30 * 86400)


@st.composite
def teks_and_keys(draw: st.DrawFn) -> tuple[list[TekPolicy], list[TekKeys]]:
    spis = draw(st.lists(st.integers(256, 0xFFFFFFFF), min_size=1, max_size=4, unique=True))
    teks: list[TekPolicy] = []
    keys: list[TekKeys] = []
    for number in spis:
        spi = number.to_bytes(4, "big")
        suite = draw(st.sampled_from(list(SUITES.values())))
        selector = draw(selectors())
        tek = TekPolicy(
            spi,
            selector,
            suite,
            draw(lifetimes),
            draw(st.none() | st.integers(1, 1 << 40)),
            draw(st.sampled_from(list(AddressPreservation)[1:])),
            draw(st.sampled_from(list(SaDirection)[1:])),
        )
        teks.append(tek)
        if draw(st.booleans()):
            teks.append(replace(tek, selector=selector.mirrored()))
        material = EspKeys(
            draw(st.binary(min_size=suite.encryption_key_size, max_size=suite.encryption_key_size)),
            draw(st.binary(min_size=suite.integrity_key_size, max_size=suite.integrity_key_size)),
        )
        keys.append(TekKeys(spi, material))
    teks += [TekPolicy.deny(s) for s in draw(st.lists(selectors(), max_size=2))]
    return list(draw(st.permutations(teks))), list(draw(st.permutations(keys)))


_KEK_CIPHERS = {KekAlgorithm.DES: (8, 8, [None, 64]), KekAlgorithm.TRIPLE_DES: (8, 24, [None, 192])}
_AES_SIZES = {128: 16, 192: 24, 256: 32}


@st.composite
def keks(draw: st.DrawFn) -> tuple[KekPolicy, KekKeys]:
    algorithm = draw(st.sampled_from(list(KekAlgorithm)))
    if algorithm is KekAlgorithm.AES:
        bits = draw(st.sampled_from([128, 192, 256]))
        block, key_size, key_bits = 16, _AES_SIZES[bits], draw(st.sampled_from([None, bits]))
    else:
        block, key_size, choices = _KEK_CIPHERS[algorithm]
        key_bits = draw(st.sampled_from(choices))
    sig = draw(st.sampled_from([SigAlgorithm.RSA, SigAlgorithm.ECDSA_256]))
    public = signing_key(sig).public
    sig_hash = (
        draw(st.sampled_from(list(SigHashAlgorithm)[1:]))
        if sig is SigAlgorithm.RSA
        else draw(st.sampled_from([None, SigHashAlgorithm.SHA256]))
    )
    ack = draw(st.none() | st.builds(AckRequest, st.sampled_from(list(KekAckType)), st.booleans()))
    version = draw(st.sampled_from([4, 6]))
    endpoint = st.builds(Endpoint, _address(version), st.integers(0, 0xFFFF))
    policy = KekPolicy(
        draw(st.binary(min_size=16, max_size=16)),
        algorithm,
        key_bits,
        draw(lifetimes),
        sig,
        sig_hash,
        draw(endpoint),
        draw(endpoint),
        draw(st.sampled_from([None, public.key_bits])),
        ack,
    )
    material = draw(st.binary(min_size=block + key_size, max_size=block + key_size))
    return policy, KekKeys(Kek.from_material(algorithm, material, key_bits), public)


gaps = st.builds(
    GroupAssociatedPolicy,
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFF),
)


@st.composite
def group_policies(draw: st.DrawFn) -> GroupPolicy:
    teks, tek_keys = draw(teks_and_keys())
    kek = draw(st.none() | keks())
    sa = SaPolicy(tuple(teks), None if kek is None else kek[0], draw(st.none() | gaps))
    sender_ids = None
    if sa.counter_mode and draw(st.booleans()):
        bits = draw(st.sampled_from([8, 12, 16]))
        values = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=3, unique=True))
        sender_ids = SenderIds(bits, tuple(values))
    return GroupPolicy(
        draw(st.integers(0, 0xFFFFFFFF)), sa, tuple(tek_keys), None if kek is None else kek[1], sender_ids
    )
