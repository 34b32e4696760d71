"""The member's rekeying (gm.rekey) against the key server's own rekey engine, on a fake clock.

Every push is real bytes from ``ks.rekey.RekeyEngine`` (or from
``gdoi.push.build_push`` with the group's real KEK and signing key, for what
the engine never sends); every registration is a real GROUPKEY-PULL
(tests/gdoi/pull_link) whose key server side answers from the same
``GroupKeys`` and store and refuses removed members with ``ks.removal``'s
refusal.  The member's acknowledgements go back into the engine.  Time only
moves from one timer to the next, so lifetimes of minutes run in
milliseconds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from groupvpn.crypto.sig import SigningKey, signature_scheme
from groupvpn.crypto.suites import esp_suite
from groupvpn.gdoi import (
    Endpoint,
    GroupAssociatedPolicy,
    GroupPolicy,
    MemberRegistered,
    Offer,
    Peer,
    Refusal,
    RegistrationComplete,
    RegistrationFailed,
    SenderIds,
    TrafficSelector,
)
from groupvpn.gdoi.push import PushPayloads, PushRejection, build_push
from groupvpn.gm.rekey import (
    PULL_WINDOW,
    GroupRekey,
    PullRekeyStarted,
    PushApplied,
    PushDropped,
    RekeyOutput,
    Removed,
    SaActivated,
    SaDeactivated,
)
from groupvpn.gm.sadb import HANDOVER, Expired, SaDatabase
from groupvpn.ike.events import Datagram
from groupvpn.ike.informational import open_protected
from groupvpn.ks.keys import GroupConfig, GroupKeys, KeySet, TekConfig
from groupvpn.ks.rekey import PushAcknowledged, RekeyEngine
from groupvpn.ks.rekey import RekeyOutput as ServerOutput
from groupvpn.ks.removal import RemovalMethod, removal_refusal
from groupvpn.ks.store import KeyState, KeyStore, MemberState
from groupvpn.wire.isakmp import Delete
from groupvpn.wire.message import decode_message
from groupvpn.wire.numbers import DOI, EspTransform, GdoiProtocol, SigAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gdoi"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ike"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ks"))
from group_configs import A_TO_B, CBC, GAP  # noqa: E402
from group_configs import group_config as shared_group_config  # noqa: E402
from phase1_link import I_ADDR, R_ADDR, SeededRng  # noqa: E402
from pull_link import PullLink, ike_sas  # noqa: E402

T0 = 1_700_000_000.0
GROUP = 7
MEMBER = I_ADDR[0]  # the address the PULL's IKE SA comes from, so the key server knows the member by it
KS = R_ADDR
GCM = esp_suite(EspTransform.AES_GCM_16, 128)
C_TO_D = TrafficSelector(0, Endpoint(ip_network("198.18.30.0/24")), Endpoint(ip_network("198.18.40.0/24")))
STEP = 0.25  # how finely the clock is walked when every instant matters


# SA sa1 (A <-> B, rekeyed by the key server at 90 % of its life) and a KEK acks are requested for.
group_config = partial(shared_group_config, GROUP, server=KS, kek_lifetime=2000, tek_lifetime=600)


@dataclass
class Lab:
    """The key server's engine and store, and one member: its rekey core on its SA database.

    The lab is also the PULL responder's group directory: it answers with
    ``serve(now)`` (the key server's current policy unless a test says
    otherwise) and the last push SEQ under its KEK, and refuses removed
    members as the key server does.
    """

    keys: GroupKeys
    engine: RekeyEngine
    sadb: SaDatabase
    gm: GroupRekey
    now: float = T0
    reachable: bool = True  # pushes reach the member
    serve: Callable[[float], GroupPolicy] | None = None
    events: list[object] = field(default_factory=list)  # the member's, and the SA database's expiries
    ks_events: list[object] = field(default_factory=list)
    acks: list[Datagram] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)  # every push that reached the member
    results: list[RegistrationComplete | RegistrationFailed] = field(default_factory=list)

    # -- the key server's group directory -------------------------------------------------

    def lookup(self, group_id: int, peer: Peer) -> Offer | Refusal:
        refusal = removal_refusal(self.keys.store, group_id, peer.address[0])
        if refusal is not None:
            return refusal
        policy = (self.serve or self.keys.current_policy)(self.now)
        assert policy.kek is not None
        return Offer(policy, self.keys.store.last_push_seq(policy.kek.spi))

    def allocate_sender_ids(self, group_id: int, peer: Peer, count: int) -> SenderIds:
        return SenderIds(16, tuple(range(count)))

    # -- traffic ----------------------------------------------------------------------------

    def pull(self) -> PullLink:
        return PullLink.make(self, group_id=GROUP, rng=SeededRng(f"pull {self.now}"))  # type: ignore[arg-type]

    def register(self) -> RegistrationComplete | RegistrationFailed:
        return self.finish(self.pull().start(self.now).deliver(self.now))

    def finish(self, link: PullLink) -> RegistrationComplete | RegistrationFailed:
        """Act on a finished PULL as the member core does."""
        if any(isinstance(e, MemberRegistered) for e in link.events["KS"]):
            self.keys.store.register_member(GROUP, MEMBER, self.now)
        if not link.events["GM"]:  # a refusal: an informational the member's IKE session opens for the PULL
            (refusal,) = open_protected(ike_sas()[0], decode_message(link.sent["KS"][-1])).notifies
            link.take("GM", link.member.peer_notify(refusal.notify_type, refusal.data, self.now))
        (result,) = link.events["GM"]
        assert isinstance(result, RegistrationComplete | RegistrationFailed)
        self.results.append(result)
        if isinstance(result, RegistrationComplete):
            self.take(self.gm.registered(result.policy, result.seq, self.now))
        elif (removed := self.gm.refused(result.reason)) is not None:
            self.events.append(removed)
        return result

    def take(self, out: RekeyOutput) -> RekeyOutput:
        """The member's output: log its events, hand its acknowledgements to the key server."""
        self.events += out.events
        for datagram in out.datagrams:
            assert datagram.addr == KS
            self.acks.append(datagram)
            self.ks(self.engine.receive_ack(datagram.data, (MEMBER, 848), self.now))
        return out

    def ks(self, out: ServerOutput) -> None:
        """The key server's output: pushes to the member, if they reach it."""
        self.ks_events += out.events
        for datagram in out.datagrams:
            if datagram.addr == (MEMBER, 848) and self.reachable:
                self.push(datagram.data)

    def push(self, datagram: bytes) -> RekeyOutput:
        self.delivered.append(datagram)
        return self.take(self.gm.receive_push(datagram, KS, self.now))

    def forge(self, seq: int, *, key: SigningKey | None = None, **content: object) -> bytes:
        """A push under the group's current KEK, signed with its key unless ``key`` is given."""
        kek = self.keys.ensure_current(self.now).kek
        assert kek is not None
        config = self.keys.config.kek
        scheme = signature_scheme(config.sig_algorithm, config.sig_hash)
        payloads = PushPayloads(seq, **content)  # type: ignore[arg-type]
        return build_push(kek.kek, kek.spi, payloads, key or self.keys.signing_key(self.now), scheme)

    # -- time ---------------------------------------------------------------------------------

    def until(self, end: float) -> None:
        """Run every timer due up to ``end`` -- key server, member, SA expiry, re-registration -- in order."""
        for _ in range(10_000):
            times = (self.engine.next_deadline, self.gm.next_deadline, self.sadb.next_expiry([GROUP]))
            due = [t for t in times if t is not None and t <= end]
            if not due:
                self.now = end
                return
            self.now = max(self.now, min(due))
            self.tick()
        raise AssertionError("the timers never settled")

    def tick(self) -> None:
        self.ks(self.engine.handle_timer(self.now))
        self.take(self.gm.handle_timer(self.now))
        self.events += self.sadb.expire(self.now, [GROUP])
        if self.gm.pull_due(self.now):
            self.events.append(self.gm.pull_started(self.now))
            self.register()

    # -- what the data plane would see ----------------------------------------------------------

    def encrypting(self) -> bytes | None:
        """The SPI of the TEK encrypting A <-> B traffic now (both directions agree)."""
        view = self.sadb.snapshot(self.now).groups[GROUP]
        (spi,) = {sa.spi if sa else None for rule, sa in view.encrypt if rule.selector in (A_TO_B, A_TO_B.mirrored())}
        return spi

    def decrypting(self) -> set[bytes]:
        return set(self.sadb.snapshot(self.now).groups[GROUP].decrypt)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]

    def tek(self) -> bytes:
        """The SPI of the key server's current TEK for sa1."""
        (keys,) = self.keys.current_policy(self.now).tek_keys
        return keys.spi

    def kek(self) -> bytes:
        kek = self.keys.ensure_current(self.now).kek
        assert kek is not None
        return kek.spi


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "ks.db") as s:
        yield s


