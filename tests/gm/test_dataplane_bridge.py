"""The member's configuration and SA database in the data plane's terms (``gm.dataplane_bridge``)."""

from __future__ import annotations

import sys
from dataclasses import replace
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import pytest
from member_lab import KS1, Lab, gateway, key_server, vpn

from groupvpn.config.model import FilterTerm, ServiceFilter, load_member
from groupvpn.config.values import DfBit, Direction, FilterAction
from groupvpn.dataplane import DropCounters
from groupvpn.dataplane.esp_path import Decapsulator, DfMode, Encapsulator, EspSa
from groupvpn.dataplane.spd import ANY_PORT, Action, FailOpenRule, Selector, Spd
from groupvpn.dataplane.spd import FilterTerm as DataplaneTerm
from groupvpn.dataplane.spd import ServiceFilter as DataplaneFilter
from groupvpn.dataplane.steering import key_server_bypass
from groupvpn.gdoi import Endpoint, GroupPolicy, SaPolicy, SenderIds, TekKeys, TekPolicy, TrafficSelector
from groupvpn.gm.dataplane_bridge import (
    Interface,
    NoDataplane,
    TrafficSettings,
    describe,
    fail_open_active,
    policy_state,
    selectors,
    service_filter,
)
from groupvpn.gm.member import VpnState
from groupvpn.gm.sadb import HANDOVER, SaDatabase
from groupvpn.ks.store import KeyStore
from groupvpn.wire.ident import AddressRange
from groupvpn.wire.numbers import AddressPreservation, IpProtocol, PolicyAction, SaDirection

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gdoi"))
from gdoi_support import CBC, CBC_SPI, GCM, GCM_SPI, GROUP, group_policy, group_sa, keys_for  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataplane"))
from dataplane_packets import udp  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = 5000.0
LOCAL = IPv4Address("198.18.1.2")
NEW_SPI = bytes.fromhex("00003003")
LAB_LINKS = (
    Interface("lo", 65536, steerable=False),
    Interface("wan", 1500),
    Interface("lan", 9000),
    Interface("gvpn0o", 1500, steerable=False),
    Interface("gvpn0i", 1500, steerable=False),
)


def branch() -> TrafficSettings:
    """The seed-shaped branch member: service set on eth1 both ways through a filter that skips OSPF and BGP,
    output, df-bit copy, one fail-open rule."""
    return TrafficSettings.of(load_member((EXAMPLES / "member-branch.conf").read_text()).vpns[0])


def lab_traffic(direction: Direction = Direction.OUTPUT, interface: str = "wan", **changes: object) -> TrafficSettings:
    (attachment,) = {a for a in branch().attachments if a.direction is direction}
    attached = replace(attachment, unit=replace(attachment.unit, interface=interface))
    return replace(TrafficSettings(direction, attachments=(attached,)), **changes)


# -- describe ------------------------------------------------------------------------------


def test_the_seed_configuration_becomes_traffic_settings():
    traffic = branch()
    assert (traffic.match_direction, traffic.df_bit, traffic.attached) == (Direction.OUTPUT, DfBit.COPY, ("eth1",))
    assert [(a.unit.interface, a.direction, a.service_filter.name) for a in traffic.attachments] == [
        ("eth1", Direction.INPUT, "routing"),
        ("eth1", Direction.OUTPUT, "routing"),
    ]
    assert traffic.reverse_direction is Direction.INPUT
    assert traffic.filters(Direction.OUTPUT) == traffic.filters(Direction.INPUT) == (ROUTING,)
    (rule,) = traffic.fail_open
    assert (rule.source, rule.destination) == (ip_network("198.18.100.0/24"), ip_network("198.18.0.123/32"))


def test_output_direction_steers_the_other_interfaces_into_the_wan_it_is_applied_to():
    traffic = replace(lab_traffic(), fail_open=branch().fail_open)
    description = describe(3, traffic, gateway(), LAB_LINKS)
    plan = description.steering
    assert (plan.lan, plan.wan, plan.families) == (("lan",), ("wan",), (4,))
    assert (plan.outbound_tun, plan.inbound_tun, plan.priority) == ("gvpn3o", "gvpn3i", 7199)
    assert description.mtu == 1500  # the WAN's, not the LAN's jumbo frames
    assert plan.bypass == key_server_bypass([KS1[0]], (848, 500))
    assert description.fail_open_rules == (
        FailOpenRule(ip_network("198.18.100.0/24"), ip_network("198.18.0.123/32")),
    )


