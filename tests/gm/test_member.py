"""The member core against real key server cores in memory, on a fake clock."""

from __future__ import annotations

from dataclasses import replace

import pytest
from member_lab import (
    GM,
    GM_KEY,
    IKE_GIVE_UP,
    KS1,
    KS2,
    KS3,
    RETRY,
    SUITE,
    T0,
    WRONG_KEY,
    Lab,
    gateway,
    key_server,
    vpn,
)
from phase1_link import SeededRng
from rogue_server import RogueServer, unpaired_policy

from groupvpn.gdoi import Offer
from groupvpn.gm.member import (
    AttemptFailed,
    Failure,
    GatewaySettings,
    IkeSaDown,
    IkeSaUp,
    Member,
    Registered,
    SaExpired,
    SasCleared,
    ServerSwitched,
    VpnSettings,
    check_vpns,
)
from groupvpn.gm.sadb import SaDatabase
from groupvpn.ike import DeleteReason, IkeSaDeleted, Suite
from groupvpn.ike.retransmit import RetransmitPolicy
from groupvpn.ks.store import KeyState, KeyStore
from groupvpn.wire.message import Header
from groupvpn.wire.numbers import ExchangeType


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "ks.db") as s:
        yield s


@pytest.fixture
def lab(store):
    return Lab.make([vpn()], {KS1: key_server(store)})


def exchanges(lab: Lab) -> list[str]:
    return [ExchangeType(Header.decode(d).exchange).name for _, d in lab.sent]


def test_nothing_happens_until_the_interface_is_up(lab):
    assert lab.member.timer is None and lab.state() == "DOWN"
    lab.link(False)
    lab.link(True, interface="eth9")  # not the VPN's interface
    assert lab.sent == [] and lab.state() == "DOWN"


def test_interface_up_registers_and_installs_what_the_key_server_stores(lab, store):
    lab.link(True)
    assert lab.state() == "REGISTERED"
    assert lab.kinds() == ["IkeSaUp", "Registered"]
    (kek,) = store.keks(1, KeyState.ACTIVE)
    (tek,) = store.teks(1, KeyState.ACTIVE)
    (registered,) = lab.of(Registered)
    assert registered == Registered("lan", 1, KS1[0], kek.spi, (tek.spi.to_bytes(4, "big"),), 0)
    assert registered.message == (
        f"vpn lan registered to group 1 with key server {KS1[0]}: KEK {kek.spi.hex()}, TEKs 0x{tek.spi:08x}"
    )
    group = lab.sadb.groups[1]
    assert group.kek is not None and group.kek.keys.kek == kek.kek and group.kek.seq == 0
    assert [t.keys for t in group.teks] == [tek.keys]
    assert [r.name for r in group.rules] == ["198.18.10.0/24 -> 198.18.20.0/24", "198.18.20.0/24 -> 198.18.10.0/24"]
    assert group.gap is not None and group.gap.anti_replay_window == 10
    # Main Mode (3 requests), then PULL messages 1 and 3; nothing after.
    assert exchanges(lab) == ["IDENTITY_PROTECTION"] * 3 + ["GROUPKEY_PULL"] * 2
    assert [m.address for m in store.members(1)] == [GM]


def test_interface_down_clears_the_group_and_up_registers_again_over_the_same_ike_sa(lab):
    lab.link(True)
    lab.link(False)
    assert lab.state() == "DOWN" and 1 not in lab.sadb.groups
    (cleared,) = lab.of(SasCleared)
    assert cleared.message == "vpn lan group 1: SAs cleared (interface eth1 down)"
    sent = len(lab.sent)
    lab.link(True)
    assert lab.state() == "REGISTERED" and 1 in lab.sadb.groups
    assert len(lab.of(IkeSaUp)) == 1  # the IKE SA was reused
    assert exchanges(lab)[sent:] == ["GROUPKEY_PULL"] * 2