def make_lab(store: KeyStore, config: GroupConfig | None = None, member_seed: str = "member") -> Lab:
    keys = GroupKeys(store, config or group_config(), rng=SeededRng("ks"))
    sadb = SaDatabase()
    lab = Lab(
        keys, RekeyEngine(keys, T0), sadb, GroupRekey(GROUP, sadb, ip_address(MEMBER), rng=SeededRng(member_seed))
    )
    assert isinstance(lab.register(), RegistrationComplete)
    return lab


@pytest.fixture
def lab(store):
    return make_lab(store)


def walk(lab: Lab, end: float) -> list[tuple[float, bytes | None, set[bytes]]]:
    """What encrypts and what decrypts at every STEP up to ``end``, timers run on the way."""
    seen = []
    while lab.now + STEP <= end:
        lab.until(lab.now + STEP)
        seen.append((lab.now, lab.encrypting(), lab.decrypting()))
    return seen


# -- GROUPKEY-PUSH: ATD, DTD, rollover --------------------------------------------------------


@pytest.mark.parametrize(
    "gap",
    [
        GAP,
        GroupAssociatedPolicy(activation_delay=0, deactivation_delay=10),
        GroupAssociatedPolicy(anti_replay_window=10),  # neither ATD nor DTD
    ],
    ids=["atd-5-dtd-30", "atd-0-dtd-10", "no-atd-no-dtd"],
)
def test_a_pushed_tek_encrypts_after_the_atd_and_the_old_one_goes_after_the_dtd(store, gap):
    lab = make_lab(store, group_config(gap=gap))
    old = lab.tek()
    lab.until(T0 + 540 - STEP)  # the key server pushes the next TEK at 90 % of the old one's life
    assert (lab.encrypting(), lab.decrypting(), lab.events) == (old, {old}, [])
    seen = walk(lab, T0 + 610)
    new = lab.tek()
    atd = gap.activation_delay or 0
    old_end = T0 + 540 + gap.deactivation_delay if gap.deactivation_delay is not None else T0 + 600
    for now, encrypting, decrypting in seen:
        assert encrypting == (new if now >= T0 + 540 + atd else old), now
        assert decrypting == ({old, new} if now < old_end else {new}) if now >= T0 + 540 else {old}, now
    (applied,) = lab.of(PushApplied)
    when = f"encrypting in {atd} s (ATD)" if atd else "encrypting at once"
    expected = [f"new TEK 0x{new.hex()}, {when}"]
    if gap.deactivation_delay is not None:
        expected.append(f"TEK 0x{old.hex()} replaced, deleted in {gap.deactivation_delay} s (DTD)")
    assert list(applied.changes) == expected
    assert applied.text.startswith(f"group {GROUP}: push SEQ 1 under KEK {lab.kek().hex()} from {KS[0]}: new TEK")
    assert [e.spi for e in lab.of(SaActivated)] == [new]
    if gap.deactivation_delay is None:
        assert lab.of(SaDeactivated) == [] and lab.of(Expired) == [Expired(GROUP, "TEK", old)]
    else:
        (gone,) = lab.of(SaDeactivated)
        assert gone.text == (
            f"group {GROUP}: TEK 0x{old.hex()} deactivated: replaced by push SEQ 1, "
            f"its DTD of {gap.deactivation_delay} s elapsed"
        )
    # The push came with its successor, so the old TEK's 7-5 % point made no PULL; the key server has the ack.
    assert lab.of(PullRekeyStarted) == []
    assert [(e.member, e.seq) for e in lab.ks_events if isinstance(e, PushAcknowledged)] == [(MEMBER, 1)]
    assert len(lab.acks) == 1 and lab.acks[0].addr == KS


