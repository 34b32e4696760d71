"""Life of an established IKE SA: informationals, DPD, delete, expiry, and the Phase 2 API."""

from __future__ import annotations

import pytest

from groupvpn.crypto.ikev1 import informational_hash, phase2_iv
from groupvpn.ike import DeleteReason, IkeSaDeleted, InitiatorState, NotifyReceived, PeerAlive, RetransmitPolicy
from groupvpn.ike.informational import notify, protected, r_u_there
from groupvpn.wire.isakmp import Hash, Nonce
from groupvpn.wire.message import decode_message
from groupvpn.wire.numbers import ExchangeType, Flags, NotifyType
from phase1_link import I_ADDR, R_ADDR, Link, established, initiator, responder


def responder_session(link):  # type: ignore[no-untyped-def]
    (session,) = link.responder.sessions.values()
    return session


def test_initiator_delete_reaches_the_responder() -> None:
    link = established()
    link.take("I", link.initiator.delete(1.0))
    link.deliver(1.0)
    assert link.kinds("I")[-1] == "IkeSaDeleted" and link.events["I"][-1].reason is DeleteReason.LOCAL  # type: ignore[union-attr]
    assert link.events["R"][-1] == IkeSaDeleted(link.events["R"][0].sa, DeleteReason.PEER)  # type: ignore[union-attr]
    assert not link.responder.sessions and link.initiator.state is InitiatorState.CLOSED
    message = decode_message(link.sent["I"][-1])
    assert message.header.exchange == ExchangeType.INFORMATIONAL and message.header.flags == Flags.ENCRYPTION
    assert message.header.message_id != 0


def test_responder_delete_reaches_the_initiator() -> None:
    link = established()
    cookies = link.initiator.sa.cookies  # type: ignore[union-attr]
    link.take("R", link.responder.delete(cookies, 1.0))
    link.deliver(1.0)
    assert [type(e).__name__ for e in link.events["I"]] == ["IkeSaEstablished", "IkeSaDeleted"]
    assert link.events["I"][-1].reason is DeleteReason.PEER  # type: ignore[union-attr]
    assert link.initiator.state is InitiatorState.CLOSED and link.initiator.timer is None


def test_informational_carries_hash_first_computed_over_the_notify() -> None:
    link = established()
    sa = link.initiator.sa
    assert sa is not None
    link.take("I", link.initiator.probe(1.0))
    datagram = link.in_flight[-1][1]
    message = decode_message(datagram)
    mid = message.header.message_id
    chain = sa.exchange(mid)
    assert chain.iv == phase2_iv(sa.suite.hash, sa.last_block, mid, 16)
    hash_, item = chain.open(message)
    assert isinstance(hash_, Hash) and item.notify_type == NotifyType.R_U_THERE  # type: ignore[union-attr]
    assert item.spi == sa.cookies and len(item.data) == 4  # type: ignore[union-attr]
    assert hash_.data == informational_hash(sa.suite.hash, sa.skeyid_a, mid, item.encode())


@pytest.mark.parametrize("prober", ["I", "R"])
def test_dpd_round_trip_in_both_directions(prober: str) -> None:
    link = established()
    sa = link.initiator.sa
    assert sa is not None and sa.peer_supports_dpd
    out = link.initiator.probe(1.0) if prober == "I" else link.responder.probe(sa.cookies, 1.0)
    link.take(prober, out)
    link.deliver(1.0)
    (alive,) = [e for e in link.events[prober] if isinstance(e, PeerAlive)]
    assert alive.sa.cookies == sa.cookies
    other = "R" if prober == "I" else "I"
    assert not [e for e in link.events[other] if not type(e).__name__ == "IkeSaEstablished"]


def test_r_u_there_with_hash_last_is_accepted() -> None:
    """RFC 3706's figure puts HASH after the notify; the HASH then covers the notify as sent."""
    link = established()
    sa = link.initiator.sa
    assert sa is not None
    item = r_u_there(sa, 7)
    mid = 0x01020304
    digest = sa.hash(mid, item.encode(next_payload=8))
    datagram = sa.seal(ExchangeType.INFORMATIONAL, (item, Hash(digest)), mid)
    out = link.responder.receive(datagram, I_ADDR, 1.0)
    (reply,) = out.datagrams
    ack = responder_session(link).sa.exchange(decode_message(reply.data).header.message_id).open(
        decode_message(reply.data)
    )[1]
    assert ack.notify_type == NotifyType.R_U_THERE_ACK and ack.data == (7).to_bytes(4, "big")  # type: ignore[union-attr]


def test_dead_peer_detection_after_idle_time() -> None:
    link = established(dpd_idle=10.0)
    assert link.initiator.timer == 10.0
    now = 10.0
    probes = 0
    while not any(isinstance(e, IkeSaDeleted) for e in link.events["I"]):
        assert link.initiator.timer is not None and probes < 10
        now = link.initiator.timer
        out = link.tick("I", now)
        probes += len(out.datagrams)
        link.in_flight.clear()  # the responder has gone silent
    assert probes == RetransmitPolicy().attempts
    assert link.events["I"][-1].reason is DeleteReason.DEAD_PEER  # type: ignore[union-attr]
    assert link.initiator.state is InitiatorState.CLOSED and link.initiator.timer is None


def test_a_probe_follows_the_initiators_dpd_policy() -> None:
    """A member probing a key server it suspects gone wants an answer in seconds, not DPD's usual 23 s."""
    quick = RetransmitPolicy(initial=1.0, factor=1.0, maximum=1.0, attempts=3)
    link = Link(initiator(dpd_retransmit=quick), responder()).start().deliver()
    link.take("I", link.initiator.probe(5.0))
    link.in_flight.clear()  # the responder has gone silent
    sent = [5.0]
    while not any(isinstance(e, IkeSaDeleted) for e in link.events["I"]):
        now = link.initiator.timer
        assert now is not None and len(sent) < 10
        if link.tick("I", now).datagrams:
            sent.append(now)
        link.in_flight.clear()
    assert sent == [5.0, 6.0, 7.0] and now == 8.0
    assert link.events["I"][-1].reason is DeleteReason.DEAD_PEER  # type: ignore[union-attr]