def test_interface_down_during_phase_1_stops_the_registration(lab):
    lab.servers.clear()  # nobody answers
    lab.link(True)
    lab.link(False)
    assert lab.state() == "DOWN" and lab.of(SasCleared) == []  # nothing was installed
    with pytest.raises(AssertionError, match="nothing more happens"):
        lab.run(lambda: lab.state() != "DOWN", limit=600)
    assert lab.of(AttemptFailed) == []


def test_failover_after_three_retries_ten_seconds_apart(store):
    lab = Lab.make([vpn(gw=gateway((KS1, KS2)))], {KS2: key_server(store, KS2)})
    lab.link(True)
    took = lab.run(lambda: lab.state() == "REGISTERED")
    failures = lab.of(AttemptFailed)
    assert [(f.server, f.failure) for f in failures] == [(KS1[0], Failure.NO_RESPONSE)] * 4
    assert failures[0].reason == f"Phase 1: no response from {KS1[0]} after 5 attempts"
    assert failures[0].message.endswith("; next attempt in 10 s")
    (switched,) = lab.of(ServerSwitched)
    assert switched.message == (
        f"vpn lan group 1: key server {KS1[0]} failed 4 attempts in a row; trying key server {KS2[0]}"
    )
    (registered,) = lab.of(Registered)
    assert registered.server == KS2[0]
    # Four attempts of 23 s each, 10 s after every failure, then the next server.
    assert took == 4 * IKE_GIVE_UP + 4 * RETRY
    assert lab.kinds() == ["AttemptFailed"] * 4 + ["ServerSwitched", "IkeSaUp", "Registered"]


def test_failover_goes_round_the_list_until_a_server_answers(store):
    lab = Lab.make([vpn(gw=gateway((KS1, KS2, KS3)))], {}, retries=0)
    lab.link(True)
    lab.run(lambda: len(lab.of(ServerSwitched)) == 4)
    assert [(s.previous, s.server) for s in lab.of(ServerSwitched)] == [
        (KS1[0], KS2[0]),
        (KS2[0], KS3[0]),
        (KS3[0], KS1[0]),
        (KS1[0], KS2[0]),
    ]
    lab.servers[KS2] = key_server(store, KS2)
    lab.run(lambda: lab.state() == "REGISTERED")
    assert lab.of(Registered)[0].server == KS2[0]


def test_retries_keep_the_same_server_until_the_retries_are_used(store):
    lab = Lab.make([vpn(gw=gateway((KS1, KS2)))], {})
    lab.link(True)
    lab.run(lambda: len(lab.of(AttemptFailed)) == 2)
    assert lab.state() == "WAITING" and lab.member.registrations["lan"].server == KS1
    assert lab.member.timer == lab.now + RETRY
    lab.servers[KS1] = key_server(store)  # the server comes back before the retries are used up
    lab.run(lambda: lab.state() == "REGISTERED")
    assert lab.of(ServerSwitched) == [] and lab.of(Registered)[0].server == KS1[0]


def test_wrong_pre_shared_key_is_an_authentication_failure_with_the_reason(store):
    lab = Lab.make([vpn(gw=gateway(psk=WRONG_KEY))], {KS1: key_server(store)})
    lab.link(True)
    (failed,) = lab.of(AttemptFailed)
    assert failed.failure is Failure.AUTHENTICATION_FAILED
    assert "pre-shared key differs" in failed.reason
    assert lab.state() == "WAITING" and lab.member.registrations["lan"].last_failure == failed
    assert lab.sadb.groups == {}


def test_unacceptable_proposal_is_reported(store):
    lab = Lab.make([vpn(gw=gateway(suite="3des-sha1-modp1024"))], {KS1: key_server(store)})
    lab.link(True)
    (failed,) = lab.of(AttemptFailed)
    assert failed.failure is Failure.NO_PROPOSAL_CHOSEN
    assert failed.reason == f"Phase 1: no proposal chosen by {KS1[0]} (offered: 3des-sha1-modp1024)"