def test_a_pull_rekey_hands_encryption_over_thirty_seconds_before_the_old_tek_ends(store):
    """A key server that answers with every valid TEK, old and new (the seed's groupkey-pull rollover)."""
    lab = make_lab(store)
    old = lab.tek()

    def every_valid_tek(now: float) -> GroupPolicy:
        current = lab.keys.ensure_current(now)
        valid = [t for t in store.teks(GROUP) if t.times.state is not KeyState.PENDING and t.times.remaining(now) > 0]
        return lab.keys.policy(KeySet(current.kek, tuple(valid)), now)

    lab.serve = every_valid_tek
    lab.reachable = False  # the member misses the push at 540 s and re-registers at its own point
    lab.until(T0 + 550)
    point = lab.gm.pull_deadline
    assert point is not None and lab.of(PushApplied) == []
    for now, encrypting, decrypting in walk(lab, point - STEP):
        assert (encrypting, decrypting) == (old, {old}), now
    lab.until(point)
    new = lab.tek()
    (started,) = lab.of(PullRekeyStarted)
    share = 100 * (T0 + 600 - point) / 600
    assert 100 * PULL_WINDOW[0] <= share <= 100 * PULL_WINDOW[1]
    assert started.reason == f"TEK 0x{old.hex()} has {share:.1f} % of its lifetime left and no successor"
    assert lab.of(SaDeactivated) == []  # both were in the answer
    # The answer restated the old TEK with its remaining lifetime rounded up; it still ends when it did.
    old_end = lab.sadb.groups[GROUP].teks[0].expires_at
    assert lab.sadb.groups[GROUP].teks[0].spi == old and old_end == T0 + 600
    for now, encrypting, decrypting in walk(lab, T0 + 610):
        assert encrypting == (old if now < old_end - HANDOVER else new), now
        assert decrypting == ({old, new} if now < old_end else {new}), now


