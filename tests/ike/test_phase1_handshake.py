"""Main Mode between our initiator and responder in memory: success, failures, loss, duplicates, bounds."""

from __future__ import annotations

import pytest

from groupvpn.crypto.cbc import ike_cipher
from groupvpn.crypto.ikev1 import phase1_iv, psk_keys
from groupvpn.ike import (
    FailureReason,
    Identity,
    IkeSaEstablished,
    IkeSaFailed,
    InitiatorState,
    Limits,
    PreSharedKey,
    PskStore,
    RetransmitPolicy,
    Role,
)
from groupvpn.ike.sa import CbcChain
from groupvpn.wire.isakmp import Hash, Identification, KeyExchange, Notify
from groupvpn.wire.message import Message, decode_message
from groupvpn.wire.numbers import DOI, ExchangeType, NotifyType
from phase1_link import (
    I_ADDR,
    OTHER_PSK,
    PSK,
    R_ADDR,
    Link,
    SeededRng,
    established,
    initiator,
    responder,
)

SUITES = [
    "3des-sha1-modp1024",
    "aes128-sha1-modp1536",
    "aes256-sha256-modp2048",
    "aes128-sha256-modp2048",
    "des-md5-modp768",
    "aes192-sha384-ecp256",
    "aes256-sha512-ecp384",
]


@pytest.mark.parametrize("name", SUITES)
def test_both_sides_derive_the_same_sa(name: str) -> None:
    link = established([name], [name])
    (ini,) = link.events["I"]
    (res,) = link.events["R"]
    assert isinstance(ini, IkeSaEstablished) and isinstance(res, IkeSaEstablished)
    a, b = ini.sa, res.sa
    assert (a.role, b.role) == (Role.INITIATOR, Role.RESPONDER)
    assert a.cookies == b.cookies and a.suite == b.suite and a.suite.name == name
    assert a.keys == b.keys and a.cipher_key == b.cipher_key and a.last_block == b.last_block
    assert len(a.cipher_key) == a.suite.key_size
    assert a.peer_identity == b.local_identity and b.peer_identity == a.local_identity
    assert link.initiator.state is InitiatorState.ESTABLISHED and link.responder.half_open == 0
    assert link.responder.sa(a.cookies) == b and link.initiator.sa == a
    assert (len(link.sent["I"]), len(link.sent["R"])) == (3, 3)


def test_keys_follow_rfc_2409_from_the_exchanged_values() -> None:
    """Recompute SKEYID* and the message 5 IV from what travelled, independently of the cores."""
    link = established()
    sa = link.initiator.sa
    assert sa is not None
    mm1, mm3, _ = (decode_message(d) for d in link.sent["I"])
    _, mm4, _ = (decode_message(d) for d in link.sent["R"])
    ke_i, ni = mm3.payloads
    ke_r, nr = mm4.payloads
    # The responder's DH secret is not exposed; recover g^xy through the initiator's key pair.
    g_xy = link.initiator._keypair.shared_secret(ke_r.data)  # type: ignore[union-attr]
    keys = psk_keys(sa.suite.hash, PSK.secret, ni.data, nr.data, g_xy, sa.icookie, sa.rcookie)
    assert keys == sa.keys
    mm5 = decode_message(link.sent["I"][2])
    iv = phase1_iv(sa.suite.hash, ke_i.data, ke_r.data, 16)
    plain = ike_cipher(sa.suite.encryption).decrypt(sa.cipher_key, iv, mm5.ciphertext)
    payloads, _ = mm5.decode_plaintext(plain)
    assert [type(p) for p in payloads] == [Identification, Hash]
    assert mm1.payloads[0].encode_body() == link.sent["I"][0][32 : 28 + len(mm1.payloads[0].encode())]


def test_responder_takes_the_first_offered_transform_it_accepts() -> None:
    link = established(
        ["aes256-sha256-modp2048", "aes128-sha1-modp1536", "3des-sha1-modp1024"],
        ["3des-sha1-modp1024", "aes128-sha1-modp1536"],
    )
    sa = link.events["I"][0].sa  # type: ignore[union-attr]
    assert sa.suite.name == "aes128-sha1-modp1536"
    reply = decode_message(link.sent["R"][0]).payloads[0]
    assert [t.number for p in reply.proposals for t in p.transforms] == [2]  # type: ignore[union-attr]