def test_input_direction_steers_the_interface_it_is_applied_to_and_the_others_are_the_wan():
    links = (*LAB_LINKS, Interface("wan2", 1400))
    description = describe(0, lab_traffic(Direction.INPUT, "lan"), gateway(), links, ipv6=True)
    plan = description.steering
    assert (plan.lan, plan.wan, plan.families) == (("lan",), ("wan", "wan2"), (4, 6))
    assert description.mtu == 1400


def test_a_non_default_server_port_is_bypassed_with_ike():
    gw = gateway(((KS1[0], 10848),))
    plan = describe(0, lab_traffic(), gw, LAB_LINKS).steering
    assert plan.bypass == key_server_bypass([KS1[0]], (10848, 500))


@pytest.mark.parametrize(
    ("traffic", "links", "problem"),
    [
        (
            replace(lab_traffic(Direction.INPUT), match_direction=Direction.OUTPUT),
            LAB_LINKS,
            "applied to no interface in the output direction",
        ),
        (TrafficSettings(), LAB_LINKS, "applied to no interface in the output direction"),
        (lab_traffic(interface="lo"), LAB_LINKS, "applied to lo, which carries no transit traffic"),
        (lab_traffic(interface="eth7"), LAB_LINKS, "interface eth7 does not exist"),
        (lab_traffic(), LAB_LINKS[:2], "no LAN interface: the namespace has none besides wan"),
        (lab_traffic(Direction.INPUT, "lan"), LAB_LINKS[2:3], "no WAN interface: the namespace has none besides lan"),
    ],
)
def test_no_data_plane_and_why(traffic, links, problem):
    with pytest.raises(NoDataplane, match=problem):
        describe(0, traffic, gateway(), links)


# -- service filters -------------------------------------------------------------------------

ROUTING = ServiceFilter(
    "routing",
    4,
    (
        FilterTerm("ospf", protocols=(89,), action=FilterAction.SKIP),
        FilterTerm("bgp", protocols=(6,), destination_ports=((179, 179),), action=FilterAction.SKIP),
        FilterTerm("bgp-replies", protocols=(6,), source_ports=((179, 179),), action=FilterAction.SKIP),
        FilterTerm("the-rest"),
    ),
)


def test_a_service_filter_keeps_its_terms_in_order_each_the_cross_product_of_its_lists():
    a, b, c = (ip_network(f"198.18.{n}.0/24") for n in (1, 2, 3))
    term = FilterTerm("t", (a,), (b, c), (6, 17), (), ((179, 179), (5000, 5010)), FilterAction.SKIP)
    translated = service_filter(ServiceFilter("f", 4, (term, FilterTerm("rest"))))
    assert translated == DataplaneFilter(
        4,
        (
            DataplaneTerm(
                tuple(
                    Selector(a, destination, protocol, ANY_PORT, ports)
                    for destination in (b, c)
                    for protocol in (6, 17)
                    for ports in ((179, 179), (5000, 5010))
                ),
                skip=True,
            ),
            DataplaneTerm((Selector(),), skip=False),
        ),
    )
    assert service_filter(ServiceFilter("nothing", 6)) == DataplaneFilter(6)  # skips everything


@pytest.mark.parametrize(("direction", "interface"), [(Direction.OUTPUT, "wan"), (Direction.INPUT, "lan")])
def test_the_match_direction_s_filter_steers_the_lan_and_the_other_one_the_wan_s_esp(direction, interface):
    """Seed shape (output, on the WAN): the output filter picks what the LAN sends into the VPN, the input one
    which arriving ESP is decrypted; with match-direction input the service set is on the LAN the other way round."""
    only_b = ServiceFilter("only-b", 4, (FilterTerm("b", destinations=(ip_network("198.18.2.0/24"),)),))
    (protecting,) = lab_traffic(direction, interface).attachments
    reverse = Direction.INPUT if direction is Direction.OUTPUT else Direction.OUTPUT
    other = replace(protecting, direction=reverse, service_filter=only_b)
    plan = describe(0, TrafficSettings(direction, attachments=(other, protecting)), gateway(), LAB_LINKS).steering
    assert (plan.lan, plan.wan) == (("lan",), ("wan",))
    assert (plan.outbound_filters, plan.inbound_filters) == ((service_filter(ROUTING),), (service_filter(only_b),))


def test_a_family_the_namespace_does_not_steer_drops_its_filter():
    v6 = ServiceFilter("v6", 6, (FilterTerm("icmp6", protocols=(58,)),))
    (attachment,) = lab_traffic().attachments
    traffic = replace(lab_traffic(), attachments=(attachment, replace(attachment, service_filter=v6)))
    assert describe(0, traffic, gateway(), LAB_LINKS).steering.outbound_filters == (service_filter(ROUTING),)
    dual = describe(0, traffic, gateway(), LAB_LINKS, ipv6=True).steering
    assert dual.outbound_filters == (service_filter(ROUTING), service_filter(v6))