def test_a_new_kek_arrives_under_the_old_one_and_the_next_push_comes_under_it_with_seq_1(lab):
    old_kek, old_tek = lab.kek(), lab.tek()
    lab.now = T0 + 100
    lab.ks(lab.engine.force_rekey(lab.now))
    new_kek, new_tek = lab.kek(), lab.tek()
    kek_push, tek_push = lab.of(PushApplied)
    assert (kek_push.seq, kek_push.kek_spi, kek_push.changes) == (1, old_kek, (f"new KEK {new_kek.hex()} (2000 s)",))
    assert (tek_push.seq, tek_push.kek_spi) == (1, new_kek)
    assert tek_push.changes[0] == f"new TEK 0x{new_tek.hex()}, encrypting in 5 s (ATD)"
    group = lab.gm.group
    assert group is not None and group.kek is not None and (group.kek.spi, group.kek.seq) == (new_kek, 1)
    # Both KEKs open pushes (a retransmission under the old one still gets its ack) until the old one ends.
    assert lab.gm.holds(old_kek) and lab.gm.holds(new_kek)
    acked = [(e.kek_spi, e.seq) for e in lab.ks_events if isinstance(e, PushAcknowledged)]
    assert acked == [(old_kek.hex(), 1), (new_kek.hex(), 1)]
    # The scheduled TEK rekeys come under the new KEK, SEQ 2, 3, 4, until it is rolled over itself.
    lab.until(T0 + 1900 - STEP)
    assert [(e.kek_spi, e.seq) for e in lab.of(PushApplied)][2:] == [(new_kek, 2), (new_kek, 3), (new_kek, 4)]
    assert [e.reason.split(",")[0] for e in lab.of(SaDeactivated)] == [
        f"replaced by push SEQ {n}" for n in (1, 2, 3, 4)
    ]
    assert old_tek not in lab.decrypting()
    lab.until(T0 + 2000)
    (kek_gone,) = [e for e in lab.of(SaDeactivated) if e.kind == "KEK"]
    assert kek_gone.text == (
        f"group {GROUP}: KEK {old_kek.hex()} deactivated: replaced by KEK {new_kek.hex()}, its lifetime ended"
    )
    assert not lab.gm.holds(old_kek) and lab.gm.holds(new_kek) and lab.gm.holds(lab.kek())
    assert lab.of(PullRekeyStarted) == [] and lab.of(PushDropped) == []