def test_lifetime_is_the_shorter_of_offer_and_configuration() -> None:
    link = Link(initiator(lifetime=3600), responder(lifetime=600)).start().deliver(now=5.0)
    assert link.responder.sessions and next(iter(link.responder.sessions.values())).sa.expires_at == 605.0
    assert link.initiator.sa is not None and link.initiator.sa.expires_at == 3605.0


def test_no_proposal_chosen_is_reported_on_both_sides_and_leaves_no_state() -> None:
    link = Link(initiator(["aes128-sha256-modp2048"]), responder(["3des-sha1-modp1024", "aes256-sha1-modp1536"]))
    link.start().deliver()
    (ini,), (res,) = link.events["I"], link.events["R"]
    assert isinstance(ini, IkeSaFailed) and ini.reason is FailureReason.NO_PROPOSAL_CHOSEN
    assert ini.message == "no proposal chosen by 198.18.0.2 (offered: aes128-sha256-modp2048)"
    assert isinstance(res, IkeSaFailed) and res.reason is FailureReason.NO_PROPOSAL_CHOSEN
    assert res.message == (
        "no proposal chosen (offered: aes128-sha256-modp2048; "
        "accepted: 3des-sha1-modp1024, aes256-sha1-modp1536) from 198.18.0.1"
    )
    notify = decode_message(link.sent["R"][0])
    assert notify.header.exchange == ExchangeType.INFORMATIONAL and not notify.encrypted
    assert notify.payloads[0].notify_type == NotifyType.NO_PROPOSAL_CHOSEN  # type: ignore[union-attr]
    assert link.responder.half_open == 0 and not link.responder.sessions
    assert link.initiator.state is InitiatorState.FAILED and link.initiator.timer is None


def test_wrong_psk_fails_authentication_on_both_sides() -> None:
    link = Link(initiator(psk=OTHER_PSK), responder()).start().deliver()
    (ini,), (res,) = link.events["I"], link.events["R"]
    assert isinstance(res, IkeSaFailed) and res.reason is FailureReason.AUTHENTICATION_FAILED
    assert res.message == (
        "authentication failed: message 5 from 198.18.0.1 did not decrypt to valid payloads (pre-shared key differs?)"
    )
    assert isinstance(ini, IkeSaFailed) and ini.reason is FailureReason.AUTHENTICATION_FAILED
    assert ini.message == "authentication failed: 198.18.0.2 sent AUTHENTICATION_FAILED (unauthenticated) (pre-shared key differs?)"
    assert link.responder.half_open == 0 and not link.responder.sessions


def test_hash_r_mismatch_is_an_authentication_failure() -> None:
    """A message 6 that decrypts but carries a wrong HASH_R (re-sealed with the responder's keys)."""
    link = Link(initiator(), responder()).start()
    link.deliver(drop=lambda to, data: to == "I" and decode_message(data).encrypted)
    res_sa = next(iter(link.responder.sessions.values())).sa
    mm5 = decode_message(link.sent["I"][2])
    chain = CbcChain(res_sa.suite.cipher, res_sa.cipher_key, mm5.ciphertext[-16:])
    forged = chain.seal(
        res_sa.icookie, res_sa.rcookie, ExchangeType.IDENTITY_PROTECTION, (res_sa.local_identity, Hash(bytes(32))), 0
    )
    out = link.take("I", link.initiator.receive(forged, R_ADDR, 0.1))
    (failed,) = out.events
    assert isinstance(failed, IkeSaFailed) and failed.reason is FailureReason.AUTHENTICATION_FAILED
    assert failed.message == "authentication failed: HASH_R mismatch (pre-shared key differs?)"