# -- selectors -----------------------------------------------------------------------------


def test_selectors_keep_protocol_and_ports_and_cover_ranges_exactly():
    single = TrafficSelector(17, Endpoint(ip_address("10.0.0.1"), 5000), Endpoint(ip_network("10.2.0.0/16")))
    assert selectors(single) == (
        Selector(ip_network("10.0.0.1/32"), ip_network("10.2.0.0/16"), IpProtocol.UDP, (5000, 5000), ANY_PORT),
    )
    span = AddressRange(ip_address("10.0.0.1"), ip_address("10.0.0.6"))
    ranged = selectors(TrafficSelector(0, Endpoint(span), Endpoint(ip_network("10.9.0.0/16"))))
    assert [str(s.source) for s in ranged] == ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
    assert {(s.destination, s.protocol, s.source_ports) for s in ranged} == {
        (ip_network("10.9.0.0/16"), None, ANY_PORT)
    }


# -- policy --------------------------------------------------------------------------------


def installed(policy: GroupPolicy | None = None, now: float = NOW) -> SaDatabase:
    db = SaDatabase()
    db.install(policy or group_policy(sa=group_sa(deny=True)), 0, now)
    return db


def state_at(db: SaDatabase, now: float, version: int = 1, **options: object):
    group = db.snapshot(now).groups.get(GROUP)
    return policy_state(version, group, DfBit.CLEAR, LOCAL, **options)  # type: ignore[arg-type]


def test_deny_entries_come_first_and_permits_encrypt_with_the_snapshot_tek():
    db = installed()
    policy = state_at(db, NOW)
    state = policy.state
    assert [(r.name, r.action) for r in state.rules] == [
        ("deny protocol 17 10.1.0.0/16 port 848 -> 10.2.0.0/16", PolicyAction.DENY),
        ("10.1.0.0/16 -> 10.2.0.0/16", PolicyAction.PERMIT),
        ("10.2.0.0/16 -> 10.1.0.0/16", PolicyAction.PERMIT),
        ("protocol 17 2001:db8:1::/48 port 5000 -> 2001:db8:2::/48 port 5000", PolicyAction.PERMIT),
    ]
    assert state.rules[0].selector == Selector(
        ip_network("10.1.0.0/16"), ip_network("10.2.0.0/16"), IpProtocol.UDP, (848, 848)
    )
    cbc = int.from_bytes(CBC_SPI, "big")
    # The GCM TEK decrypts, but without a Sender ID the member must not encrypt with it.
    assert dict(state.encrypting) == {"10.1.0.0/16 -> 10.2.0.0/16": cbc, "10.2.0.0/16 -> 10.1.0.0/16": cbc}
    reason = f"{GCM.name} needs a Sender ID to encrypt and the key server gave none"
    assert policy.unusable == (f"TEK 0x{GCM_SPI.hex()}: {reason}",)
    assert not state.fail_open and state.version == 1
    by_spi = {sa.spi: sa for sa in state.sas}
    assert set(by_spi) == {cbc, int.from_bytes(GCM_SPI, "big")}
    sa = by_spi[cbc]
    assert (sa.suite, sa.keys) == (CBC, keys_for(CBC, CBC_SPI.hex()))
    assert (sa.preservation, sa.local, sa.remote, sa.df, sa.replay_window) == (
        AddressPreservation.SOURCE_AND_DESTINATION,
        None,
        None,
        DfMode.CLEAR,
        10,  # the group's GAP window
    )
    assert sa.selectors == (
        Selector(ip_network("10.1.0.0/16"), ip_network("10.2.0.0/16")),
        Selector(ip_network("10.2.0.0/16"), ip_network("10.1.0.0/16")),
    )


def test_sender_ids_let_a_counter_mode_tek_encrypt_in_the_members_iv_space():
    sa = group_sa()
    db = installed(group_policy(sa=sa, sender_ids=SenderIds(12, (77, 78))))
    policy = policy_state(4, db.snapshot(NOW).groups[GROUP], DfBit.SET, LOCAL, db.groups[GROUP].sender_ids)
    gcm = int.from_bytes(GCM_SPI, "big")
    (config,) = [c for c in policy.state.sas if c.spi == gcm]
    assert (config.sid, config.sid_bits, config.df) == (77, 12, DfMode.SET)
    assert policy.state.encrypting["protocol 17 2001:db8:1::/48 port 5000 -> 2001:db8:2::/48 port 5000"] == gcm
    assert policy.unusable == ()


