"""GroupKeys over a real SQLite store: current keys, restart, rekey schedule and idempotence."""

from __future__ import annotations

import random
from ipaddress import ip_network

import pytest

from groupvpn.crypto.errors import InvalidKey, UnsupportedAlgorithm
from groupvpn.crypto.sig import SigningKey
from groupvpn.ks.keys import GroupConfig, GroupKeys, KekConfig, KeySet, NoFreeSpi, TekConfig
from groupvpn.ks.store import KeyState, KeyStore
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform, SigAlgorithm, SigHashAlgorithm

T0 = 1_700_000_000.0
KEK = KekConfig(lifetime=1000, sig_algorithm=SigAlgorithm.ECDSA_256)
SA1 = TekConfig("sa1", EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256, lifetime=600,
                destination=ip_network("198.18.0.0/15"))
SA2 = TekConfig("sa2", EspTransform.AES_GCM_16, 128, None, lifetime=800)
CONFIG = GroupConfig(group_id=42, kek=KEK, teks=(SA1, SA2))


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
    other = GroupConfig(group_id=7, kek=KEK, teks=(SA1,))
    a = GroupKeys(store, CONFIG).ensure_current(T0)
    b = GroupKeys(store, other).ensure_current(T0)
    assert a.kek.spi != b.kek.spi and a.teks[0].spi != b.teks[0].spi
    assert store.signing_key_pem(42) != store.signing_key_pem(7)


def test_rekey_time_is_when_ten_percent_of_the_first_lifetime_remains(store):
    keys = GroupKeys(store, CONFIG)
    assert keys.next_rekey_time() is None
    keys.ensure_current(T0)
    assert keys.next_rekey_time() == T0 + 540  # sa1: 600 s, 60 s left
    quarter = GroupKeys(store, GroupConfig(42, KEK, (SA1, SA2), rekey_fraction=0.25))
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

    config = GroupConfig(9, KekConfig(lifetime=700, sig_algorithm=SigAlgorithm.ECDSA_256), (SA1, SA2))
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
    keys = GroupKeys(store, GroupConfig(1, KekConfig(lifetime=3600), (SA1,)))
    keys.ensure_current(T0)
    assert keys.signing_key(T0).public.key_bits == 2048


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: KekConfig(lifetime=0), ValueError),
        (lambda: KekConfig(lifetime=1 << 32), ValueError),
        (lambda: KekConfig(lifetime=60, key_bits=100), InvalidKey),
        (lambda: KekConfig(lifetime=60, sig_algorithm=SigAlgorithm.ECDSA_384), UnsupportedAlgorithm),
        (lambda: KekConfig(lifetime=60, sig_hash=SigHashAlgorithm.MD5), UnsupportedAlgorithm),
        (lambda: TekConfig("x", EspTransform.AES_CBC, None, AuthAlgorithm.HMAC_SHA1, 60), UnsupportedAlgorithm),
        (lambda: TekConfig("x", EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1, 0), ValueError),
        (lambda: GroupConfig(1 << 32, KEK, ()), ValueError),
        (lambda: GroupConfig(1, KEK, (SA1, SA1)), ValueError),
        (lambda: GroupConfig(1, KEK, (SA1,), rekey_fraction=1.0), ValueError),
    ],
)
def test_unusable_configuration_is_refused_up_front(make, error):
    with pytest.raises(error):
        make()