def test_hash_i_mismatch_is_an_authentication_failure() -> None:
    """A message 5 under the right keys with a wrong HASH_I."""
    link = Link(initiator(), responder()).start()
    link.deliver(drop=lambda to, data: to == "R" and decode_message(data).encrypted)
    derived = link.initiator._derived  # the keys message 5 was sealed with
    assert derived is not None
    x = derived.exchanged
    forged = derived.message5_chain().seal(
        x.icookie, x.rcookie, ExchangeType.IDENTITY_PROTECTION, (link.initiator.identity, Hash(bytes(32))), 0
    )
    (failed,) = link.take("R", link.responder.receive(forged, I_ADDR, 0.1)).events
    assert isinstance(failed, IkeSaFailed) and failed.reason is FailureReason.AUTHENTICATION_FAILED
    assert failed.message == "authentication failed: HASH_I mismatch (pre-shared key differs?)"
    assert link.responder.half_open == 0 and not link.responder.sessions


def test_no_response_after_the_configured_attempts_with_backoff() -> None:
    ini = initiator(retransmit=RetransmitPolicy(initial=1.0, factor=2.0, maximum=8.0, attempts=5))
    first = ini.start(0.0)
    sent = [first.datagrams[0].data]
    deadlines = [first.timer]
    now = first.timer
    while True:
        out = ini.handle_timer(now)
        if out.events:
            break
        sent += [d.data for d in out.datagrams]
        deadlines.append(out.timer)
        now = out.timer
    assert deadlines == [1.0, 3.0, 7.0, 15.0, 23.0]
    assert len(sent) == 5 and len(set(sent)) == 1
    (failed,) = out.events
    assert isinstance(failed, IkeSaFailed) and failed.reason is FailureReason.NO_RESPONSE
    assert failed.message == "no response from 198.18.0.2 after 5 attempts"
    assert ini.timer is None


def test_early_timer_call_changes_nothing() -> None:
    ini = initiator()
    first = ini.start(0.0)
    out = ini.handle_timer(0.5)
    assert out.datagrams == () and out.events == () and out.timer == first.timer


@pytest.mark.parametrize("lost", [0, 1, 2])
def test_a_lost_responder_message_is_recovered_by_retransmission(lost: int) -> None:
    """Drop the responder's message 2, 4 or 6 once; the retransmitted request gets the stored reply."""
    link = Link(initiator(), responder()).start()
    dropped: list[bytes] = []

    def drop_once(to: str, data: bytes) -> bool:
        if to == "I" and len(link.sent["R"]) == lost + 1 and not dropped:
            dropped.append(data)
            return True
        return False

    link.deliver(now=0.0, drop=drop_once)
    assert link.kinds("I") == [] and link.initiator.timer == 1.0
    half_open_before = link.responder.half_open
    link.tick("I", 1.0)
    link.deliver(now=1.0)
    assert link.kinds("I") == ["IkeSaEstablished"] and link.kinds("R") == ["IkeSaEstablished"]
    assert link.sent["R"][lost + 1] == dropped[0], "the reply to a duplicate is the stored one"
    assert link.responder.stats["duplicate"] == 1
    assert half_open_before <= 1 and len(link.responder.sessions) == 1


def test_a_lost_request_is_simply_sent_again() -> None:
    link = Link(initiator(), responder()).start()
    link.deliver(drop=lambda to, data: to == "R" and len(link.sent["I"]) == 2)  # lose message 3
    assert link.responder.half_open == 1 and link.initiator.state is InitiatorState.SENT_3
    link.tick("I", 1.0)
    link.deliver(now=1.0)
    assert link.kinds("I") == ["IkeSaEstablished"]
    assert link.responder.stats["duplicate"] == 0


def test_duplicate_requests_get_the_stored_reply_not_new_state() -> None:
    """Step by step: each request repeated right after its reply gets that same reply again."""
    ini, res = initiator(), responder()
    request = ini.start(0.0).datagrams[0].data
    for step in range(3):
        reply = res.receive(request, I_ADDR, 0.0).datagrams[0].data
        state = (res.half_open, len(res.sessions))
        assert [d.data for d in res.receive(request, I_ADDR, 0.5).datagrams] == [reply]
        assert (res.half_open, len(res.sessions)) == state and res.stats["duplicate"] == step + 1
        out = ini.receive(reply, R_ADDR, 0.5)
        request = out.datagrams[0].data if out.datagrams else b""
    assert ini.state is InitiatorState.ESTABLISHED and len(res.sessions) == 1
    assert res.receive(request or b"", I_ADDR, 1.0).datagrams == ()