def test_without_a_gap_window_anti_replay_is_off():
    db = installed(group_policy(sa=group_sa(gap=False)))
    assert {sa.replay_window for sa in state_at(db, NOW).state.sas} == {0}


def one_tek(**changes: object) -> GroupPolicy:
    selector = TrafficSelector(0, Endpoint(ip_network("10.1.0.0/16")), Endpoint(ip_address("239.1.2.3")))
    tek = TekPolicy(CBC_SPI, selector, CBC, 3600, **changes)  # type: ignore[arg-type]
    return GroupPolicy(GROUP, SaPolicy((tek,)), (TekKeys(CBC_SPI, keys_for(CBC, "x")),))


def test_an_sa_that_does_not_preserve_addresses_uses_the_gateway_and_the_selectors_one_destination():
    policy = state_at(installed(one_tek(preservation=AddressPreservation.NONE)), NOW)
    (sa,) = policy.state.sas
    assert (sa.local, sa.remote) == (LOCAL, ip_address("239.1.2.3"))
    assert dict(policy.state.encrypting) == {"10.1.0.0/16 -> 239.1.2.3": sa.spi}


def test_an_sa_whose_outer_destination_cannot_be_known_is_left_out_and_named():
    selector = TrafficSelector(0, Endpoint(ip_network("10.1.0.0/16")), Endpoint(ip_network("10.2.0.0/16")))
    tek = TekPolicy(CBC_SPI, selector, CBC, 3600, preservation=AddressPreservation.SOURCE_ONLY)
    db = installed(GroupPolicy(GROUP, SaPolicy((tek,)), (TekKeys(CBC_SPI, keys_for(CBC, "x")),)))
    policy = state_at(db, NOW)
    assert policy.state.sas == () and dict(policy.state.encrypting) == {}
    assert [r.name for r in policy.state.rules] == ["10.1.0.0/16 -> 10.2.0.0/16"]  # its traffic is dropped
    assert policy.unusable == (
        f"TEK 0x{CBC_SPI.hex()}: the outer destination is not preserved (SOURCE_ONLY) "
        "and 10.2.0.0/16 is not one address",
    )


def test_a_receiver_only_tek_decrypts_but_never_encrypts():
    policy = state_at(installed(one_tek(direction=SaDirection.RECEIVER_ONLY)), NOW)
    assert len(policy.state.sas) == 1 and dict(policy.state.encrypting) == {}
    assert policy.unusable == (f"TEK 0x{CBC_SPI.hex()}: receiver-only: it decrypts but never encrypts",)


def test_a_group_without_sas_has_no_rules_and_may_fail_open():
    state = policy_state(2, None, DfBit.CLEAR, LOCAL, fail_open=True).state
    assert (state.version, state.rules, state.sas, dict(state.encrypting), state.fail_open) == (2, (), (), {}, True)


def with_successor(lifetime: int) -> GroupPolicy:
    policy = group_policy()
    extra = [replace(t, spi=NEW_SPI, lifetime=lifetime) for t in policy.teks if t.spi == CBC_SPI]
    sa = SaPolicy(policy.teks + tuple(extra), policy.kek, policy.gap)
    keys = policy.tek_keys + (TekKeys(NEW_SPI, keys_for(CBC, "new")),)
    return GroupPolicy(policy.group_id, sa, keys, policy.kek_keys)


def test_rollover_follows_the_sa_database_at_every_instant():
    db = installed(with_successor(7200))
    old_end = NOW + 3600
    snapshot = db.snapshot(NOW)
    instants = [NOW, snapshot.valid_until - 0.001, snapshot.valid_until]  # the GCM TEK's handover
    instants += [old_end - HANDOVER - 0.001, old_end - HANDOVER, old_end - 0.001, old_end, NOW + 7200 - 0.001]
    instants += [NOW + step * 97.3 for step in range(80)]
    seen = set()
    for now in sorted(instants):
        group = db.snapshot(now).groups[GROUP]
        state = state_at(db, now).state
        expected = {
            rule.name: int.from_bytes(tek.spi, "big")
            for rule, tek in group.encrypt
            if tek is not None and tek.spi != GCM_SPI  # no Sender ID: never encrypts
        }
        assert dict(state.encrypting) == expected, now
        assert {sa.spi for sa in state.sas} == {int.from_bytes(spi, "big") for spi in group.decrypt}, now
        seen.add(frozenset(state.encrypting.values()))
    new, old = int.from_bytes(NEW_SPI, "big"), int.from_bytes(CBC_SPI, "big")
    assert {frozenset({old}), frozenset({new})} <= seen  # the old TEK encrypted, then the new one
    assert dict(state_at(db, old_end - HANDOVER - 0.001).state.encrypting)["10.1.0.0/16 -> 10.2.0.0/16"] == old
    assert dict(state_at(db, old_end - HANDOVER).state.encrypting)["10.1.0.0/16 -> 10.2.0.0/16"] == new
    assert old in {sa.spi for sa in state_at(db, old_end - 0.001).state.sas}  # still decrypts
    assert old not in {sa.spi for sa in state_at(db, old_end).state.sas}
    assert state_at(db, NOW + 7200).state.encrypting == {}