def test_an_answered_probe_resets_the_idle_clock() -> None:
    link = established(dpd_idle=10.0)
    link.tick("I", 10.0)
    link.deliver(10.5)
    assert isinstance(link.events["I"][-1], PeerAlive)
    assert link.initiator.timer == 20.5


def test_lifetime_expiry_deletes_on_both_sides() -> None:
    link = established(lifetime=60)
    assert link.initiator.timer == 60.0 and link.responder.timer == 60.0
    assert link.tick("I", 59.9).datagrams == ()
    link.tick("I", 60.0)
    link.tick("R", 60.0)
    link.deliver(60.0)
    assert link.events["I"][1].reason is DeleteReason.EXPIRED  # type: ignore[union-attr]
    assert link.events["R"][1].reason is DeleteReason.EXPIRED  # type: ignore[union-attr]
    assert not link.responder.sessions and link.initiator.state is InitiatorState.CLOSED
    assert len(link.events["I"]) == 2 and len(link.events["R"]) == 2


def test_other_notifies_surface_as_events() -> None:
    link = established()
    sa = link.initiator.sa
    assert sa is not None
    datagram = protected(sa, notify(sa, NotifyType.INITIAL_CONTACT), 0x0BADCAFE)
    (event,) = link.responder.receive(datagram, I_ADDR, 1.0).events
    assert isinstance(event, NotifyReceived) and event.notify_type == NotifyType.INITIAL_CONTACT
    assert event.sa is not None and event.sa.cookies == sa.cookies


def test_tampered_or_replayed_informationals_are_dropped_and_counted() -> None:
    link = established()
    sa = link.initiator.sa
    assert sa is not None
    good = protected(sa, notify(sa, NotifyType.INITIAL_CONTACT), 0x11111111)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    assert link.responder.receive(tampered, I_ADDR, 1.0).events == ()
    assert link.responder.stats["bad informational"] == 1
    assert len(link.responder.receive(good, I_ADDR, 1.0).events) == 1
    assert link.responder.receive(good, I_ADDR, 1.0).events == ()
    assert link.responder.stats["replayed informational"] == 1
    # wrong HASH, correctly encrypted
    item = notify(sa, NotifyType.INITIAL_CONTACT)
    forged = sa.seal(ExchangeType.INFORMATIONAL, (Hash(bytes(32)), item), 0x22222222)
    assert link.responder.receive(forged, I_ADDR, 1.0).events == ()
    assert link.responder.stats["bad informational"] == 2
    assert len(link.responder.sessions) == 1


def test_informational_from_another_address_is_ignored() -> None:
    link = established()
    sa = link.initiator.sa
    assert sa is not None
    datagram = protected(sa, notify(sa, NotifyType.INITIAL_CONTACT), 0x33333333)
    assert link.responder.receive(datagram, ("198.18.0.99", 848), 1.0).events == ()
    assert link.initiator.receive(datagram, ("198.18.0.99", 848), 1.0).events == ()


def test_quick_mode_under_our_sa_is_refused_with_invalid_exchange_type() -> None:
    link = established()
    sa = link.initiator.sa
    assert sa is not None
    quick_mode = sa.seal(ExchangeType.GROUPKEY_PULL, (Hash(bytes(32)), Nonce(bytes(16))), 0x44444444)
    out = link.responder.receive(quick_mode, I_ADDR, 1.0)
    (event,) = link.initiator.receive(out.datagrams[0].data, R_ADDR, 1.0).events
    assert isinstance(event, NotifyReceived) and event.notify_type == NotifyType.INVALID_EXCHANGE_TYPE


def test_phase2_messages_round_trip_under_a_message_id() -> None:
    """The API GROUPKEY-PULL builds on: each side's chain for one M-ID, chaining message to message."""
    link = established()
    a = link.initiator.sa
    b = responder_session(link).sa
    assert a is not None
    mid = 0xC0FFEE01
    mine, theirs = a.exchange(mid), b.exchange(mid)
    assert mine.iv == theirs.iv == a.phase2_iv(mid) == b.phase2_iv(mid)
    first = (Hash(a.hash(mid, Nonce(bytes(range(16))).encode())), Nonce(bytes(range(16))))
    datagram = mine.seal(a.icookie, a.rcookie, ExchangeType.GROUPKEY_PULL, first, mid)
    message = decode_message(datagram)
    assert message.header.message_id == mid and message.encrypted
    iv_before = theirs.iv
    assert theirs.open(message) == first
    assert theirs.iv == iv_before, "open alone must not advance the chain"
    theirs.advance(message)
    assert theirs.iv == mine.iv == message.ciphertext[-16:]
    reply = theirs.seal(b.icookie, b.rcookie, ExchangeType.GROUPKEY_PULL, (Nonce(b"\x55" * 16),), mid)
    assert mine.open(decode_message(reply)) == (Nonce(b"\x55" * 16),)
    assert a.hash(mid, b"x") == b.hash(mid, b"x")



def test_sa_repr_shows_no_key_material() -> None:
    sa = established().initiator.sa
    assert sa is not None
    text = repr(sa)
    for secret in (sa.cipher_key, sa.skeyid_d, sa.skeyid_a, sa.skeyid_e, sa.keys.skeyid, sa.last_block):
        assert repr(secret) not in text and secret.hex() not in text