def test_duplicates_at_the_initiator_are_ignored() -> None:
    link = Link(initiator(), responder()).start()
    link.deliver()
    for reply in link.sent["R"]:
        out = link.initiator.receive(reply, R_ADDR, 1.0)
        assert out.datagrams == () and out.events == ()
    assert link.initiator.state is InitiatorState.ESTABLISHED


def test_responder_cookie_is_keyed_on_initiator_cookie_and_source() -> None:
    res = responder()
    mm1 = initiator().start(0.0).datagrams[0].data
    a = decode_message(res.receive(mm1, I_ADDR, 0.0).datagrams[0].data).header.rcookie
    again = decode_message(res.receive(mm1, I_ADDR, 0.5).datagrams[0].data).header.rcookie
    other_port = decode_message(res.receive(mm1, (I_ADDR[0], 500), 0.5).datagrams[0].data).header.rcookie
    assert a == again and a != other_port and a != bytes(8)
    assert res.half_open == 2


def test_half_open_bounds_per_source_and_in_total() -> None:
    res = responder(limits=Limits(per_source=2, total=3, half_open_timeout=30.0))
    offers = [initiator(rng=SeededRng(f"peer{i}")).start(0.0).datagrams[0].data for i in range(5)]
    for mm1 in offers[:3]:
        res.receive(mm1, I_ADDR, 0.0)
    assert res.half_open == 2 and res.stats["half-open limit"] == 1
    assert res.receive(offers[3], ("198.18.0.3", 848), 0.0).datagrams
    assert res.half_open == 3
    assert res.receive(offers[4], ("198.18.0.4", 848), 0.0).datagrams == ()
    assert res.stats["half-open limit"] == 2
    assert res.timer == 30.0
    res.handle_timer(30.0)
    assert res.half_open == 0 and res.stats["half-open expired"] == 3
    assert res.receive(offers[4], ("198.18.0.4", 848), 31.0).datagrams


def test_malformed_datagrams_are_dropped_and_counted_without_state_change() -> None:
    link = Link(initiator(), responder()).start()
    mm1 = link.in_flight[0][1]
    link.deliver()
    state = (link.initiator.state, link.initiator.sa, dict(link.responder.sessions), link.responder.half_open)
    garbage = [
        b"",
        b"\x00" * 27,
        mm1[:-1],  # Length no longer matches
        mm1[:17] + b"\x20" + mm1[18:],  # major version 2
        mm1[:19] + b"\x80" + mm1[20:],  # undefined flag bit
        mm1[:33] + b"\x01" + mm1[34:],  # reserved octet of the SA payload
        bytes(range(256)),
    ]
    for data in garbage:
        assert link.responder.receive(data, I_ADDR, 1.0).datagrams == ()
        out = link.initiator.receive(data, R_ADDR, 1.0)
        assert out.datagrams == () and out.events == ()
    assert link.responder.stats["malformed"] == len(garbage)
    assert link.initiator.stats["malformed"] == len(garbage)
    assert state == (link.initiator.state, link.initiator.sa, dict(link.responder.sessions), link.responder.half_open)


def test_garbled_message_3_does_not_advance_the_exchange() -> None:
    link = Link(initiator(), responder()).start()
    link.deliver(drop=lambda to, data: to == "R" and len(link.sent["I"]) == 2)
    mm3 = link.sent["I"][1]
    broken = mm3[:30] + b"\xff\xff" + mm3[32:]  # KE payload length past the end
    assert link.responder.receive(broken, I_ADDR, 0.5).datagrams == ()
    assert link.responder.stats["malformed"] == 1
    link.tick("I", 1.0)
    link.deliver(now=1.0)
    assert link.kinds("R") == ["IkeSaEstablished"]