# -- the translated policy works in the packet path ------------------------------------------


def test_the_translated_policy_encrypts_denies_and_decrypts_in_the_packet_path():
    state = state_at(installed(), NOW).state
    sas = {config.spi: EspSa(config) for config in state.sas}
    spd = Spd(state.rules)
    for name, spi in state.encrypting.items():
        spd.set_sa(name, sas[spi])
    protected = udp("10.1.0.5", "10.2.0.9")
    verdict = spd.lookup(protected)
    assert (verdict.action, verdict.sa.spi) == (Action.PROTECT, int.from_bytes(CBC_SPI, "big"))
    assert spd.lookup(udp("10.1.0.5", "10.2.0.9", sport=848)).action == Action.BYPASS  # the deny entry
    assert spd.lookup(udp("10.3.0.5", "10.2.0.9")).action == Action.DISCARD  # no rule: fail closed
    drops = DropCounters()
    out: list[bytes] = []
    assert Encapsulator(spd, 1500, drops=drops).process(protected, NOW, out) is None
    receiver = Decapsulator(drops=drops)
    receiver.install(sas.values())
    (esp,) = out
    assert esp[9] == IpProtocol.ESP and esp[12:20] == protected[12:20]  # header preservation
    assert receiver.process(esp, NOW) == protected
    assert drops.as_dict() == {}


def test_the_seed_s_service_filter_passes_routing_protocols_in_clear_in_the_packet_path():
    state = state_at(installed(), NOW).state
    sas = {config.spi: EspSa(config) for config in state.sas}
    plan = describe(0, lab_traffic(), gateway(), LAB_LINKS).steering
    spd = Spd(state.rules, bypass=plan.spd_bypass)
    for name, spi in state.encrypting.items():
        spd.set_sa(name, sas[spi])
    ospf = bytearray(udp("10.1.0.5", "10.2.0.9"))
    ospf[9] = 89  # the checksum is not looked at
    assert spd.lookup(bytes(ospf)).action == Action.BYPASS  # skipped
    assert spd.lookup(udp("10.1.0.5", "10.2.0.9")).action == Action.PROTECT  # the-rest: serviced
    assert spd.lookup(udp(KS1[0], "10.2.0.9", sport=848)).action == Action.BYPASS  # the key server, first


# -- fail-open -----------------------------------------------------------------------------


def test_fail_open_only_while_no_key_server_answers_and_off_as_soon_as_keys_arrive(tmp_path):
    lab = Lab.make([vpn()], {})  # the key server is dead
    registration = lab.member.registrations["lan"]
    snapshot = lambda: lab.sadb.snapshot(lab.now).groups.get(1)  # noqa: E731
    assert not fail_open_active(registration, snapshot())  # nothing tried yet: fail closed
    lab.link(True)
    lab.run(lambda: registration.last_failure is not None)
    assert registration.state is VpnState.WAITING and fail_open_active(registration, snapshot())
    assert policy_state(1, snapshot(), DfBit.CLEAR, LOCAL, fail_open=True).state.fail_open
    with KeyStore(tmp_path / "ks.db") as store:
        lab.servers[KS1] = key_server(store, now=lab.now)
        lab.run(lambda: registration.state is VpnState.REGISTERED)
        assert not fail_open_active(registration, snapshot())


def test_a_refusal_is_an_answer_so_it_never_opens(tmp_path):
    with KeyStore(tmp_path / "ks.db") as store:
        lab = Lab.make([vpn(group_id=3)], {KS1: key_server(store)})  # group 3 admits nobody we know
        registration = lab.member.registrations["lan"]
        lab.link(True)
        lab.run(lambda: registration.last_failure is not None)
        assert lab.sadb.groups.get(3) is None and not fail_open_active(registration, None)
