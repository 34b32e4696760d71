"""GroupKeys over a real SQLite store: current keys, restart, rekey schedule, idempotence, policy."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from groupvpn.crypto.errors import InvalidKey
from groupvpn.crypto.sig import SigningKey
from groupvpn.crypto.suites import esp_suite
from groupvpn.gdoi import (
    AckRequest,
    Endpoint,
    GroupAssociatedPolicy,
    GroupPolicy,
    TrafficSelector,
)
from groupvpn.ks.keys import GroupConfig, GroupKeys, KekConfig, KeySet, NoFreeSpi, TekConfig
from groupvpn.ks.store import KeyState, KeyStore, StoreError
from groupvpn.wire.numbers import (
    AuthAlgorithm,
    EspTransform,
    KekAckType,
    SigAlgorithm,
    SigHashAlgorithm,
)

T0 = 1_700_000_000.0
KS = Endpoint(ip_address("198.18.0.1"), 848)
REKEY = Endpoint(ip_address("198.18.0.255"), 848)
LAN_A = Endpoint(ip_network("198.18.10.0/24"))
LAN_B = Endpoint(ip_network("198.18.20.0/24"))
A_TO_B = TrafficSelector(0, LAN_A, LAN_B)
ANY = TrafficSelector(0, Endpoint(ip_network("0.0.0.0/0")), Endpoint(ip_network("0.0.0.0/0")))
CBC = esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256)
GCM = esp_suite(EspTransform.AES_GCM_16, 128)
KEK = KekConfig(
    lifetime=1000,
    source=KS,
    destination=REKEY,
    sig_algorithm=SigAlgorithm.ECDSA_256,
    sig_hash=None,
    ack=AckRequest(KekAckType.KEK_SHA256),
)
SA1 = TekConfig("sa1", CBC, lifetime=600, selectors=(A_TO_B, A_TO_B.mirrored()))
SA2 = TekConfig("sa2", GCM, lifetime=800, selectors=(ANY,))
GAP = GroupAssociatedPolicy(activation_delay=5, deactivation_delay=30, anti_replay_window=10)
DENY = TrafficSelector(17, Endpoint(ip_network("198.18.10.0/24"), 53), Endpoint(ip_network("0.0.0.0/0")))
CONFIG = GroupConfig(group_id=42, kek=KEK, teks=(SA1, SA2), gap=GAP, deny=(DENY,))


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "ks.db"


@pytest.fixture
def store(db_path):
    with KeyStore(db_path) as s:
        yield s


def spis(keys: KeySet) -> tuple[bytes | None, tuple[int, ...]]:
    return (keys.kek.spi if keys.kek else None, tuple(t.spi for t in keys.teks))


def test_ensure_current_creates_once_and_restart_serves_the_same_keys(db_path):
    with KeyStore(db_path) as store:
        first = GroupKeys(store, CONFIG).ensure_current(T0)
        assert first.kek is not None and first.kek.kek.algorithm == KEK.algorithm
        assert [t.name for t in first.teks] == ["sa1", "sa2"]
        assert [t.suite for t in first.teks] == [SA1.suite, SA2.suite]
        assert {t.times.state for t in first.teks} == {KeyState.ACTIVE}
        assert first.kek.times.expires_at == T0 + 1000
        again = GroupKeys(store, CONFIG).ensure_current(T0 + 10)
        assert again == first
        pem = store.signing_key_pem(42)
        assert [store.next_push_seq(first.kek.spi) for _ in range(2)] == [1, 2]
    with KeyStore(db_path) as reopened:
        keys = GroupKeys(reopened, CONFIG)
        after = keys.ensure_current(T0 + 20)
        assert after == first  # same SPIs, key material and times
        assert keys.signing_key(T0 + 20).to_pem() == pem
        assert reopened.next_push_seq(first.kek.spi) == 3
        assert len(reopened.keks(42)) == 1 and len(reopened.teks(42)) == 2


def test_groups_share_a_store_without_sharing_keys(store):
    other = replace(CONFIG, group_id=7, teks=(SA1,))
    a = GroupKeys(store, CONFIG).ensure_current(T0)
    b = GroupKeys(store, other).ensure_current(T0)
    assert a.kek.spi != b.kek.spi and a.teks[0].spi != b.teks[0].spi
    assert store.signing_key_pem(42) != store.signing_key_pem(7)


def test_rekey_time_is_when_ten_percent_of_the_first_lifetime_remains(store):
    keys = GroupKeys(store, CONFIG)
    assert keys.next_rekey_time() is None
    keys.ensure_current(T0)
    assert keys.next_rekey_time() == T0 + 540  # sa1: 600 s, 60 s left
    quarter = GroupKeys(store, replace(CONFIG, rekey_fraction=0.25))
    assert quarter.next_rekey_time() == T0 + 450


def test_prepare_rekey_generates_only_due_slots_and_is_idempotent(db_path):
    with KeyStore(db_path) as store:
        keys = GroupKeys(store, CONFIG)
        current = keys.ensure_current(T0)
        assert keys.prepare_rekey(T0 + 539) == KeySet(None, ())
        pending = keys.prepare_rekey(T0 + 540)
        assert pending.kek is None and [t.name for t in pending.teks] == ["sa1"]
        assert pending.teks[0].spi != current.teks[0].spi
        assert pending.teks[0].times.state is KeyState.PENDING
        assert keys.prepare_rekey(T0 + 541) == pending
    with KeyStore(db_path) as store:  # crashed before pushing: the same keys go out
        keys = GroupKeys(store, CONFIG)
        assert keys.prepare_rekey(T0 + 600 - 1) == pending
        assert keys.ensure_current(T0 + 599) == current  # pending is not current yet
        # Past sa1's expiry its pending key is promoted (it may be at the members already);
        # sa2 (800 s) is due now and gets its own pending key.
        later = keys.prepare_rekey(T0 + 720)
        assert [t.name for t in later.teks] == ["sa2"]
        assert keys.ensure_current(T0 + 720).teks[0].spi == pending.teks[0].spi


def test_activate_rolls_over_and_moves_the_schedule(store):
    keys = GroupKeys(store, CONFIG)
    old = keys.ensure_current(T0)
    pending = keys.prepare_rekey(T0 + 540)
    keys.activate(pending, T0 + 550)
    now = keys.ensure_current(T0 + 551)
    assert spis(now) == (old.kek.spi, (pending.teks[0].spi, old.teks[1].spi))
    assert now.teks[0].times.activated_at == T0 + 550
    assert keys.prepare_rekey(T0 + 551) == KeySet(None, ())
    retired = store.teks(42, KeyState.RETIRED)
    assert [t.spi for t in retired] == [old.teks[0].spi]
    assert keys.next_rekey_time() == T0 + 720  # sa2 is next now; sa1 not before T0 + 550 + 540


def test_forced_rekey_replaces_every_slot(store):
    keys = GroupKeys(store, CONFIG)
    old = keys.ensure_current(T0)
    pending = keys.prepare_rekey(T0 + 1, force=True)
    assert pending.kek is not None and len(pending.teks) == 2
    assert set(spis(pending)[1]).isdisjoint(spis(old)[1]) and pending.kek.spi != old.kek.spi
    keys.activate(KeySet(pending.kek, ()), T0 + 2)  # KEK first, TEKs in a second push
    assert keys.ensure_current(T0 + 3).kek == store.keks(42, KeyState.ACTIVE)[0]
    assert keys.prepare_rekey(T0 + 3).teks == pending.teks
    assert store.last_push_seq(pending.kek.spi) == 0  # a new KEK counts from 1 again


def test_restart_after_expiry_promotes_a_pending_key_or_makes_a_fresh_one(store):
    keys = GroupKeys(store, CONFIG)
    old = keys.ensure_current(T0)
    pending = keys.prepare_rekey(T0 + 540)
    after_outage = keys.ensure_current(T0 + 5000)
    assert after_outage.teks[0].spi == pending.teks[0].spi  # may already be at the members
    assert after_outage.teks[0].times.activated_at == T0 + 5000
    assert after_outage.teks[1].spi != old.teks[1].spi
    assert after_outage.kek.spi != old.kek.spi
    assert len(store.keks(42, KeyState.RETIRED)) == 1


def test_spis_stay_unique_over_thousands_of_generations(store):
    """A small SPI space forces collisions and reserved draws; none may get through."""
    rnd = random.Random(6407)

    def rng(size: int) -> bytes:
        value = rnd.randrange(3000)  # 0-255 are reserved TEK SPIs, so they are drawn often
        return (b"\x01" * 8 + value.to_bytes(8, "big")) if size == 16 else value.to_bytes(4, "big")

    config = replace(CONFIG, group_id=9, kek=replace(KEK, lifetime=700))
    keys = GroupKeys(store, config, rng)
    issued = [spis(keys.ensure_current(T0))]
    for i in range(1, 1001):
        now = T0 + 500 * i  # current keys live on; the ones retired last round have expired
        pending = keys.prepare_rekey(now, force=True)
        keys.activate(pending, now)
        issued.append(spis(pending))
    kek_spis = [kek for kek, _ in issued]
    tek_spis = [spi for _, teks in issued for spi in teks]
    assert len(tek_spis) == 2002 and len(set(tek_spis)) == 2002 and min(tek_spis) >= 256
    assert len(set(kek_spis)) == 1001 and all(any(s[8:]) for s in kek_spis)
    assert len(store.teks(9)) == 4  # old keys were deleted, their SPIs stay issued
    assert all(store.spi_issued("tek", s.to_bytes(4, "big")) for s in tek_spis)
    # 2002 of the 2744 legal values are taken; draw until none is left.
    with pytest.raises(NoFreeSpi):
        for i in range(1001, 3000):
            keys.activate(keys.prepare_rekey(T0 + 500 * i, force=True), T0 + 500 * i)


def test_stored_signing_key_must_fit_the_configured_scheme(store):
    store.create_group(42, SigningKey.generate(SigAlgorithm.ECDSA_384).to_pem(), T0)
    with pytest.raises(InvalidKey, match="ECDSA_256 needs a secp256r1 key"):
        GroupKeys(store, CONFIG).ensure_current(T0)
    assert store.keks(42) == []


def test_rsa_signing_key_by_default(store):
    rsa = KekConfig(lifetime=3600, source=KS, destination=REKEY)
    keys = GroupKeys(store, GroupConfig(1, rsa, (SA1,)))
    keys.ensure_current(T0)
    assert keys.signing_key(T0).public.key_bits == 2048


def test_current_policy_carries_the_current_keys_and_round_trips(store):
    keys = GroupKeys(store, CONFIG)
    current = keys.ensure_current(T0)
    policy = keys.current_policy(T0 + 100)
    assert policy.kek.spi == current.kek.spi and policy.kek_keys.kek == current.kek.kek
    assert policy.kek.lifetime == 900  # what remains, so members expire it when we do
    assert policy.kek.ack == KEK.ack and (policy.kek.source, policy.kek.destination) == (KS, REKEY)
    assert policy.kek_keys.verifying_key.spki == keys.signing_key(T0).public.spki
    assert policy.kek.sig_key_bits == 256 and policy.gap == GAP
    sa1, sa2 = (t.spi.to_bytes(4, "big") for t in current.teks)
    assert [(t.spi, t.selector, t.lifetime) for t in policy.teks if t.permits] == [
        (sa1, A_TO_B, 500),
        (sa1, A_TO_B.mirrored(), 500),
        (sa2, ANY, 700),
    ]
    assert [t.selector for t in policy.teks if not t.permits] == [DENY]
    assert [(k.spi, k.material) for k in policy.tek_keys] == [
        (sa1, current.teks[0].keys),
        (sa2, current.teks[1].keys),
    ]
    sa, kd = policy.to_wire()
    assert GroupPolicy.from_wire(42, sa, kd).to_wire() == (sa, kd)


def test_lifetimes_never_go_below_the_policy_minimum(store):
    keys = GroupKeys(store, CONFIG)
    keys.ensure_current(T0)
    assert keys.current_policy(T0 + 599.5).teks[0].lifetime == 10


def test_rekey_policy_carries_only_the_pending_keys(store):
    keys = GroupKeys(store, CONFIG)
    keys.ensure_current(T0)
    pending = keys.prepare_rekey(T0 + 100, force=True)
    kek_only = keys.policy(KeySet(pending.kek, ()), T0 + 100)
    assert kek_only.teks == () and kek_only.tek_keys == ()
    assert kek_only.kek.spi == pending.kek.spi and kek_only.kek.lifetime == 1000  # not yet started
    teks_only = keys.policy(KeySet(None, pending.teks), T0 + 100)
    assert teks_only.kek is None and teks_only.kek_keys is None
    assert {t.spi for t in teks_only.teks if t.permits} == {t.spi.to_bytes(4, "big") for t in pending.teks}
    assert [t.selector for t in teks_only.teks if not t.permits] == [DENY]


def test_changed_configuration_makes_the_slot_due_at_once(db_path):
    with KeyStore(db_path) as store:
        old = GroupKeys(store, CONFIG).ensure_current(T0)
    sha1 = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1)
    aes128 = replace(CONFIG, teks=(replace(SA1, suite=sha1), SA2))
    with KeyStore(db_path) as store:
        keys = GroupKeys(store, aes128)
        assert keys.next_rekey_time() == T0
        assert keys.current_policy(T0 + 1).teks[0].suite == CBC  # served as it is until replaced
        pending = keys.prepare_rekey(T0 + 1)
        assert [t.name for t in pending.teks] == ["sa1"] and pending.teks[0].suite == aes128.teks[0].suite
        assert pending.kek is None
    bigger_kek = replace(CONFIG, kek=replace(KEK, key_bits=256))
    with KeyStore(db_path) as store:
        keys = GroupKeys(store, bigger_kek)
        assert keys.next_rekey_time() == T0
        assert len(keys.prepare_rekey(T0 + 2).kek.kek.key) == 32
        assert keys.ensure_current(T0 + 2).kek.spi == old.kek.spi


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda: replace(CONFIG, kek=replace(KEK, lifetime=5)), "lifetime of 5 s"),
        (lambda: replace(CONFIG, kek=replace(KEK, key_bits=100)), "no 100-bit keys"),
        (lambda: replace(CONFIG, kek=replace(KEK, key_bits=None)), "needs a key length"),
        (lambda: replace(CONFIG, kek=replace(KEK, algorithm=7)), "KEK algorithm 7"),
        (
            lambda: replace(
                CONFIG, kek=replace(KEK, sig_algorithm=SigAlgorithm.ECDSA_384, sig_hash=SigHashAlgorithm.SHA256)
            ),
            "implies SIG_HASH SHA384",
        ),
        (
            lambda: replace(CONFIG, kek=replace(KEK, sig_algorithm=SigAlgorithm.RSA, sig_hash=SigHashAlgorithm.MD5)),
            "SIG_HASH_ALGORITHM 1",
        ),
        (lambda: replace(CONFIG, teks=(replace(SA1, lifetime=0),)), "lifetime of 0 s"),
        (lambda: replace(CONFIG, teks=(replace(SA1, selectors=()),)), "at least one selector"),
        (lambda: replace(CONFIG, teks=(replace(SA1, selectors=(A_TO_B, ANY)),)), "unpaired policies"),
        (lambda: replace(CONFIG, group_id=1 << 32), "does not fit 4 octets"),
        (lambda: replace(CONFIG, teks=(SA1, replace(SA2, name="sa1"))), "unique"),
        (lambda: replace(CONFIG, rekey_fraction=1.0), "rekey fraction"),
    ],
)
def test_unusable_configuration_is_refused_up_front(make, problem):
    with pytest.raises(ValueError, match=problem):
        make()


def test_forcing_the_kek_leaves_the_teks_and_a_pending_key_is_due_at_once(store):
    keys = GroupKeys(store, CONFIG)
    keys.ensure_current(T0)
    assert keys.pending() == KeySet(None, ())
    pending = keys.prepare_rekey(T0 + 7, force_kek=True)
    assert pending.kek is not None and pending.teks == ()
    assert keys.pending() == pending
    assert keys.next_rekey_time() == T0 + 7  # generated and not pushed yet: due now


def test_only_active_teks_of_sas_that_left_the_configuration_are_retired(store):
    keys = GroupKeys(store, CONFIG)
    current = keys.ensure_current(T0)
    assert keys.retire_unconfigured() == ()
    keys.config = replace(CONFIG, teks=(SA2,))
    (gone,) = keys.retire_unconfigured()
    assert gone == current.teks[0] and gone.name == "sa1"
    assert [t.name for t in store.teks(42, KeyState.ACTIVE)] == ["sa2"]
    with pytest.raises(StoreError, match="no active TEK with SPI"):
        store.retire_tek(gone.spi)