# -- Delete payloads ------------------------------------------------------------------------


def tek_delete(spi: bytes) -> Delete:
    return Delete(DOI.GDOI, GdoiProtocol.IPSEC_ESP, 4, (spi,))


def kek_delete(spi: bytes) -> Delete:
    return Delete(DOI.GDOI, GdoiProtocol.KEK, 16, (spi,))


@pytest.mark.parametrize(
    "what, delete, kind",
    [
        ("the TEK by SPI", lambda lab: tek_delete(lab.tek()), "TEK"),
        ("every TEK (SPI 0)", lambda lab: tek_delete(bytes(4)), "TEK"),
        ("the KEK by SPI", lambda lab: kek_delete(lab.kek()), "KEK"),
        ("every KEK (SPI 0)", lambda lab: kek_delete(bytes(16)), "KEK"),
    ],
)
def test_a_delete_removes_at_once_and_the_member_re_registers(lab, what, delete, kind):
    tek, kek = lab.tek(), lab.kek()
    lab.now = T0 + 100
    out = lab.push(lab.forge(lab.keys.store.next_push_seq(kek), deletes=(delete(lab),)))
    gone = tek if kind == "TEK" else kek
    name = f"TEK 0x{tek.hex()}" if kind == "TEK" else f"KEK {kek.hex()}"
    (applied, deactivated) = out.events
    assert isinstance(applied, PushApplied) and applied.changes == (f"deleted {name}",)
    assert deactivated == SaDeactivated(GROUP, kind, gone, "deleted by push SEQ 1")
    group = lab.gm.group
    assert group is not None
    if kind == "TEK":
        assert (group.teks, group.kek is not None, lab.gm.holds(kek)) == ((), True, True)
    else:
        assert (len(group.teks), group.kek, lab.gm.holds(kek)) == (1, None, False)
    # Acknowledged although the push deleted what protected it (RFC 8263 §4).
    assert len(out.datagrams) == 1 and out.datagrams[0].addr == KS
    # Left without a KEK or a TEK, the member re-registers at once; the key server still admits it.
    assert lab.gm.pull_due(lab.now)
    lab.tick()
    (started,) = lab.of(PullRekeyStarted)
    assert started.text == f"group {GROUP}: re-registering with GROUPKEY-PULL: {name} deleted by push SEQ 1"
    group = lab.gm.group
    assert group is not None and group.kek is not None and [t.spi for t in group.teks] == [tek]
    assert lab.gm.holds(kek) and lab.of(Removed) == [] and not lab.gm.pull_due(lab.now)


def test_a_delete_with_a_dtd_waits_for_it(store):
    """A configuration change drops SA sa2: one push restates sa1, carries the GAP and deletes sa2's TEK."""
    both = group_config(teks=(*group_config().teks, TekConfig("sa2", CBC, lifetime=600, selectors=(C_TO_D,))))
    lab = make_lab(store, both)
    spis = {t.spi for t in lab.keys.current_policy(lab.now).tek_keys}
    lab.now = T0 + 100
    lab.ks(lab.engine.policy_changed(group_config(), lab.now))
    (kept,) = {t.spi for t in lab.keys.current_policy(lab.now).tek_keys}
    (dropped,) = spis - {kept}
    (applied,) = lab.of(PushApplied)
    assert applied.changes == (f"TEK 0x{dropped.hex()} to be deleted in 30 s (DTD)", f"restated TEK 0x{kept.hex()}")
    lab.until(T0 + 130 - STEP)
    assert lab.decrypting() == {kept, dropped}
    lab.until(T0 + 130)
    assert lab.decrypting() == {kept}
    (gone,) = lab.of(SaDeactivated)
    assert gone.reason == "deleted by push SEQ 1 after its DTD of 30 s"
    assert lab.of(PullRekeyStarted) == []  # sa1 still has its TEK