@pytest.mark.parametrize("doi", [DOI.IPSEC, DOI.GDOI])
def test_responder_accepts_both_dois_and_echoes_the_offer(doi: DOI) -> None:
    link = Link(initiator(doi=doi), responder()).start().deliver()
    assert link.kinds("I") == ["IkeSaEstablished"]
    reply = decode_message(link.sent["R"][0]).payloads[0]
    assert reply.doi == doi  # type: ignore[union-attr]
    assert link.events["R"][0].sa.doi == doi  # type: ignore[union-attr]


def test_doi_not_supported_is_refused_in_clear() -> None:
    link = Link(initiator(doi=DOI.IPSEC), responder(dois=frozenset({DOI.GDOI}))).start().deliver()
    (failed,) = link.events["I"]
    assert isinstance(failed, IkeSaFailed) and failed.reason is FailureReason.PEER_NOTIFY
    assert failed.message == "198.18.0.2 sent DOI_NOT_SUPPORTED (unauthenticated) during Main Mode (sent message 1)"


def test_unsupported_exchange_is_refused_with_a_notify() -> None:
    ini = initiator()
    mm1 = bytearray(ini.start(0.0).datagrams[0].data)
    mm1[18] = ExchangeType.AGGRESSIVE
    out = responder().receive(bytes(mm1), I_ADDR, 0.0)
    (notify,) = decode_message(out.datagrams[0].data).payloads
    assert isinstance(notify, Notify) and notify.notify_type == NotifyType.INVALID_EXCHANGE_TYPE


def test_payload_not_allowed_in_message_1_is_refused() -> None:
    ini = initiator()
    mm1 = decode_message(ini.start(0.0).datagrams[0].data)
    extra = Message.build(
        mm1.header.icookie, bytes(8), ExchangeType.IDENTITY_PROTECTION, (*mm1.payloads, KeyExchange(bytes(128)))
    )
    res = responder()
    out = res.receive(extra.encode(), I_ADDR, 0.0)
    (notify,) = decode_message(out.datagrams[0].data).payloads
    assert isinstance(notify, Notify) and notify.notify_type == NotifyType.INVALID_PAYLOAD_TYPE
    assert res.half_open == 0


def test_peer_without_a_key_is_refused_at_message_1() -> None:
    psks = PskStore(by_address={"198.18.0.9": PSK})
    link = Link(initiator(), responder(psks=psks)).start().deliver()
    (res,) = link.events["R"]
    assert isinstance(res, IkeSaFailed) and res.message == "authentication failed: no pre-shared key for 198.18.0.1"
    assert link.responder.half_open == 0
    assert link.events["I"][0].reason is FailureReason.AUTHENTICATION_FAILED  # type: ignore[union-attr]


def test_identity_bound_keys_are_tried_until_one_verifies() -> None:
    me = Identity.address(I_ADDR[0])
    stranger = Identity.fqdn("gm9.example")
    psks = PskStore(by_identity={stranger: PSK, me: OTHER_PSK})
    link = Link(initiator(psk=OTHER_PSK), responder(psks=psks)).start().deliver()
    assert link.kinds("R") == ["IkeSaEstablished"]


def test_an_identity_bound_key_only_counts_for_that_identity() -> None:
    psks = PskStore(by_identity={Identity.fqdn("gm9.example"): PSK})
    link = Link(initiator(), responder(psks=psks)).start().deliver()
    (failed,) = link.events["R"]
    assert isinstance(failed, IkeSaFailed)
    assert failed.message == "authentication failed: no pre-shared key for identity 198.18.0.1"


def test_address_key_wins_over_the_default() -> None:
    psks = PskStore(by_address={I_ADDR[0]: OTHER_PSK}, default=PSK)
    assert Link(initiator(psk=OTHER_PSK), responder(psks=psks)).start().deliver().kinds("R") == ["IkeSaEstablished"]
    assert Link(initiator(psk=PSK), responder(psks=psks)).start().deliver().kinds("R") == ["IkeSaFailed"]


def test_short_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="pre-shared key has 19 characters; at least 20 are required"):
        PreSharedKey(b"x" * 19)
    assert "sssss" not in repr(PreSharedKey(b"s" * 20))