def test_unknown_group_is_refused_with_the_key_servers_reason(store):
    lab = Lab.make([vpn(group_id=99)], {KS1: key_server(store)})
    lab.link(True)
    (failed,) = lab.of(AttemptFailed)
    assert failed.failure is Failure.REFUSED
    assert failed.reason == (
        f"key server {KS1[0]} refused registration to group 99: INVALID_ID_INFORMATION (unknown group 99)"
    )
    # RFC 6407 §3.3: the failed registration takes its IKE SA down with it.
    assert lab.of(IkeSaDown)[0].reason is DeleteReason.LOCAL
    assert any(isinstance(e, IkeSaDeleted) and e.reason is DeleteReason.PEER for e in lab.server_events)


def test_member_address_not_authorized_for_the_group_is_refused(store):
    lab = Lab.make([vpn(group_id=3)], {KS1: key_server(store)})
    lab.link(True)
    (failed,) = lab.of(AttemptFailed)
    assert failed.failure is Failure.REFUSED
    assert failed.reason.endswith(f"AUTHENTICATION_FAILED (member {GM} not authorized for group 3)")


def test_unpaired_policies_are_rejected_and_the_key_server_is_told_why():
    rogue = RogueServer(KS1[0], GM_KEY, (Suite.parse(SUITE),), Offer(unpaired_policy(1)), SeededRng("rogue"))
    lab = Lab.make([vpn()], {KS1: rogue})
    lab.link(True)
    (failed,) = lab.of(AttemptFailed)
    assert failed.failure is Failure.POLICY_REJECTED
    assert failed.reason == (
        f"group 1 policy from key server {KS1[0]} rejected: TEK 0000beef carries two unpaired policies "
        "(198.18.110.0/24 -> 198.18.120.0/24; 198.18.110.0/24 -> 198.18.130.0/24); two policies may share "
        "a TEK only as mirror images (A-B and B-A)"
    )
    assert lab.sadb.groups == {}
    assert exchanges(lab)[-2:] == ["INFORMATIONAL", "INFORMATIONAL"]  # the notify, then the IKE SA delete


def test_refusals_are_retried_like_silence(store):
    lab = Lab.make([vpn(group_id=99)], {KS1: key_server(store)})
    lab.link(True)
    lab.run(lambda: len(lab.of(AttemptFailed)) == 4)
    assert [e.failure for e in lab.of(AttemptFailed)] == [Failure.REFUSED] * 4
    assert lab.of(ServerSwitched)[0].server == KS1[0]  # the only server: round the list to itself
    assert len(lab.of(IkeSaUp)) == 4  # every retry starts from a fresh Phase 1


def test_clear_reregisters_over_the_existing_ike_sa(lab):
    lab.link(True)
    before = lab.sadb.groups[1]
    lab.call(lambda now: lab.member.clear(now))
    (cleared,) = lab.of(SasCleared)
    assert cleared.reason == "cleared by the operator; registering again"
    assert lab.state() == "REGISTERED" and len(lab.of(Registered)) == 2 and len(lab.of(IkeSaUp)) == 1
    assert lab.sadb.groups[1].kek == before.kek  # the key server still serves the same keys


def test_clear_of_another_group_leaves_this_one_alone(lab):
    lab.link(True)
    version = lab.sadb.version
    lab.call(lambda now: lab.member.clear(now, group_id=7))
    assert lab.sadb.version == version and lab.of(SasCleared) == []


def test_two_vpns_share_one_ike_sa_and_pull_one_at_a_time(store):
    lab = Lab.make([vpn("one", 1), vpn("two", 2, interface="eth2")], {KS1: key_server(store)})
    lab.link(True)
    lab.link(True, interface="eth2")
    assert lab.state("one") == lab.state("two") == "REGISTERED"
    assert len(lab.of(IkeSaUp)) == 1
    assert sorted(lab.sadb.groups) == [1, 2]


def test_queued_registrations_survive_a_refusal_of_another_group(store):
    lab = Lab.make([vpn("bad", 99), vpn("good", 1)], {KS1: key_server(store)})
    lab.link(True)  # both start at once: "bad" pulls first, "good" waits for the IKE SA
    assert lab.state("bad") == "WAITING" and lab.state("good") == "REGISTERED"
    assert len(lab.of(IkeSaUp)) == 2  # the refusal took the first IKE SA down