def test_a_push_of_a_gap_with_its_tek_changes_the_policy_and_keeps_the_sa(lab):
    tek = lab.tek()
    (before,) = lab.sadb.groups[GROUP].teks
    lab.now = T0 + 100
    lab.ks(lab.engine.policy_changed(group_config(gap=replace(GAP, anti_replay_window=20)), lab.now))
    (applied,) = lab.of(PushApplied)
    assert applied.changes == (f"restated TEK 0x{tek.hex()}", "GAP ATD 5 s, DTD 30 s, anti-replay window 20 s")
    assert lab.sadb.snapshot(lab.now).groups[GROUP].anti_replay_window == 20
    (after,) = lab.sadb.groups[GROUP].teks
    assert (after.spi, after.keys, after.installed_at) == (before.spi, before.keys, before.installed_at)
    lab.until(T0 + 200)
    assert lab.of(SaDeactivated) == [] and lab.of(PullRekeyStarted) == [] and lab.encrypting() == tek


def test_a_shorter_dtd_without_new_keys_makes_an_admitted_member_re_register_and_keep_its_sas(lab):
    """Shortening the group's DTD looks like a removal by DTD; the re-registration that follows clears it up."""
    tek = lab.tek()
    lab.now = T0 + 100
    lab.ks(lab.engine.policy_changed(group_config(gap=replace(GAP, deactivation_delay=20)), lab.now))
    lab.until(T0 + 100)
    (started,) = lab.of(PullRekeyStarted)
    assert started.reason == (f"push SEQ 1 brought no new keys and deactivates TEK 0x{tek.hex()} after a DTD of 20 s")
    lab.until(T0 + 200)
    assert lab.of(SaDeactivated) == [] and lab.of(Removed) == [] and lab.encrypting() == tek


def test_a_counter_mode_tek_is_not_installed_without_a_sender_id(lab):
    cbc = lab.tek()
    lab.now = T0 + 100
    gcm_config = group_config(teks=(TekConfig("sa1", GCM, lifetime=600, selectors=(A_TO_B, A_TO_B.mirrored())),))
    lab.ks(lab.engine.policy_changed(gcm_config, lab.now))
    gcm = lab.tek()
    applied = lab.of(PushApplied)[0]
    assert applied.changes == (f"TEK 0x{gcm.hex()} not installed: counter mode without a sender ID (RFC 6407 §4.4)",)
    # It re-registers at once, gets its sender ID with the TEK; the CBC TEK, absent from the answer, goes.
    lab.until(lab.now)
    (started,) = lab.of(PullRekeyStarted)
    assert started.reason == f"push SEQ 1 brought counter-mode TEK 0x{gcm.hex()} and the member holds no sender ID"
    group = lab.sadb.groups[GROUP]
    assert group.sender_ids == SenderIds(16, (0,)) and [t.spi for t in group.teks] == [gcm]
    (gone,) = lab.of(SaDeactivated)
    assert (gone.spi, gone.reason) == (cbc, "absent from the registration answer")


# -- replays, forgeries, races ----------------------------------------------------------------


def test_replayed_duplicated_and_forged_pushes_are_dropped_and_counted(lab):
    lab.until(T0 + 540)  # push SEQ 1: the next TEK
    assert [p.seq for p in lab.of(PushApplied)] == [1]
    tek = lab.tek()
    copy = lab.forge(1, deletes=(tek_delete(tek),))  # another push with an old SEQ
    replay = lab.push(copy)
    forged = lab.push(lab.forge(2, deletes=(tek_delete(tek),), key=SigningKey.generate(SigAlgorithm.ECDSA_256)))
    (replayed,), (bad,) = replay.events, forged.events
    assert isinstance(replayed, PushDropped) and isinstance(bad, PushDropped)
    assert (replayed.reason, replayed.count, replay.datagrams) == (PushRejection.REPLAY, 1, ())
    assert replayed.text.startswith(f"group {GROUP}: push dropped (replay, 1 so far): replayed push: SEQ 1 <= last")
    assert (bad.reason, bad.count, forged.datagrams) == (PushRejection.BAD_SIGNATURE, 1, ())
    assert "push signature invalid (signed by another key?): SEQ 2" in bad.text
    # Nothing was applied; a genuine SEQ 2 still is.
    assert tek in lab.decrypting() and len(lab.of(PushApplied)) == 1
    lab.until(T0 + 1080)
    assert [p.seq for p in lab.of(PushApplied)] == [1, 2]
    assert lab.gm.receiver.rejected[PushRejection.REPLAY] == 1


