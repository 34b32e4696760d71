"""GROUPKEY-PULL between a member and a key server over a real IKE SA: success, refusals, loss, forgery."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from gdoi_support import GROUP, KEK_SPI, group_policy, group_sa
from groupvpn.gdoi import (
    FailureKind,
    LastPush,
    MemberRegistered,
    Offer,
    Peer,
    PullInitiator,
    PullOutput,
    PullResponder,
    PullState,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationRefused,
    SaPolicy,
    SenderIds,
)
from groupvpn.ike.informational import open_protected
from groupvpn.ike.sa import IkeSa
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.gdoi import Gap, GroupSa, IpsecTek, KeyDownload, SaTek, SequenceNumber
from groupvpn.wire.ident import TrafficId
from groupvpn.wire.isakmp import Hash, Identification, Nonce, Notify
from groupvpn.wire.message import Payload, decode_message
from groupvpn.wire.numbers import ExchangeType, Flags, GapAttribute, NotifyType
from pull_link import PULL_MID, Directory, PeerView, PullLink, ike_sas, last_block

MEMBER = "198.18.0.1"
SERVER = "198.18.0.2"


def directory(seq: int = 4, **kwargs: object) -> Directory:
    return Directory({GROUP: Offer(group_policy(sa=group_sa(deny=True)), seq)}, **kwargs)  # type: ignore[arg-type]


def notify_in(datagram: bytes, sa: IkeSa) -> Notify:
    """The one notify of a protected informational, authenticated as the receiving IKE session would."""
    message = decode_message(datagram)
    assert message.header.exchange == ExchangeType.INFORMATIONAL and message.header.message_id not in (0, PULL_MID)
    (item,) = open_protected(sa, message).notifies
    return item


def member_peer() -> Peer:
    return Peer((MEMBER, 848), ike_sas()[1].peer_identity)


# -- success ------------------------------------------------------------------------------


def test_a_full_pull_delivers_kek_two_teks_gap_and_deny_entries() -> None:
    dirs = directory()
    link = PullLink.make(dirs).start().deliver()
    sids = SenderIds(16, (0,))
    (done,) = link.events["GM"]
    assert isinstance(done, RegistrationComplete)
    assert done.policy == replace(dirs.offers[GROUP].policy, sender_ids=sids)
    assert [t.action.name for t in done.policy.teks] == ["PERMIT", "PERMIT", "PERMIT", "DENY"]
    assert (done.seq, done.stale_seq) == (4, False)
    assert link.events["KS"] == [MemberRegistered(member_peer(), GROUP, PULL_MID, 4, sids)]
    assert dirs.calls == [("lookup", GROUP, MEMBER), ("allocate", GROUP, 1)]
    assert link.member.state is PullState.DONE and link.member.next_deadline is None
    assert link.server is not None and link.server.finished
    assert (len(link.sent["GM"]), len(link.sent["KS"])) == (2, 2)


def test_every_message_has_the_rfc_layout_and_hash() -> None:
    dirs = directory()
    link = PullLink.make(dirs).start().deliver()
    m1, m3 = link.sent["GM"]
    m2, m4 = link.sent["KS"]
    sa = ike_sas()[0]
    for datagram in (m1, m2, m3, m4):
        header = decode_message(datagram).header
        assert (header.exchange, header.message_id) == (ExchangeType.GROUPKEY_PULL, PULL_MID)
        assert header.flags == Flags.ENCRYPTION
        assert (header.icookie, header.rcookie) == (sa.icookie, sa.rcookie)
    view = PeerView(sa)
    p1 = view.read(m1)
    assert [type(p) for p in p1] == [Hash, Nonce, Identification]
    assert p1[2] == Identification.group(GROUP) and p1[2].encode_body()[:4] == bytes([11, 0, 0, 0])
    ni = p1[1].data  # type: ignore[union-attr]
    assert len(ni) == 32 and p1[0].data == view.expected_hash(1, p1[1:], ni)  # type: ignore[union-attr]
    p2 = view.read(m2)
    assert [type(p) for p in p2] == [Hash, Nonce, GroupSa] and p2[2] == dirs.offers[GROUP].policy.sa.to_wire()
    nr = p2[1].data  # type: ignore[union-attr]
    assert p2[0].data == view.expected_hash(2, p2[1:], ni)  # type: ignore[union-attr]
    p3 = view.read(m3)
    assert [type(p) for p in p3] == [Hash]
    assert p3[0].data == view.expected_hash(3, (), ni, nr)  # type: ignore[union-attr]
    p4 = view.read(m4)
    kd = replace(dirs.offers[GROUP].policy, sender_ids=SenderIds(16, (0,))).key_download()
    assert list(p4[1:]) == [SequenceNumber(4), kd]
    assert p4[0].data == view.expected_hash(4, p4[1:], ni, nr)  # type: ignore[union-attr]


def test_a_group_without_kek_sends_no_seq() -> None:
    sa = SaPolicy(group_sa().teks[:2])
    dirs = Directory({GROUP: Offer(group_policy(sa=sa), seq=7)})
    link = PullLink.make(dirs).start().deliver()
    (done,) = link.events["GM"]
    assert isinstance(done, RegistrationComplete) and done.seq is None and done.policy.kek is None
    assert dirs.calls == [("lookup", GROUP, MEMBER)]  # no counter-mode TEK: no SIDs
    view = PeerView(ike_sas()[0])
    for datagram in (link.sent["GM"][0], link.sent["KS"][0], link.sent["GM"][1]):
        view.read(datagram)
    assert [type(p) for p in view.read(link.sent["KS"][1])] == [Hash, KeyDownload]


@pytest.mark.parametrize("suite", ["3des-sha1-modp2048", "aes256-sha512-ecp384"])
def test_pull_over_other_phase1_suites(suite: str) -> None:
    link = PullLink.make(directory(), suite=suite).start().deliver()
    assert link.kinds("GM") == ["RegistrationComplete"] and link.kinds("KS") == ["MemberRegistered"]


def test_a_member_asks_for_several_sender_ids() -> None:
    dirs = directory()
    link = PullLink.make(dirs, sender_ids=3).start().deliver()
    (done,) = link.events["GM"]
    assert isinstance(done, RegistrationComplete) and done.policy.sender_ids == SenderIds(16, (0, 1, 2))
    assert dirs.calls[-1] == ("allocate", GROUP, 3)
    view = PeerView(ike_sas()[0])
    view.read(link.sent["GM"][0])
    view.read(link.sent["KS"][0])
    _, gap = view.read(link.sent["GM"][1])
    assert gap == Gap((Attribute.tv(GapAttribute.SENDER_ID_REQUEST, 3),))


# -- stale SEQ (RFC 6407 §3.3) -------------------------------------------------------------


@pytest.mark.parametrize(
    "last_push, seq, stale",
    [
        (None, 4, False),
        (LastPush(KEK_SPI, 9), 9, True),
        (LastPush(KEK_SPI, 4), 4, False),
        (LastPush(KEK_SPI, 2), 4, False),
        (LastPush(bytes(16), 9), 4, False),  # a PUSH under another KEK says nothing about this one
    ],
)
def test_a_seq_older_than_the_last_push_is_ignored(last_push: LastPush | None, seq: int, stale: bool) -> None:
    link = PullLink.make(directory(seq=4), last_push=last_push).start().deliver()
    (done,) = link.events["GM"]
    assert isinstance(done, RegistrationComplete) and (done.seq, done.stale_seq) == (seq, stale)


# -- refusals by the key server ----------------------------------------------------------------


@pytest.mark.parametrize(
    "dirs, notify_type, reason",
    [
        (Directory({}), NotifyType.INVALID_ID_INFORMATION, f"group {GROUP} is not configured"),
        (directory(authorized=frozenset({"198.18.0.99"})), NotifyType.AUTHENTICATION_FAILED,
         f"{MEMBER} is not authorized for group {GROUP}"),
    ],
)
def test_the_key_server_refuses_unknown_groups_and_unauthorized_members(
    dirs: Directory, notify_type: NotifyType, reason: str
) -> None:
    link = PullLink.make(dirs).start().deliver()
    assert link.events["KS"] == [RegistrationRefused(member_peer(), GROUP, notify_type, reason)]
    assert dirs.calls == [("lookup", GROUP, MEMBER)]
    assert link.server is not None and link.server.state is PullState.REFUSED
    # The refusal is an informational under a fresh M-ID; the PULL itself does not read it...
    assert link.member.stats["not this exchange"] == 1 and link.member.state is PullState.SENT_1
    item = notify_in(link.sent["KS"][0], ike_sas()[0])
    assert (item.notify_type, item.data) == (notify_type, reason.encode())
    # ...the member's IKE session authenticates it and hands it to every PULL on the SA.
    out = link.member.peer_notify(item.notify_type, item.data, 0.5)
    expected = f"key server {SERVER} refused registration to group {GROUP}: {notify_type.name} ({reason})"
    assert out.events == (RegistrationFailed(FailureKind.REFUSED, expected),) and out.datagrams == ()
    assert link.member.state is PullState.FAILED and link.member.next_deadline is None
    # A retransmitted message 1 gets the same refusal and no second lookup.
    link.to_server(link.sent["GM"][0], 1.0)
    assert link.sent["KS"][1] == link.sent["KS"][0] and len(dirs.calls) == 1


def test_notifies_that_do_not_end_the_registration() -> None:
    link = PullLink.make(directory()).start()
    assert link.member.peer_notify(NotifyType.INITIAL_CONTACT, b"", 0.1).events == ()
    assert link.member.state is PullState.SENT_1
    link.deliver()
    assert link.member.peer_notify(NotifyType.INVALID_ID_INFORMATION, b"late", 1.0).events == ()
    assert link.member.state is PullState.DONE and link.member.stats["ignored notify"] == 2


def test_a_group_id_that_is_not_a_key_id_is_refused() -> None:
    dirs = directory()
    link = PullLink.make(dirs)
    view = PeerView(ike_sas()[0])
    ni = b"\x11" * 16
    forged = view.reply(1, [Nonce(ni), Identification.of(ip_address("10.0.0.1"))], ni)
    link.to_server(forged)
    reason = (
        f"member {MEMBER} named its group with IPV4_ADDR of 4 octets; "
        "a group ID is an ID_KEY_ID of 4 octets with protocol and port 0"
    )
    assert link.events["KS"] == [RegistrationRefused(member_peer(), None, NotifyType.INVALID_ID_INFORMATION, reason)]
    assert dirs.calls == []


def test_a_member_gap_with_anything_but_a_sid_request_is_refused_before_any_state_changes() -> None:
    dirs = directory()
    link = PullLink.make(dirs)
    m1 = link.member.start(0.0)
    (m2,) = link.to_server(m1).datagrams
    view = PeerView(ike_sas()[0])
    ni = view.read(m1)[1].data  # type: ignore[union-attr]
    nr = view.read(m2)[1].data  # type: ignore[union-attr]
    forged = view.reply(3, [Gap((Attribute.tv(GapAttribute.ACTIVATION_TIME_DELAY, 5),))], ni, nr)
    link.to_server(forged)
    reason = (
        f"message 3 GAP from member {MEMBER} carries ACTIVATION_TIME_DELAY; "
        "a member sends one non-zero SENDER_ID_REQUEST"
    )
    assert link.events["KS"] == [RegistrationRefused(member_peer(), GROUP, NotifyType.PAYLOAD_MALFORMED, reason)]
    assert dirs.calls == [("lookup", GROUP, MEMBER)]


# -- loss, duplicates, retransmission ------------------------------------------------------------


def test_duplicates_get_the_cached_reply_and_change_nothing() -> None:
    dirs = directory()
    link = PullLink.make(dirs)
    m1 = link.member.start(0.0)
    (m2,) = link.to_server(m1).datagrams
    assert link.to_server(m1, 0.2).datagrams == (m2,)
    (m3,) = link.member.receive(m2, 0.3).datagrams
    assert link.member.receive(m2, 0.4).datagrams == ()
    (m4,) = link.to_server(m3, 0.5).datagrams
    again = link.to_server(m3, 0.6)
    assert again.datagrams == (m4,) and again.events == ()
    assert link.member.receive(m4, 0.7).events and link.member.receive(m4, 0.8).events == ()
    assert dirs.calls == [("lookup", GROUP, MEMBER), ("allocate", GROUP, 1)]
    assert link.kinds("KS") == ["MemberRegistered"]
    assert link.server is not None and link.server.stats["duplicate"] == 2 and link.member.stats["duplicate"] == 2


def test_a_lost_message_1_is_sent_again() -> None:
    link = PullLink.make(directory()).start(0.0).deliver(0.0, drop=lambda to, data: True)
    assert link.member.next_deadline == 1.0 and link.tick(0.9).datagrams == ()
    assert link.tick(1.0).datagrams == (link.sent["GM"][0],)
    link.deliver(1.0)
    assert link.kinds("GM") == ["RegistrationComplete"]


def test_a_lost_message_4_is_recovered_by_resending_message_3() -> None:
    dirs = directory()
    link = PullLink.make(dirs).start(0.0)
    lost: list[bytes] = []

    def lose_message_4(to: str, data: bytes) -> bool:
        if to == "GM" and link.member.state is PullState.SENT_3 and not lost:
            lost.append(data)
            return True
        return False

    link.deliver(0.0, drop=lose_message_4)
    assert lost and link.member.next_deadline == 1.0
    (resent,) = link.tick(1.0).datagrams
    assert resent == link.sent["GM"][1]
    link.deliver(1.0)
    assert link.kinds("GM") == ["RegistrationComplete"] and link.sent["KS"][2] == lost[0]
    assert link.kinds("KS") == ["MemberRegistered"] and dirs.calls.count(("allocate", GROUP, 1)) == 1


def test_no_reply_at_all_fails_after_the_backoff_schedule() -> None:
    link = PullLink.make(directory()).start(0.0)
    times = []
    for _ in range(10):
        deadline = link.member.next_deadline
        if deadline is None:
            break
        times.append(deadline)
        link.tick(deadline)
        link.deliver(deadline, drop=lambda to, data: True)
    assert times == [1.0, 3.0, 7.0, 15.0, 23.0]
    reason = f"no reply from key server {SERVER} to GROUPKEY-PULL message 1 for group {GROUP} after 5 attempts"
    assert link.events["GM"] == [RegistrationFailed(FailureKind.NO_RESPONSE, reason)]
    assert len(link.sent["GM"]) == 5 and len(set(link.sent["GM"])) == 1


# -- forgery and stray datagrams -----------------------------------------------------------------


def _tamper_hash(payloads: tuple[Payload, ...]) -> list[Payload]:
    digest = payloads[0].data  # type: ignore[union-attr]
    return [Hash(bytes([digest[0] ^ 1]) + digest[1:]), *payloads[1:]]


def test_tampered_hashes_are_dropped_at_every_step() -> None:
    dirs = directory()
    link = PullLink.make(dirs)
    view = PeerView(ike_sas()[0])
    m1 = link.member.start(0.0)
    view.read(m1)
    (m2,) = link.to_server(m1).datagrams
    forged2 = view.forge(_tamper_hash(view.read(m2)), last_block(m1))
    assert link.member.receive(forged2, 0.1) == PullOutput()
    assert link.member.stats["bad hash"] == 1 and link.member.state is PullState.SENT_1
    (m3,) = link.member.receive(m2, 0.2).datagrams
    forged3 = view.forge(_tamper_hash(view.read(m3)), last_block(m2))
    assert link.to_server(forged3, 0.3).datagrams == ()
    assert link.server is not None and link.server.stats["bad hash"] == 1 and link.events["KS"] == []
    assert dirs.calls == [("lookup", GROUP, MEMBER)]  # no group state before a valid message 3
    (m4,) = link.to_server(m3, 0.4).datagrams
    forged4 = view.forge(_tamper_hash(view.read(m4)), last_block(m3))
    assert link.member.receive(forged4, 0.5).events == ()
    assert link.member.stats["bad hash"] == 2 and link.member.state is PullState.SENT_3
    assert [type(e) for e in link.member.receive(m4, 0.6).events] == [RegistrationComplete]


def test_datagrams_of_other_exchanges_are_ignored() -> None:
    link = PullLink.make(directory()).start(0.0)
    m1 = link.sent["GM"][0]
    other_mid = m1[:20] + (PULL_MID + 1).to_bytes(4, "big") + m1[24:]
    out = link.to_server(other_mid)
    assert out.datagrams == () and link.server is not None and link.server.stats["not this exchange"] == 1
    assert link.to_server(m1[:-1]).datagrams == () and link.server.stats["malformed"] == 1
    assert link.member.receive(m1, 0.1).datagrams == ()  # our own message 1 is no message 2
    link.deliver()
    assert link.kinds("GM") == ["RegistrationComplete"]


def test_message_ids_and_group_ids_are_checked() -> None:
    member_sa, server_sa = ike_sas()
    with pytest.raises(ValueError, match="non-zero 32-bit Message ID"):
        PullResponder(server_sa, 0, directory())
    with pytest.raises(ValueError, match="does not fit 4 octets"):
        PullInitiator(member_sa, 1 << 32, PULL_MID)
    member = PullInitiator(member_sa, GROUP, PULL_MID)
    member.start(0.0)
    with pytest.raises(RuntimeError, match="already sent message 1"):
        member.start(0.0)


# -- policies the member refuses -----------------------------------------------------------------


def rogue_message2(
    member: PullInitiator, sa_payload: GroupSa
) -> tuple[PeerView, bytes, bytes, tuple[bytes, ...], list[object]]:
    """Run message 1 and answer it with ``sa_payload`` from a key server built by the test."""
    view = PeerView(ike_sas()[1])
    ni = view.read(member.start(0.0))[1].data  # type: ignore[union-attr]
    nr = b"\x42" * 24
    out = member.receive(view.reply(2, [Nonce(nr), sa_payload], ni), 0.1)
    return view, ni, nr, out.datagrams, list(out.events)


def _unpaired() -> GroupSa:
    sa = group_sa().to_wire()
    tek = sa.teks[1].policy
    assert isinstance(tek, IpsecTek)
    stray = SaTek(1, replace(tek, dst=TrafficId.of(ip_network("10.9.0.0/16"))))
    return replace(sa, teks=(sa.teks[0], stray, sa.teks[2]))


def _kek_with(attr: Attribute) -> GroupSa:
    sa = group_sa().to_wire()
    assert sa.kek is not None
    return replace(sa, kek=replace(sa.kek, attributes=sa.kek.attributes + (attr,)))


@pytest.mark.parametrize(
    "sa_payload, kind, notify_type, reason",
    [
        (
            _unpaired(),
            FailureKind.POLICY_REJECTED,
            NotifyType.BAD_PROPOSAL_SYNTAX,
            f"group {GROUP} policy from key server {SERVER} rejected: TEK 00001001 carries two unpaired policies "
            "(10.1.0.0/16 -> 10.2.0.0/16; 10.2.0.0/16 -> 10.9.0.0/16); two policies may share a TEK only as "
            "mirror images (A-B and B-A)",
        ),
        (
            _kek_with(Attribute.tv(150, 1)),
            FailureKind.POLICY_REJECTED,
            NotifyType.ATTRIBUTES_NOT_SUPPORTED,
            f"group {GROUP} policy from key server {SERVER} rejected: SA KEK {KEK_SPI.hex()}: attribute class 150 "
            "is not supported",
        ),
        (
            _kek_with(Attribute.tv(10, 1)),
            FailureKind.MALFORMED,
            NotifyType.PAYLOAD_MALFORMED,
            f"message 2 from key server {SERVER} is malformed: SA KEK at offset 177: unknown KEK attribute class 10",
        ),
    ],
)
def test_an_unacceptable_policy_ends_the_registration_with_a_notify(
    sa_payload: GroupSa, kind: FailureKind, notify_type: NotifyType, reason: str
) -> None:
    member = PullInitiator(ike_sas()[0], GROUP, PULL_MID)
    _, _, _, datagrams, events = rogue_message2(member, sa_payload)
    assert events == [RegistrationFailed(kind, reason)]
    (informational,) = datagrams
    item = notify_in(informational, ike_sas()[1])
    assert (item.notify_type, item.data) == (notify_type, reason.encode()[:256])
    assert member.state is PullState.FAILED and member.next_deadline is None


def test_a_nonce_of_the_wrong_size_is_refused() -> None:
    member = PullInitiator(ike_sas()[0], GROUP, PULL_MID)
    view = PeerView(ike_sas()[1])
    ni = view.read(member.start(0.0))[1].data  # type: ignore[union-attr]
    out = member.receive(view.reply(2, [Nonce(b"\x01" * 4), group_sa().to_wire()], ni), 0.1)
    problem = "its nonce of 4 octets is outside 8..128 (RFC 6407 §5.8)"
    reason = f"message 2 from key server {SERVER} is malformed: {problem}"
    assert out.events == (RegistrationFailed(FailureKind.MALFORMED, reason),)


def _message4(tail_of: object) -> tuple[list, PullInitiator]:
    member = PullInitiator(ike_sas()[0], GROUP, PULL_MID)
    policy = group_policy()
    view, ni, nr, (m3,), _ = rogue_message2(member, policy.sa.to_wire())
    view.read(m3)
    out = member.receive(view.reply(4, tail_of(policy), ni, nr), 0.2)  # type: ignore[operator]
    return list(out.events) + [notify_in(d, ike_sas()[1]) for d in out.datagrams], member


def test_a_kek_without_seq_is_refused() -> None:
    outcome, member = _message4(lambda policy: [policy.key_download()])
    reason = f"key server {SERVER} sent a KEK but no SEQ payload (RFC 6407 §3.2)"
    assert outcome[0] == RegistrationFailed(FailureKind.MALFORMED, reason)
    assert outcome[1].notify_type == NotifyType.PAYLOAD_MALFORMED


def test_a_key_of_the_wrong_length_is_refused() -> None:
    def short_gcm_key(policy):  # type: ignore[no-untyped-def]
        packets = list(policy.key_download().packets)
        packets[2] = replace(packets[2], attributes=(Attribute.tlv(1, bytes(32)),))
        return [SequenceNumber(0), KeyDownload(tuple(packets))]

    outcome, member = _message4(short_gcm_key)
    reason = (
        f"group {GROUP} policy from key server {SERVER} rejected: TEK 00002002: TEK_ALGORITHM_KEY is 32 octets, "
        "AES-256-GCM-16 needs 36 (key | 4-octet salt)"
    )
    assert outcome[0] == RegistrationFailed(FailureKind.POLICY_REJECTED, reason)
    assert (outcome[1].notify_type, outcome[1].data) == (NotifyType.INVALID_KEY_INFORMATION, reason.encode()[:256])
    assert member.state is PullState.FAILED