def test_reload_with_a_changed_vpn_deletes_its_sas_and_registers_over_a_new_phase_1(store):
    lab = Lab.make([vpn("one", 1), vpn("two", 2)], {KS1: key_server(store)})
    lab.link(True)
    kept = lab.sadb.groups[2]
    lab.call(lambda now: lab.member.reconfigure([vpn("one", 1), vpn("two", 2)], now))  # equal settings
    assert lab.of(SasCleared) == [] and len(lab.of(Registered)) == 2
    renamed = [vpn("one", 1, gw=gateway(name="other")), vpn("two", 2)]
    lab.call(lambda now: lab.member.reconfigure(renamed, now))
    (cleared,) = lab.of(SasCleared)
    assert (cleared.vpn, cleared.reason) == ("one", "configuration changed")
    assert lab.state("one") == lab.state("two") == "REGISTERED"
    assert lab.sadb.groups[2] is kept
    # The old IKE SA was deleted and a new one made for the re-registration.
    ike = [type(e).__name__ for e in lab.events if isinstance(e, (IkeSaUp, IkeSaDown))]
    assert ike == ["IkeSaUp", "IkeSaDown", "IkeSaUp"]


def test_reload_removing_a_vpn_clears_it_and_adding_one_registers_it(store):
    lab = Lab.make([vpn("one", 1)], {KS1: key_server(store)})
    lab.link(True)
    lab.call(lambda now: lab.member.reconfigure([vpn("two", 2)], now))
    (cleared,) = lab.of(SasCleared)
    assert (cleared.vpn, cleared.reason) == ("one", "removed from the configuration")
    assert sorted(lab.sadb.groups) == [2] and list(lab.member.registrations) == ["two"]
    assert lab.state("two") == "REGISTERED"


def test_a_restarted_key_server_is_found_out_by_a_probe_and_serves_the_same_keys_over_a_fresh_phase_1(store):
    lab = Lab.make([vpn()], {KS1: key_server(store)})
    lab.link(True)
    first = lab.sadb.groups[1]
    lab.servers[KS1] = key_server(store, now=lab.now)  # kill -9 and restart: same store, no IKE SAs
    sent = len(lab.sent)
    lab.call(lambda now: lab.member.clear(now))
    took = lab.run(lambda: lab.state() == "REGISTERED")
    # PULL message 1 at 0 s; resent at 1 s with the first R-U-THERE; probes at 2 and 3 s (the PULL
    # is resent again at 3 s); the SA is dead at 4 s: Main Mode and the PULL on a fresh IKE SA.
    assert took == 4.0 and lab.of(AttemptFailed) == []
    assert exchanges(lab)[sent:] == ["GROUPKEY_PULL"] * 2 + ["INFORMATIONAL"] * 3 + ["GROUPKEY_PULL"] + [
        "IDENTITY_PROTECTION"
    ] * 3 + ["GROUPKEY_PULL"] * 2
    (down,) = lab.of(IkeSaDown)
    assert down.reason is DeleteReason.DEAD_PEER and len(lab.of(IkeSaUp)) == 2
    assert lab.member.stats["IKE SAs the key server forgot"] == 1
    again = lab.sadb.groups[1]
    assert again.kek is not None and first.kek is not None and again.kek.spi == first.kek.spi
    assert [t.spi for t in again.teks] == [t.spi for t in first.teks]


def test_a_lost_pull_under_a_used_ike_sa_is_probed_and_the_answer_keeps_the_sa(lab):
    lab.link(True)
    lab.apply(lab.member.clear(lab.now))
    lab.in_flight.clear()  # PULL message 1 is lost
    sent = len(lab.sent)
    took = lab.run(lambda: lab.state() == "REGISTERED")
    assert took == 1.0 and exchanges(lab)[sent:] == ["GROUPKEY_PULL", "INFORMATIONAL", "GROUPKEY_PULL"]
    assert lab.of(IkeSaDown) == [] and len(lab.of(IkeSaUp)) == 1