def test_a_retransmitted_push_is_acknowledged_again_and_not_applied_twice(lab):
    lab.until(T0 + 540)
    (ack,) = lab.acks
    again = lab.push(lab.delivered[0])
    (dropped,) = again.events
    assert isinstance(dropped, PushDropped) and dropped.reason is PushRejection.DUPLICATE
    assert again.datagrams == (Datagram(ack.data, KS),)
    assert len(lab.of(PushApplied)) == 1


def test_a_push_that_races_a_pull_is_neither_lost_nor_accepted_twice(lab):
    """PULL message 4 was made before push SEQ 1 but arrives after it: its SEQ is stale (RFC 6407 §3.3)."""
    old = lab.tek()
    lab.now = T0 + 539.5
    link = lab.pull().start(lab.now)
    held: list[bytes] = []

    def hold_message_4(to: str, data: bytes) -> bool:
        if to == "GM" and len(link.sent["KS"]) == 2 and data == link.sent["KS"][1]:
            held.append(data)
            return True
        return False

    link.deliver(lab.now, drop=hold_message_4)
    assert len(held) == 1 and link.events["GM"] == []
    lab.until(T0 + 540)  # push SEQ 1 with the next TEK
    new = lab.tek()
    assert lab.decrypting() == {old, new}
    link.take("GM", link.member.receive(held[0], lab.now))
    result = lab.finish(link)
    assert isinstance(result, RegistrationComplete) and result.seq == 0
    # The answer predates the push: the pushed TEK stays, SEQ 1 stays accepted.
    assert lab.decrypting() == {old, new} and lab.of(SaDeactivated) == []
    group = lab.gm.group
    assert group is not None and group.kek is not None and group.kek.seq == 1
    (duplicate,) = lab.push(lab.delivered[0]).events
    assert isinstance(duplicate, PushDropped) and duplicate.reason is PushRejection.DUPLICATE
    lab.until(T0 + 1080)
    assert [p.seq for p in lab.of(PushApplied)] == [1, 2]


def test_a_push_before_a_pull_leaves_the_answer_current(lab):
    """Not a race: the key server answers with the pushed keys and SEQ, and the member passes G's LastPush."""
    lab.until(T0 + 540)
    assert lab.gm.last_push is not None and lab.gm.last_push.seq == 1
    link = PullLink.make(lab, group_id=GROUP, last_push=lab.gm.last_push, rng=SeededRng("pull"))  # type: ignore[arg-type]
    result = lab.finish(link.start(lab.now).deliver(lab.now))
    assert isinstance(result, RegistrationComplete) and (result.seq, result.stale_seq) == (1, False)
    new = lab.tek()
    # The old TEK, retired by the key server, is absent from the answer and goes at once (seed).
    assert lab.decrypting() == {new}


# -- pull rekey --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, kind",
    [(group_config(), "TEK"), (group_config(kek_lifetime=300), "KEK")],
    ids=["tek-first", "kek-first"],
)
def test_every_member_draws_its_pull_point_between_seven_and_five_percent_of_the_lifetime(store, config, kind):
    keys = GroupKeys(store, config, rng=SeededRng("ks"))
    policy = keys.current_policy(T0)
    lifetime = config.kek.lifetime if kind == "KEK" else config.teks[0].lifetime
    low, high = T0 + lifetime * (1 - PULL_WINDOW[1]), T0 + lifetime * (1 - PULL_WINDOW[0])
    points = []
    for seed in range(300):
        sadb = SaDatabase()
        gm = GroupRekey(GROUP, sadb, ip_address(MEMBER), rng=SeededRng(f"member {seed}"))
        gm.registered(policy, 0, T0)
        point = gm.pull_deadline
        assert point is not None and low <= point <= high, (seed, point)
        assert not gm.pull_due(point - 0.001) and gm.pull_due(point)
        points.append(point)
    # Spread over the whole window, not bunched: members do not storm the key server together.
    assert len(set(points)) == len(points)
    assert max(points) - min(points) > 0.95 * (high - low)
    for third in range(3):
        start = low + third * (high - low) / 3
        assert 70 <= sum(start <= p < start + (high - low) / 3 for p in points) <= 130


