"""The member's SA database: install by registration, handover between TEKs, expiry, snapshots."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from groupvpn.gdoi import GroupPolicy, SaPolicy, TekKeys, TekPolicy
from groupvpn.gm.sadb import HANDOVER, Expired, SaDatabase
from groupvpn.wire.numbers import PolicyAction

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gdoi"))
from gdoi_support import CBC, CBC_SPI, GCM_SPI, GROUP, KEK_SPI, group_policy, group_sa, keys_for  # noqa: E402

NOW = 5000.0
NEW_SPI = bytes.fromhex("00003003")


def with_successor(policy: GroupPolicy, lifetime: int) -> GroupPolicy:
    """``policy`` plus a second CBC TEK (``NEW_SPI``) for the same selectors, living ``lifetime`` s."""
    extra = [replace(t, spi=NEW_SPI, lifetime=lifetime) for t in policy.teks if t.spi == CBC_SPI]
    sa = SaPolicy(policy.teks + tuple(extra), policy.kek, policy.gap)
    keys = policy.tek_keys + (TekKeys(NEW_SPI, keys_for(CBC, "new")),)
    return GroupPolicy(policy.group_id, sa, keys, policy.kek_keys)


def test_a_registration_installs_rules_teks_and_the_kek():
    db = SaDatabase()
    group = db.install(group_policy(sa=group_sa(deny=True)), 7, NOW)
    assert db.version == 1 and db.groups[GROUP] is group
    assert [(r.name, r.action) for r in group.rules] == [
        ("10.1.0.0/16 -> 10.2.0.0/16", PolicyAction.PERMIT),
        ("10.2.0.0/16 -> 10.1.0.0/16", PolicyAction.PERMIT),
        ("protocol 17 2001:db8:1::/48 port 5000 -> 2001:db8:2::/48 port 5000", PolicyAction.PERMIT),
        ("deny protocol 17 10.1.0.0/16 port 848 -> 10.2.0.0/16", PolicyAction.DENY),
    ]
    # One SA per SPI; the paired CBC TEK covers both directions. Ordered by expiry.
    assert [(t.spi, len(t.selectors), t.expires_at) for t in group.teks] == [
        (GCM_SPI, 1, NOW + 1800),
        (CBC_SPI, 2, NOW + 3600),
    ]
    assert group.kek is not None and (group.kek.spi, group.kek.seq, group.kek.expires_at) == (KEK_SPI, 7, NOW + 86400)
    assert group.gap is not None and group.gap.anti_replay_window == 10


def test_the_snapshot_says_which_tek_encrypts_each_rule_and_which_decrypt():
    db = SaDatabase()
    db.install(group_policy(sa=group_sa(deny=True)), 0, NOW)
    snap = db.snapshot(NOW)
    assert (snap.version, snap.taken_at, snap.valid_until) == (1, NOW, NOW + 1800 - HANDOVER)
    view = snap.groups[GROUP]
    assert [(r.action, sa.spi if sa else None) for r, sa in view.encrypt] == [
        (PolicyAction.PERMIT, CBC_SPI),
        (PolicyAction.PERMIT, CBC_SPI),
        (PolicyAction.PERMIT, GCM_SPI),
        (PolicyAction.DENY, None),
    ]
    assert set(view.decrypt) == {CBC_SPI, GCM_SPI} and view.anti_replay_window == 10


def test_a_new_tek_encrypts_only_once_thirty_seconds_of_the_old_remain():
    db = SaDatabase()
    group = db.install(with_successor(group_policy(), 7200), 0, NOW)
    rule = group.rules[0]
    old_end = NOW + 3600
    assert group.encrypting(rule, NOW).spi == CBC_SPI  # type: ignore[union-attr]
    assert group.encrypting(rule, old_end - HANDOVER - 0.001).spi == CBC_SPI  # type: ignore[union-attr]
    assert group.encrypting(rule, old_end - HANDOVER).spi == NEW_SPI  # type: ignore[union-attr]
    # Both decrypt until the old one expires (the GCM TEK is long gone by then).
    assert set(db.snapshot(old_end - 1).groups[GROUP].decrypt) == {CBC_SPI, NEW_SPI}
    assert set(db.snapshot(old_end).groups[GROUP].decrypt) == {NEW_SPI}
    # The snapshot knows the handover is coming.
    assert db.snapshot(NOW + 1800).valid_until == old_end - HANDOVER


def test_the_last_tek_encrypts_to_its_end_and_then_nothing_does():
    db = SaDatabase()
    group = db.install(group_policy(), 0, NOW)
    rule = group.rules[0]
    assert group.encrypting(rule, NOW + 3600 - 1).spi == CBC_SPI  # type: ignore[union-attr]
    assert group.encrypting(rule, NOW + 3600) is None


def test_a_new_registration_replaces_the_group_and_keeps_what_it_repeats():
    db = SaDatabase()
    db.install(with_successor(group_policy(), 7200), 3, NOW)
    later = NOW + 100
    group = db.install(group_policy(), 1, later)  # NEW_SPI left out: deleted
    assert [t.spi for t in group.teks] == [GCM_SPI, CBC_SPI]
    cbc = group.tek(CBC_SPI)
    assert cbc is not None and (cbc.installed_at, cbc.expires_at) == (NOW, later + 3600)
    assert group.kek is not None and (group.kek.seq, group.kek.installed_at) == (3, NOW)  # the higher SEQ stays
    assert db.version == 2


def test_a_tek_with_new_keys_under_an_old_spi_is_a_new_sa():
    db = SaDatabase()
    db.install(group_policy(), 0, NOW)
    policy = group_policy()
    keys = tuple(TekKeys(k.spi, keys_for(CBC, "other")) if k.spi == CBC_SPI else k for k in policy.tek_keys)
    rekeyed = GroupPolicy(GROUP, policy.sa, keys, policy.kek_keys)
    cbc = db.install(rekeyed, 0, NOW + 10).tek(CBC_SPI)
    assert cbc is not None and cbc.installed_at == NOW + 10


def test_expire_removes_dead_sas_and_reports_them():
    db = SaDatabase()
    db.install(group_policy(), 0, NOW)
    db.install(group_policy(2), 0, NOW + 1)
    assert db.next_expiry() == NOW + 1800 and db.next_expiry({2}) == NOW + 1801
    assert db.expire(NOW + 1799) == ()
    version = db.version
    assert db.expire(NOW + 1800, {GROUP}) == (Expired(GROUP, "TEK", GCM_SPI),)
    assert db.version == version + 1 and [t.spi for t in db.groups[GROUP].teks] == [CBC_SPI]
    assert len(db.groups[2].teks) == 2  # not asked for
    gone = db.expire(NOW + 86400 + 1)
    kinds = sorted((e.group_id, e.kind) for e in gone)
    assert kinds == [(2, "KEK"), (2, "TEK"), (2, "TEK"), (GROUP, "KEK"), (GROUP, "TEK")]
    assert db.groups[GROUP].kek is None and db.groups[GROUP].rules  # the rules stay: traffic is dropped, not sent clear
    assert db.next_expiry() is None


def test_delete_by_spi_and_clear_by_group():
    db = SaDatabase()
    db.install(group_policy(), 0, NOW)
    assert db.delete_tek(GROUP, GCM_SPI) and not db.delete_tek(GROUP, GCM_SPI) and not db.delete_tek(9, GCM_SPI)
    assert [t.spi for t in db.groups[GROUP].teks] == [CBC_SPI]
    assert db.clear(GROUP) and not db.clear(GROUP)
    assert db.groups == {} and db.snapshot(NOW).groups == {} and db.snapshot(NOW).valid_until is None


def test_snapshots_are_frozen():
    db = SaDatabase()
    db.install(group_policy(), 0, NOW)
    snap = db.snapshot(NOW)
    db.clear(GROUP)
    assert GROUP in snap.groups and snap.version == 1
    with pytest.raises(TypeError):
        snap.groups[GROUP].decrypt[b"x"] = None  # type: ignore[index]


def test_deny_entries_alone_make_rules_without_sas():
    sa = group_sa(deny=True)
    deny_only = SaPolicy(tuple(t for t in sa.teks if not t.permits), sa.kek, None)
    group = SaDatabase().install(group_policy(sa=deny_only), 0, NOW)
    assert [r.action for r in group.rules] == [PolicyAction.DENY] and group.teks == ()
    assert all(isinstance(t, TekPolicy) for t in deny_only.teks)


def test_nothing_in_the_database_repr_shows_keys():
    group = SaDatabase().install(group_policy(), 0, NOW)
    text = repr(group)
    secrets = [k for t in group.teks for k in (t.keys.encryption, t.keys.integrity) if k]
    assert len(secrets) == 3 and not any(k.hex() in text for k in secrets)
    assert group.kek is not None and group.kek.keys.kek.key.hex() not in text