def test_a_lost_pull_under_a_fresh_ike_sa_is_only_resent(lab):
    lab.apply(lab.member.link_changed("eth1", True, lab.now))
    while not lab.of(IkeSaUp):
        lab.step()
    (pull,) = lab.in_flight
    assert ExchangeType(Header.decode(pull[2]).exchange) is ExchangeType.GROUPKEY_PULL
    lab.in_flight.clear()
    sent = len(lab.sent)
    assert lab.run(lambda: lab.state() == "REGISTERED") == 1.0
    assert exchanges(lab)[sent:] == ["GROUPKEY_PULL"] * 2


def test_a_key_server_gone_for_good_fails_over_sooner_once_the_probe_ends_the_stale_sa(store):
    lab = Lab.make([vpn()], {KS1: key_server(store)})
    lab.link(True)
    lab.servers.clear()
    lab.call(lambda now: lab.member.clear(now))
    took = lab.run(lambda: bool(lab.of(AttemptFailed)))
    (failed,) = lab.of(AttemptFailed)
    assert took == 4.0 + IKE_GIVE_UP and failed.failure is Failure.NO_RESPONSE and failed.reason.startswith("Phase 1: ")


def test_sas_expire_at_their_lifetime(lab):
    lab.link(True)
    tek = lab.sadb.groups[1].teks[0]
    lab.servers.clear()  # nothing replaces the TEK: its key server is gone before it rekeys
    lab.run(lambda: bool(lab.of(SaExpired)))
    assert lab.now == tek.expires_at
    (expired,) = lab.of(SaExpired)
    assert expired.message == f"group 1: TEK 0x{tek.spi.hex()} expired"
    assert lab.sadb.groups[1].teks == () and lab.sadb.groups[1].kek is not None


def test_the_ike_sa_ends_at_its_lifetime_and_the_next_pull_makes_a_new_one(store):
    short = GatewaySettings("gw", (KS1[0],), GM, GM_KEY, (Suite.parse(SUITE, lifetime=600),))
    lab = Lab.make([vpn(gw=short)], {KS1: key_server(store)})
    lab.link(True)
    lab.run(lambda: bool(lab.of(IkeSaDown)))
    assert lab.of(IkeSaDown)[0].reason is DeleteReason.EXPIRED and lab.state() == "REGISTERED"
    lab.call(lambda now: lab.member.clear(now))
    assert lab.state() == "REGISTERED" and len(lab.of(IkeSaUp)) == 2


def test_close_deletes_the_ike_sa_at_the_key_server(lab):
    lab.link(True)
    lab.call(lab.member.close)
    assert lab.of(SasCleared)[0].reason == "member stopping" and lab.sadb.groups == {}
    assert any(isinstance(e, IkeSaDeleted) and e.reason is DeleteReason.PEER for e in lab.server_events)
    assert lab.member.connections == {} and lab.member.timer is None


def test_pull_retransmission_uses_the_configured_policy(store):
    fast = RetransmitPolicy(initial=0.5, factor=1.0, maximum=0.5, attempts=2)
    lab = Lab.make([vpn()], {KS1: key_server(store)}, pull=fast)
    lab.link(True)
    lab.servers.clear()
    lab.call(lambda now: lab.member.clear(now))
    took = lab.run(lambda: bool(lab.of(AttemptFailed)))
    assert took == 1.0 and lab.of(AttemptFailed)[0].reason.endswith("after 2 attempts")


def test_pushes_under_a_kek_no_group_holds_are_counted(lab):
    lab.link(True)
    _, datagram = lab.sent[-1]
    push = bytearray(datagram)
    push[18] = ExchangeType.GROUPKEY_PUSH  # its cookies are the IKE SA's, not a KEK SPI
    assert lab.apply(lab.member.receive(bytes(push), KS1, lab.now)).datagrams == ()
    assert lab.member.stats["GROUPKEY-PUSH under unknown KEKs"] == 1