def test_a_member_that_missed_the_push_re_registers_and_sas_absent_from_the_answer_are_deleted(lab):
    old = lab.tek()
    lab.reachable = False
    lab.until(T0 + 599)
    new = lab.tek()
    (started,) = lab.of(PullRekeyStarted)
    assert started.reason.startswith(f"TEK 0x{old.hex()} has ")
    (gone,) = lab.of(SaDeactivated)
    assert gone.text == f"group {GROUP}: TEK 0x{old.hex()} deactivated: absent from the registration answer"
    assert (lab.encrypting(), lab.decrypting()) == (new, {new})
    # One PULL per point: the new TEK's own point is far ahead.
    deadline = lab.gm.pull_deadline
    assert deadline is not None and deadline > T0 + 1000


# -- removal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(RemovalMethod))
def test_a_removed_member_re_registers_is_refused_and_drops_its_sas(lab, method):
    tek, kek = lab.tek(), lab.kek()
    lab.now = T0 + 100
    lab.ks(lab.engine.remove_member(MEMBER, method, lab.now))
    (applied,) = lab.of(PushApplied)
    if method is RemovalMethod.DELETE:
        assert applied.changes == (f"deleted TEK 0x{tek.hex()} and KEK {kek.hex()}",)
        cause = f"TEK 0x{tek.hex()} and KEK {kek.hex()} deleted by push SEQ 1"
    else:
        assert applied.changes == (
            f"TEK 0x{tek.hex()} to be deleted in 5 s (DTD), no new keys",
            "GAP ATD 5 s, DTD 5 s, anti-replay window 10 s",
        )
        cause = f"push SEQ 1 brought no new keys and deactivates TEK 0x{tek.hex()} after a DTD of 5 s"
    lab.until(lab.now)
    (started,) = lab.of(PullRekeyStarted)
    assert started.reason == cause
    (removed,) = lab.of(Removed)
    assert removed.text == (
        f"removed from group {GROUP} by the key server: {cause}; re-registration refused: key server {KS[0]} "
        f"refused registration to group {GROUP}: AUTHENTICATION_FAILED "
        f"(member {MEMBER} was removed from group {GROUP} by the administrator)"
    )
    assert GROUP not in lab.sadb.groups and lab.gm.receiver.rekey_sas == {}
    assert lab.gm.next_deadline is None
    # Later attempts are refused as well, without a second removal.
    assert isinstance(lab.register(), RegistrationFailed) and len(lab.of(Removed)) == 1


def test_a_refusal_without_a_push_that_took_the_keys_is_not_a_removal(lab):
    tek = lab.tek()
    lab.reachable = False
    lab.keys.store.set_member_state(GROUP, MEMBER, MemberState.REMOVED, "removed behind the member's back")
    lab.until(T0 + 580)  # the pull rekey at the old TEK's point is refused
    assert len(lab.of(PullRekeyStarted)) == 1
    (refused,) = lab.results[1:]
    assert isinstance(refused, RegistrationFailed) and "was removed from group" in refused.reason
    # The SAs stay to their lifetimes (the member core retries), and no removal is reported.
    assert lab.of(Removed) == [] and lab.encrypting() == tek
    lab.until(T0 + 600)
    assert lab.of(Expired) == [Expired(GROUP, "TEK", tek)]


def test_clear_forgets_the_group(lab):
    datagram = lab.forge(lab.keys.store.next_push_seq(lab.kek()))
    assert lab.gm.clear() and not lab.gm.clear()
    assert GROUP not in lab.sadb.groups and lab.gm.next_deadline is None
    (dropped,) = lab.push(datagram).events
    assert isinstance(dropped, PushDropped) and dropped.reason is PushRejection.UNKNOWN_KEK
