"""KeyStore on real SQLite files: durability across reopen, SPI bookkeeping, crash safety."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest

from groupvpn.crypto.gdoi import Kek
from groupvpn.crypto.suites import esp_suite
from groupvpn.ks.store import (
    MAX_SENDER_IDS,
    SCHEMA_VERSION,
    KeyState,
    KeyStore,
    KeyTimes,
    MemberState,
    SenderIdsExhausted,
    SpiReused,
    StoredKek,
    StoredTek,
    StoreError,
)
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform, KekAlgorithm

GROUP = 1234
PEM = b"-----BEGIN PRIVATE KEY-----\nnot parsed by the store\n-----END PRIVATE KEY-----\n"
SUITE = esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256)


def kek(spi_byte: int, state: KeyState = KeyState.PENDING, created: float = 1000.0) -> StoredKek:
    material = Kek.generate(KekAlgorithm.AES, 256)
    return StoredKek(GROUP, bytes([spi_byte]) * 16, material, KeyTimes(3600, created, state=state))


def tek(spi: int, name: str = "sa1", created: float = 1000.0) -> StoredTek:
    return StoredTek(GROUP, name, spi, SUITE, SUITE.generate_keys(), KeyTimes(1800, created))


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "ks.db"


@pytest.fixture
def store(db_path):
    with KeyStore(db_path) as s:
        s.create_group(GROUP, PEM, 1000.0)
        yield s


def test_new_database_is_private_and_versioned(db_path):
    KeyStore(db_path).close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_wal_side_files_inherit_the_private_mode(store, db_path):
    store.add_kek(kek(1))
    side = [db_path.with_name(db_path.name + suffix) for suffix in ("-wal", "-shm")]
    assert all(p.exists() for p in side)
    assert {stat.S_IMODE(p.stat().st_mode) for p in side} == {0o600}


def test_existing_file_readable_by_others_is_refused(db_path):
    KeyStore(db_path).close()
    db_path.chmod(0o644)
    with pytest.raises(StoreError, match="mode 0644"):
        KeyStore(db_path)


def test_everything_survives_reopen(db_path):
    with KeyStore(db_path) as s:
        s.create_group(GROUP, PEM, 1000.0)
        k = kek(7)
        t = tek(0x1000)
        s.add_kek(k)
        s.add_tek(t)
        s.activate_kek(k.spi, 1001.0)
        s.activate_tek(t.spi, 1001.0)
        assert [s.next_push_seq(k.spi) for _ in range(3)] == [1, 2, 3]
        s.register_member(GROUP, "198.18.0.2", 1002.0)
        s.record_ack(GROUP, "198.18.0.2", k.spi, 3)
    with KeyStore(db_path) as s:
        assert s.signing_key_pem(GROUP) == PEM
        (k2,) = s.keks(GROUP)
        assert (k2.spi, k2.kek) == (k.spi, k.kek)
        assert k2.times == KeyTimes(3600, 1000.0, 1001.0, 4601.0, KeyState.ACTIVE)
        (t2,) = s.teks(GROUP)
        assert (t2.spi, t2.name, t2.suite, t2.keys) == (t.spi, t.name, t.suite, t.keys)
        assert t2.times.state is KeyState.ACTIVE
        assert s.last_push_seq(k.spi) == 3
        assert s.next_push_seq(k.spi) == 4
        (m,) = s.members(GROUP)
        assert (m.address, m.last_ack_spi, m.last_ack_seq, m.state) == (
            "198.18.0.2", k.spi, 3, MemberState.ACTIVE
        )


def test_group_signing_key_is_not_replaced(store):
    with pytest.raises(StoreError, match="already has a signing key"):
        store.create_group(GROUP, b"other", 1.0)
    assert store.signing_key_pem(GROUP) == PEM
    assert store.signing_key_pem(GROUP + 1) is None


def test_spis_are_never_reused_even_after_the_key_is_forgotten(store):
    old = kek(1)
    store.add_kek(old)
    store.add_tek(tek(0x100))
    store.activate_kek(old.spi, 1000.0)
    store.activate_tek(0x100, 1000.0)
    store.add_kek(kek(2))
    store.add_tek(tek(0x101))
    store.activate_kek(bytes([2]) * 16, 2000.0)
    store.activate_tek(0x101, 2000.0)
    assert [k.times.state for k in store.keks(GROUP)] == [KeyState.RETIRED, KeyState.ACTIVE]
    assert store.forget_retired(GROUP, now=1000.0 + 3600) == 2
    assert [k.spi for k in store.keks(GROUP)] == [bytes([2]) * 16]
    assert store.spi_issued("kek", old.spi) and store.spi_issued("tek", (0x100).to_bytes(4, "big"))
    with pytest.raises(SpiReused):
        store.add_kek(kek(1))
    with pytest.raises(SpiReused):
        store.add_tek(tek(0x100, name="sa2"))
    assert len(store.teks(GROUP)) == 1  # the failed inserts left nothing behind


def test_unexpired_retired_keys_are_kept(store):
    store.add_kek(kek(1))
    store.activate_kek(bytes([1]) * 16, 1000.0)
    store.add_kek(kek(2))
    store.activate_kek(bytes([2]) * 16, 1500.0)
    assert store.forget_retired(GROUP, now=4599.0) == 0
    assert len(store.keks(GROUP)) == 2


@pytest.mark.parametrize("spi", [0, 1, 255, 1 << 32])
def test_reserved_or_oversized_tek_spis_are_rejected(spi):
    with pytest.raises(ValueError, match="0-255 are reserved"):
        tek(spi)


@pytest.mark.parametrize("spi", [bytes(16), bytes(8) + b"\x01" * 8, b"\x01" * 8 + bytes(8), b"\x01" * 15])
def test_kek_spis_need_two_nonzero_cookies(spi):
    with pytest.raises(ValueError, match="CKY-I and CKY-R both non-zero"):
        StoredKek(GROUP, spi, Kek.generate(KekAlgorithm.AES, 128), KeyTimes(60, 0.0))


def test_one_pending_and_one_active_key_per_slot(store):
    store.add_kek(kek(1))
    with pytest.raises(StoreError, match="UNIQUE"):
        store.add_kek(kek(2))
    assert not store.spi_issued("kek", bytes([2]) * 16)  # rolled back with the insert
    store.add_tek(tek(0x100, "a"))
    store.add_tek(tek(0x101, "b"))  # another SA of the group has its own slot
    assert [t.name for t in store.teks(GROUP, KeyState.PENDING)] == ["a", "b"]


def test_activation_retires_only_its_own_slot(store):
    store.add_tek(tek(0x100, "a"))
    store.add_tek(tek(0x200, "b"))
    store.activate_tek(0x100, 1000.0)
    store.activate_tek(0x200, 1000.0)
    store.add_tek(tek(0x101, "a"))
    store.activate_tek(0x101, 2000.0)
    states = {t.spi: (t.times.state, t.times.expires_at) for t in store.teks(GROUP)}
    assert states == {
        0x100: (KeyState.RETIRED, 2800.0),
        0x200: (KeyState.ACTIVE, 2800.0),
        0x101: (KeyState.ACTIVE, 3800.0),
    }


def test_only_a_pending_key_can_be_activated(store):
    k = kek(1)
    store.add_kek(k)
    store.activate_kek(k.spi, 1000.0)
    with pytest.raises(StoreError, match=f"no pending KEK with SPI {k.spi.hex()}"):
        store.activate_kek(k.spi, 2000.0)
    with pytest.raises(StoreError, match="no pending TEK with SPI 0x00000100"):
        store.activate_tek(0x100, 2000.0)
    assert store.keks(GROUP, KeyState.ACTIVE)[0].times.activated_at == 1000.0


def test_push_seq_unknown_kek_and_exhaustion(store, db_path):
    with pytest.raises(StoreError, match="no KEK"):
        store.next_push_seq(bytes(16))
    k = kek(3)
    store.add_kek(k)
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE kek SET last_push_seq = 4294967294")
    assert store.next_push_seq(k.spi) == 0xFFFFFFFF
    with pytest.raises(StoreError, match="used every sequence number"):
        store.next_push_seq(k.spi)
    assert store.last_push_seq(k.spi) == 0xFFFFFFFF


_CHILD = textwrap.dedent(
    """
    import sys
    from groupvpn.ks.store import KeyStore
    store = KeyStore(sys.argv[1])
    spi = bytes.fromhex(sys.argv[2])
    for _ in range(1_000_000):
        print(store.next_push_seq(spi), flush=True)
    """
)


def test_push_seq_never_repeats_across_sigkill(store, db_path):
    k = kek(9)
    store.add_kek(k)
    store.close()
    seen: list[int] = []
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db_path), k.spi.hex()],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(40):
                line = child.stdout.readline()
                assert line, "child stopped before it was killed"
                seen.append(int(line))
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=10) == -signal.SIGKILL
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
    assert len(seen) == 200 and all(a < b for a, b in zip(seen, seen[1:]))
    with KeyStore(db_path) as reopened:
        assert reopened.last_push_seq(k.spi) >= seen[-1]
        assert reopened.next_push_seq(k.spi) > seen[-1]


def test_members_register_ack_and_leave(store):
    first = store.register_member(GROUP, "198.18.0.2", 10.0)
    assert (first.first_registered, first.last_registered, first.state) == (10.0, 10.0, MemberState.ACTIVE)
    store.register_member(GROUP, "198.18.0.3", 11.0)
    gone = store.set_member_state(GROUP, "198.18.0.2", MemberState.REMOVED, "operator clear")
    assert (gone.state, gone.reason) == (MemberState.REMOVED, "operator clear")
    assert [m.address for m in store.members(GROUP, MemberState.ACTIVE)] == ["198.18.0.3"]
    with pytest.raises(StoreError, match="198.18.0.2 was removed from group 1234 and is not re-authorized"):
        store.register_member(GROUP, "198.18.0.2", 15.0)
    assert store.member(GROUP, "198.18.0.2") == gone
    store.set_member_state(GROUP, "198.18.0.2", MemberState.INACTIVE, "re-authorized")
    back = store.register_member(GROUP, "198.18.0.2", 20.0)
    assert (back.first_registered, back.last_registered, back.state, back.reason) == (
        10.0, 20.0, MemberState.ACTIVE, ""
    )
    assert store.member(GROUP, "198.18.0.9") is None
    with pytest.raises(StoreError, match="not a member"):
        store.record_ack(GROUP, "198.18.0.9", bytes(16), 1)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_newer_schema_version_is_refused_without_change(db_path):
    KeyStore(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("PRAGMA journal_mode = DELETE")
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = _digest(db_path)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        KeyStore(db_path)
    assert _digest(db_path) == before


def test_foreign_sqlite_database_is_refused_without_change(db_path):
    db_path.parent.mkdir(mode=0o700)
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE something_else (x)")
    db_path.chmod(0o600)
    before = _digest(db_path)
    with pytest.raises(StoreError, match="not a groupvpn key store"):
        KeyStore(db_path)
    assert _digest(db_path) == before


def test_corrupt_file_is_refused_without_change(db_path):
    db_path.parent.mkdir(mode=0o700)
    db_path.write_bytes(os.urandom(8192))
    db_path.chmod(0o600)
    before = _digest(db_path)
    with pytest.raises(StoreError, match="not a usable key store"):
        KeyStore(db_path)
    assert _digest(db_path) == before


def test_records_never_show_key_material(store):
    k, t = kek(4), tek(0x400)
    shown = repr(k) + repr(t) + str(k) + str(t)
    for secret in (k.kek.iv, k.kek.key, t.keys.encryption, t.keys.integrity):
        assert secret.hex() not in shown and repr(secret) not in shown


def test_sender_ids_are_claimed_in_order_durably_and_run_out(store, db_path):
    assert store.allocate_sender_ids(GROUP, 1) == (0,)
    assert store.allocate_sender_ids(GROUP, 3) == (1, 2, 3)
    store.create_group(GROUP + 1, PEM, 1000.0)
    assert store.allocate_sender_ids(GROUP + 1, 2) == (0, 1)  # one counter per group
    store.close()
    with KeyStore(db_path) as reopened:
        assert reopened.allocate_sender_ids(GROUP, 1) == (4,)
        with sqlite3.connect(db_path) as raw:
            raw.execute("UPDATE grp SET next_sender_id = ? WHERE group_id = ?", (MAX_SENDER_IDS - 2, GROUP))
        with pytest.raises(SenderIdsExhausted, match=f"group {GROUP} has 2 of its 65536 sender IDs left"):
            reopened.allocate_sender_ids(GROUP, 3)
        assert reopened.allocate_sender_ids(GROUP, 2) == (MAX_SENDER_IDS - 2, MAX_SENDER_IDS - 1)
        with pytest.raises(StoreError, match="no group 99"):
            reopened.allocate_sender_ids(99, 1)
        with pytest.raises(ValueError, match="cannot allocate 0 sender IDs"):
            reopened.allocate_sender_ids(GROUP, 0)


def test_a_version_1_store_gains_the_sender_id_counter(db_path):
    with KeyStore(db_path) as store:
        store.create_group(GROUP, PEM, 1000.0)
    with sqlite3.connect(db_path) as raw:
        raw.execute("ALTER TABLE grp DROP COLUMN next_sender_id")
        raw.execute("PRAGMA user_version = 1")
    with KeyStore(db_path) as store:
        assert store.signing_key_pem(GROUP) == PEM
        assert store.allocate_sender_ids(GROUP, 2) == (0, 1)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_kek_spis_name_their_group_after_the_key_is_forgotten(store):
    k = kek(7, KeyState.ACTIVE)
    store.add_kek(k)
    assert store.kek_group(k.spi) == GROUP
    assert store.kek_group(bytes([8]) * 16) is None


def test_sqlite_failures_are_store_errors(store, db_path):
    store.register_member(GROUP, "198.18.0.2", 10.0)
    with sqlite3.connect(db_path) as raw:  # a write that fails inside SQLite, as a full disk would
        raw.execute("CREATE TRIGGER broken BEFORE UPDATE ON member BEGIN INSERT INTO missing VALUES (1); END")
    with pytest.raises(StoreError, match=r"the key store .*ks.db failed: no such table: main.missing"):
        store.record_ack(GROUP, "198.18.0.2", bytes(16), 1)
    assert store.member(GROUP, "198.18.0.2").last_ack_seq is None  # rolled back, still usable
    store.close()
    for call in (lambda: store.members(GROUP), lambda: store.register_member(GROUP, "198.18.0.3", 11.0)):
        with pytest.raises(StoreError, match="Cannot operate on a closed database"):
            call()