def test_datagrams_from_strangers_and_garbage_are_counted():
    member = Member([vpn()], SaDatabase())
    assert member.receive(b"short", KS1, T0).datagrams == ()
    assert member.stats["malformed datagrams"] == 1


@pytest.mark.parametrize(
    ("vpns", "problem"),
    [
        ([vpn("a", 1), vpn("a", 2)], "vpn names must be unique"),
        ([vpn("a", 1), vpn("b", 1)], "each group may be joined by one vpn only"),
        (
            [vpn("a", 1, gateway(name="g1")), vpn("b", 2, gateway(psk=WRONG_KEY, name="g2"))],
            "gateways g1 and g2 reach key server 198.18.0.1 from the same address with different IKE policies",
        ),
    ],
)
def test_settings_one_core_cannot_serve(vpns, problem):
    with pytest.raises(ValueError, match=problem):
        check_vpns(vpns)


def test_gateway_settings_are_checked():
    with pytest.raises(ValueError, match="5 server addresses; 1 to 4 are allowed"):
        gateway((KS1, KS2, KS3, ("198.18.0.13", 848), ("198.18.0.17", 848)))
    with pytest.raises(ValueError, match="listed twice"):
        gateway((KS1, KS1))
    with pytest.raises(ValueError, match="no IKE proposal"):
        GatewaySettings("gw", (KS1[0],), GM, GM_KEY, ())


def test_a_vpn_applied_to_two_interfaces_registers_while_either_is_up(store):
    lab = Lab.make([VpnSettings("lan", 1, gateway(), frozenset({"eth1", "eth2"}))], {KS1: key_server(store)})
    lab.link(True, interface="eth2")
    lab.link(True)
    lab.link(False)
    assert lab.state() == "REGISTERED" and len(lab.of(Registered)) == 1
    lab.link(False, interface="eth2")
    assert lab.state() == "DOWN" and lab.of(SasCleared)[0].reason == "interface eth2 down"


def test_a_vpn_applied_to_no_interface_never_registers():
    lab = Lab.make([VpnSettings("lan", 1, gateway(), frozenset())], {})
    lab.link(True)
    assert lab.state() == "DOWN" and lab.sent == []


def test_reload_changing_only_how_traffic_is_treated_still_reregisters(lab):
    lab.link(True)
    lab.call(lambda now: lab.member.reconfigure([replace(vpn(), traffic=("df-bit", "copy"))], now))
    assert lab.of(SasCleared)[0].reason == "configuration changed" and len(lab.of(Registered)) == 2


def test_stopping_the_vpn_whose_pull_runs_lets_the_next_one_pull(store):
    lab = Lab.make([vpn("one", 1), vpn("two", 2, interface="eth2")], {KS1: key_server(store)})
    lab.apply(lab.member.link_changed("eth1", True, lab.now))
    lab.apply(lab.member.link_changed("eth2", True, lab.now))
    while lab.state("one") != "REGISTERING":
        lab.step()
    assert lab.state("two") == "CONNECTING"  # queued behind "one" on the same IKE SA
    lab.link(False)
    assert lab.state("one") == "DOWN" and lab.state("two") == "REGISTERED"


def test_a_reload_closing_the_ike_sa_under_a_running_pull_restarts_that_registration(store):
    lab = Lab.make([vpn("one", 1), vpn("two", 2, interface="eth2")], {KS1: key_server(store)})
    lab.apply(lab.member.link_changed("eth1", True, lab.now))
    lab.apply(lab.member.link_changed("eth2", True, lab.now))
    while lab.state("one") != "REGISTERING":
        lab.step()
    changed = [vpn("one", 1, gateway(name="renamed")), vpn("two", 2, interface="eth2")]
    lab.call(lambda now: lab.member.reconfigure(changed, now))
    assert lab.state("one") == lab.state("two") == "REGISTERED"
    assert lab.of(AttemptFailed) == []  # nobody failed: the reload restarted them
