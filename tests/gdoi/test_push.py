"""GROUPKEY-PUSH: built by the key server side, verified by the member side, and the acknowledgement it triggers."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest

from gdoi_support import CBC_SPI, GROUP, KEK_SPI, group_policy, group_sa, kek_keys, kek_policy, octets, signing_key
from groupvpn.crypto.gdoi import AckKeyLength, Kek
from groupvpn.crypto.sig import RsaEncoding, SigningKey, signature_scheme
from groupvpn.gdoi import AckRequest, GroupAssociatedPolicy, GroupPolicy, KekKeys, SaPolicy
from groupvpn.gdoi.ack import AckReceived, AckRejected, AckRejection, AckVerifier
from groupvpn.gdoi.pull import LastPush
from groupvpn.gdoi.push import (
    PushAccepted,
    PushFormError,
    PushPayloads,
    PushReceiver,
    PushRejected,
    PushRejection,
    build_push,
    seal_push,
)
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.gdoi import KeyDownload, KeyPacket, SequenceNumber
from groupvpn.wire.isakmp import Delete, RawPayload, Signature, VendorId
from groupvpn.wire.message import HEADER, Header, decode_payloads, encode_each
from groupvpn.wire.numbers import (
    DOI,
    ExchangeType,
    Flags,
    GapAttribute,
    GdoiProtocol,
    KekAckType,
    KeyPacketType,
    PayloadType,
    SigAlgorithm,
    SigHashAlgorithm,
)

MEMBER = ip_address("198.18.0.1")
SERVER = ("198.18.0.2", 848)
NOW = 100.0
NEW_SPI = bytes.fromhex("ffeeddccbbaa99887766554433221100")
KEK = kek_keys().kek
SCHEME = kek_policy().scheme
KEY = signing_key(SigAlgorithm.ECDSA_256)  # the key kek_keys() delivers
DELETE_TEK = Delete(DOI.GDOI, GdoiProtocol.IPSEC_ESP, 4, (CBC_SPI,))
DELETE_KEK = Delete(DOI.GDOI, GdoiProtocol.KEK, 16, (KEK_SPI,))


def receiver(seq: int = 0, **changes: object) -> PushReceiver:
    """A member of GROUP holding the reference KEK (ECDSA-256 signatures, SHA-256 acks requested)."""
    policy = kek_policy(**changes)
    member = PushReceiver(GROUP, MEMBER)
    member.install(policy, kek_keys(policy), seq)
    return member


def push(seq: int, *, spi: bytes = KEK_SPI, kek: Kek = KEK, key: SigningKey | None = None, **content: object) -> bytes:
    return build_push(kek, spi, PushPayloads(seq, **content), key or KEY, SCHEME)  # type: ignore[arg-type]


def forged(payloads: list, *, key: SigningKey | None = None) -> bytes:
    """Any payload chain, signed with the group's key and encrypted under its KEK (no form checks)."""
    return seal_push(KEK, KEK_SPI, payloads, key or KEY, SCHEME)


def accept(member: PushReceiver, datagram: bytes, now: float = NOW) -> PushAccepted:
    result = member.receive(datagram, SERVER, now)
    assert isinstance(result, PushAccepted), result
    return result


def reject(member: PushReceiver, datagram: bytes, reason: PushRejection) -> PushRejected:
    result = member.receive(datagram, SERVER, NOW)
    assert isinstance(result, PushRejected) and result.reason is reason, result
    return result


def tek_update() -> GroupPolicy:
    """New TEKs only: the paired AES-CBC TEK and the AES-GCM TEK, no KEK, no GAP."""
    return group_policy(sa=group_sa(kek=False, gap=False))


def new_kek(ack: AckRequest | None = AckRequest(KekAckType.KEK_SHA256)) -> GroupPolicy:
    """A KEK change: SA KEK under a new cookie pair and its KEK key packet."""
    policy = kek_policy(spi=NEW_SPI, ack=ack)
    keys = KekKeys(Kek.from_material(policy.algorithm, octets("next kek", 32), 128), KEY.public)
    return GroupPolicy(GROUP, SaPolicy(kek=policy), kek_keys=keys)


def with_gap() -> GroupPolicy:
    """A group-wide GAP change; it travels with a TEK (RFC 6407 §5.2.1: every SA has a SAK or a SAT)."""
    teks = tek_update()
    gap = GroupAssociatedPolicy(activation_delay=10, deactivation_delay=60)
    return replace(teks, sa=replace(teks.sa, gap=gap))


def sa_kd(policy: GroupPolicy) -> dict[str, object]:
    sa, kd = policy.to_wire()
    return {"group_sa": sa, "key_download": kd}


CONTENTS = {
    "seq-sig-only": lambda: ({}, None),
    "deletes-only": lambda: ({"deletes": (DELETE_TEK, DELETE_KEK)}, None),
    "tek-only": lambda: (sa_kd(tek_update()), tek_update()),
    "sak-and-kek": lambda: (sa_kd(new_kek()), new_kek()),
    "gap-with-tek": lambda: (sa_kd(with_gap()), with_gap()),
    "delete-and-tek": lambda: ({"deletes": (DELETE_TEK,), **sa_kd(tek_update())}, tek_update()),
}


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONTENTS))
def test_every_payload_combination_round_trips(name: str) -> None:
    content, policy = CONTENTS[name]()
    member = receiver(seq=4)
    accepted = accept(member, push(5, **content))
    assert accepted.payloads == PushPayloads(5, **content)  # type: ignore[arg-type]
    assert (accepted.kek_spi, accepted.source) == (KEK_SPI, SERVER)
    if policy is None:
        assert accepted.policy is None
    else:
        assert accepted.policy is not None and accepted.policy.to_wire() == policy.to_wire()
    assert member.rekey_sas[KEK_SPI].seq == 5 and member.rekey_sas[KEK_SPI].accepted_at == NOW
    assert member.last_push == LastPush(KEK_SPI, 5)
    assert member.accepted == 1 and not member.rejected


def test_the_wire_form_and_the_signed_octets() -> None:
    """HDR per RFC 6407 §4.2; SIG over "rekey" | HDR as sent (E flag, padded Length) | the payloads before SIG."""
    content, _ = CONTENTS["delete-and-tek"]()
    datagram = push(1, **content)
    header = Header.decode(datagram)
    assert (header.icookie + header.rcookie, header.exchange) == (KEK_SPI, ExchangeType.GROUPKEY_PUSH)
    assert (header.flags, header.message_id, header.length) == (Flags.ENCRYPTION, 0, len(datagram))
    assert header.next_payload == PayloadType.SEQ
    plaintext = KEK.decrypt(datagram[HEADER.size :])  # with the delivered IV, as every push under this KEK
    payloads, padding = decode_payloads(header.next_payload, plaintext, ExchangeType.GROUPKEY_PUSH)
    assert padding == bytes(len(padding)) and len(padding) < 16
    assert payloads[:-1] == PushPayloads(1, **content).to_wire()  # type: ignore[arg-type]
    signature = payloads[-1]
    assert isinstance(signature, Signature) and len(signature.data) == 64  # ECDSA-256: r | s
    before_sig = b"".join(encode_each(payloads)[:-1])  # the last one's Next Payload is SIG
    assert plaintext.startswith(before_sig)
    KEY.public.verify(SCHEME, datagram[: HEADER.size] + before_sig, signature.data)


@pytest.mark.parametrize(
    "sig, hash_, bits",
    [
        (SigAlgorithm.RSA, SigHashAlgorithm.SHA256, 2048),
        (SigAlgorithm.RSA, SigHashAlgorithm.SHA512, 2048),
        (SigAlgorithm.ECDSA_384, None, 384),
        (SigAlgorithm.ECDSA_521, None, 521),
    ],
)
def test_signature_algorithms(sig: SigAlgorithm, hash_: SigHashAlgorithm | None, bits: int) -> None:
    policy = kek_policy(sig_algorithm=sig, sig_hash=hash_, sig_key_bits=bits)
    member = PushReceiver(GROUP, MEMBER)
    member.install(policy, kek_keys(policy))
    content, _ = CONTENTS["tek-only"]()
    payloads = PushPayloads(1, **content)  # type: ignore[arg-type]
    accepted = accept(member, build_push(KEK, KEK_SPI, payloads, signing_key(sig), policy.scheme))
    assert accepted.policy is not None


def test_rsa_bare_hash_signatures_need_the_member_configured_for_them() -> None:
    """Cisco-derived key servers pad the bare hash (digest §8.10); a member opts in per receiver."""
    policy = kek_policy(sig_algorithm=SigAlgorithm.RSA, sig_hash=SigHashAlgorithm.SHA256, sig_key_bits=2048)
    bare = signature_scheme(SigAlgorithm.RSA, SigHashAlgorithm.SHA256, RsaEncoding.BARE_HASH)
    datagram = build_push(KEK, KEK_SPI, PushPayloads(1), signing_key(SigAlgorithm.RSA), bare)
    standard = PushReceiver(GROUP, MEMBER)
    standard.install(policy, kek_keys(policy))
    reject(standard, datagram, PushRejection.BAD_SIGNATURE)
    cisco = PushReceiver(GROUP, MEMBER, rsa_encoding=RsaEncoding.BARE_HASH)
    cisco.install(policy, kek_keys(policy))
    accept(cisco, datagram)


# -- replay, duplicates, forgeries ------------------------------------------------------------------


def test_seq_must_exceed_the_last_accepted_one_seeded_from_the_pull() -> None:
    member = receiver(seq=9)  # PULL message 4 said 9
    text = f"replayed push: SEQ 7 <= last accepted 9 for KEK {KEK_SPI.hex()} (from 198.18.0.2)"
    assert reject(member, push(7), PushRejection.REPLAY).text == text
    reject(member, push(9), PushRejection.REPLAY)
    accept(member, push(10))
    # The same SEQ again in a new datagram (ECDSA signatures differ each time): a replay, not a duplicate.
    assert reject(member, push(10), PushRejection.REPLAY).text.startswith("replayed push: SEQ 10 <= last accepted 10")
    reject(member, push(8), PushRejection.REPLAY)
    accept(member, push(12))  # gaps are fine: only "greater than"
    assert member.rejected == {PushRejection.REPLAY: 4} and member.accepted == 2


def test_an_exact_duplicate_is_dropped_before_decryption_and_re_acknowledged() -> None:
    member = receiver()
    datagram = push(1)
    first = accept(member, datagram)
    assert first.datagram_for_ack is not None
    again = reject(member, datagram, PushRejection.DUPLICATE)
    assert again.text == f"duplicate push from 198.18.0.2 under KEK {KEK_SPI.hex()} (accepted with SEQ 1)"
    assert again.datagram_for_ack == first.datagram_for_ack  # the key server retransmits when an ack is lost
    stale = push(1)
    reject(member, stale, PushRejection.REPLAY)
    again = reject(member, stale, PushRejection.DUPLICATE)
    assert again.datagram_for_ack is None and "(rejected earlier: replayed push: SEQ 1" in again.text
    assert member.rejected == {PushRejection.DUPLICATE: 2, PushRejection.REPLAY: 1}


def test_the_duplicate_cache_is_bounded() -> None:
    member = PushReceiver(GROUP, MEMBER, remembered=2)
    member.install(kek_policy(), kek_keys())
    first, second, third = push(1), push(2), push(3)
    for datagram in (first, second, third):
        accept(member, datagram)
    reject(member, third, PushRejection.DUPLICATE)
    reject(member, first, PushRejection.REPLAY)  # forgotten by the cache, still stopped by SEQ


def test_a_push_signed_with_another_key_is_rejected_and_its_seq_not_recorded() -> None:
    member = receiver(seq=3)
    result = reject(member, push(4, key=SigningKey.generate(SigAlgorithm.ECDSA_256)), PushRejection.BAD_SIGNATURE)
    assert result.text.startswith(f"push signature invalid (signed by another key?): SEQ 4 under KEK {KEK_SPI.hex()}")
    assert member.rekey_sas[KEK_SPI].seq == 3 and member.last_push is None
    accept(member, push(4))


def test_a_push_under_an_unknown_kek_spi() -> None:
    member = receiver()
    result = reject(member, push(1, spi=NEW_SPI), PushRejection.UNKNOWN_KEK)
    assert result.text == f"push from 198.18.0.2 under unknown KEK {NEW_SPI.hex()} (group {GROUP})"


def _with_header(datagram: bytes, **fields: object) -> bytes:
    header = replace(Header.decode(datagram), **fields)
    return header.encode() + datagram[HEADER.size :]


@pytest.mark.parametrize(
    "flags", [Flags.NONE, Flags.ENCRYPTION | Flags.COMMIT, Flags.ENCRYPTION | Flags.AUTHENTICATION_ONLY]
)
def test_flags_must_be_exactly_the_e_flag(flags: Flags) -> None:
    member = receiver()
    result = reject(member, _with_header(push(1), flags=flags), PushRejection.BAD_HEADER)
    expected = f"has flags {int(flags):#04x} and Message ID 0x0; a GROUPKEY-PUSH has exactly the E flag (0x01)"
    assert expected in result.text


def test_other_header_faults() -> None:
    member = receiver()
    reject(member, _with_header(push(1), message_id=7), PushRejection.BAD_HEADER)
    undefined = push(1)
    undefined = undefined[:19] + b"\x09" + undefined[20:]
    assert "undefined flag bits in 0x09" in reject(member, undefined, PushRejection.MALFORMED).text
    pull = _with_header(push(1), exchange=ExchangeType.GROUPKEY_PULL)
    assert reject(member, pull, PushRejection.MALFORMED).text == "GROUPKEY_PULL from 198.18.0.2 is not a GROUPKEY-PUSH"
    assert "header Length" in reject(member, push(1)[:-16], PushRejection.MALFORMED).text
    reject(member, push(1)[:20], PushRejection.MALFORMED)
    assert member.rejected == {PushRejection.BAD_HEADER: 1, PushRejection.MALFORMED: 4}


def _flip(datagram: bytes, index: int) -> bytes:
    return datagram[:index] + bytes([datagram[index] ^ 0x40]) + datagram[index + 1 :]


def test_tampered_ciphertext() -> None:
    member = receiver()
    datagram = push(1, **CONTENTS["tek-only"]()[0])
    # The first block holds the SEQ payload's header: garbage there breaks the payload chain.
    result = reject(member, _flip(datagram, HEADER.size + 3), PushRejection.UNREADABLE)
    assert result.text.startswith(f"push from 198.18.0.2 under KEK {KEK_SPI.hex()} does not decrypt to a payload chain")
    # The second-to-last block lies inside the signature (padding is under 16 octets): the chain holds, SIG fails.
    reject(member, _flip(datagram, len(datagram) - 20), PushRejection.BAD_SIGNATURE)
    # A ciphertext cut short of a whole block does not even decrypt.
    reject(member, _with_header(datagram[:-3], length=len(datagram) - 3), PushRejection.UNREADABLE)
    accept(member, datagram)


def test_a_push_under_the_right_spi_but_another_kek_is_unreadable() -> None:
    other = Kek.from_material(KEK.algorithm, octets("another kek", 32), 128)
    reject(receiver(), push(1, kek=other), PushRejection.UNREADABLE)


# -- payload form -----------------------------------------------------------------------------


def _sid_download() -> KeyDownload:
    sid = KeyPacket(KeyPacketType.SID, b"", (Attribute.tv(1, 8), Attribute.tlv(2, bytes(4))))
    return KeyDownload((sid,))


def test_build_push_refuses_what_no_push_may_carry() -> None:
    sa, kd = tek_update().to_wire()
    with pytest.raises(PushFormError, match="an SA without its KD"):
        PushPayloads(1, group_sa=sa)
    with pytest.raises(PushFormError, match="an SA without its KD"):
        PushPayloads(1, key_download=kd)
    with pytest.raises(PushFormError, match="SID key packets are member-specific"):
        PushPayloads(1, group_sa=sa, key_download=KeyDownload(kd.packets + _sid_download().packets))
    with pytest.raises(PushFormError, match="SEQ 0; a GROUPKEY-PUSH carries 1..4294967295"):
        PushPayloads(0)
    with pytest.raises(PushFormError, match="DOI 2"):
        PushPayloads(1, deletes=(Delete(DOI.IPSEC, 3, 4, (CBC_SPI,)),))
    with pytest.raises(PushFormError, match="KEK needs one or more 16-octet SPIs, got 1 of 4"):
        PushPayloads(1, deletes=(Delete(DOI.GDOI, GdoiProtocol.KEK, 4, (CBC_SPI,)),))
    with pytest.raises(PushFormError, match="protocol 9"):
        PushPayloads(1, deletes=(Delete(DOI.GDOI, 9, 4, (CBC_SPI,)),))
    reused = sa_kd(new_kek())
    with pytest.raises(PushFormError, match="a new KEK needs a new cookie pair"):
        push(1, spi=NEW_SPI, **reused)
    with pytest.raises(ValueError, match="16 octets"):
        push(1, spi=KEK_SPI[:8])


def _gap_only_sa() -> RawPayload:
    """An SA whose only attribute payload is a GAP (RFC 6407 §5.2.1 forbids it; the codec cannot build it)."""
    gap = bytes([0, 0, 0, 8]) + Attribute.tv(GapAttribute.ACTIVATION_TIME_DELAY, 10).encode()
    return RawPayload(PayloadType.SA, (2).to_bytes(4, "big") + bytes(4) + bytes([0, PayloadType.GAP, 0, 0]) + gap)


@pytest.mark.parametrize(
    "payloads, reason, problem",
    [
        (lambda: [DELETE_TEK], PushRejection.BAD_PAYLOADS, "payloads DELETE before SIG"),
        (lambda: [SequenceNumber(1), sa_kd(tek_update())["group_sa"]], PushRejection.BAD_PAYLOADS, "payloads SEQ, SA"),
        (lambda: [SequenceNumber(1), DELETE_TEK, VendorId(b"x")], PushRejection.BAD_PAYLOADS, "SEQ, DELETE, VENDOR ID"),
        (lambda: [SequenceNumber(0)], PushRejection.BAD_PAYLOADS, "SEQ 0"),
        (
            lambda: [SequenceNumber(1), *sa_kd(tek_update()).values(), DELETE_TEK],
            PushRejection.BAD_PAYLOADS,
            "SEQ, SA, KD, DELETE before SIG",
        ),
        (
            lambda: [SequenceNumber(1), sa_kd(tek_update())["group_sa"], _sid_download()],
            PushRejection.BAD_PAYLOADS,
            "SID key packets",
        ),
        (
            lambda: [SequenceNumber(1), Delete(DOI.GDOI, GdoiProtocol.IPSEC_ESP, 2, (b"ab",))],
            PushRejection.BAD_PAYLOADS,
            "4-octet SPIs",
        ),
        (lambda: [SequenceNumber(1), *sa_kd(new_kek()).values()], None, None),
        (
            lambda: [SequenceNumber(1), _gap_only_sa(), KeyDownload(())],
            PushRejection.UNREADABLE,
            "neither SA KEK nor SA TEK",
        ),
    ],
)
def test_the_member_checks_the_payload_form(payloads, reason: PushRejection | None, problem: str | None) -> None:
    member = receiver()
    result = member.receive(forged(payloads()), SERVER, NOW)
    if reason is None:
        assert isinstance(result, PushAccepted)
    else:
        assert isinstance(result, PushRejected) and result.reason is reason and problem in result.text, result


def test_a_push_that_signs_a_new_kek_under_its_own_spi_is_refused() -> None:
    policy = new_kek()
    same = replace(policy, sa=replace(policy.sa, kek=replace(policy.sa.kek, spi=KEK_SPI)))
    result = reject(receiver(), forged([SequenceNumber(1), *same.to_wire()]), PushRejection.BAD_PAYLOADS)
    assert "reuses the SPI of the KEK protecting it" in result.text


def test_a_push_without_a_signature_payload() -> None:
    body = KEK.encrypt(SequenceNumber(1).encode())
    push_ = ExchangeType.GROUPKEY_PUSH
    header = Header.make(KEK_SPI[:8], KEK_SPI[8:], push_, PayloadType.SEQ, len(body), flags=Flags.ENCRYPTION)
    unsigned = header.encode() + body
    assert "the last payload is not SIG" in reject(receiver(), unsigned, PushRejection.BAD_PAYLOADS).text


def test_an_authentic_push_with_an_unacceptable_policy() -> None:
    """Signed and fresh, but a TEK has no key packet: rejected with the policy's reason, SEQ not used up."""
    sa, kd = tek_update().to_wire()
    member = receiver()
    result = reject(member, push(1, group_sa=sa, key_download=KeyDownload(kd.packets[:1])), PushRejection.POLICY)
    assert result.text.startswith(f"push SEQ 1 under KEK {KEK_SPI.hex()} from 198.18.0.2: group {GROUP} policy")
    assert "has no TEK key packet" in result.text and member.last_push is None
    accept(member, push(1, group_sa=sa, key_download=kd))


# -- KEK rollover -------------------------------------------------------------------------------


def test_a_new_kek_starts_its_own_sequence() -> None:
    member = receiver(seq=41)
    rollover = accept(member, push(42, deletes=(DELETE_KEK,), **sa_kd(new_kek())))
    policy = rollover.policy
    assert policy is not None and policy.kek is not None and policy.kek_keys is not None
    installed = member.install(policy.kek, policy.kek_keys)  # the caller installs the KEK it was given
    assert (installed.spi, installed.seq) == (NEW_SPI, 0)
    accept(member, push(1, spi=NEW_SPI, kek=policy.kek_keys.kek))  # SEQ 1 under the new cookie pair
    assert member.last_push == LastPush(NEW_SPI, 1)
    accept(member, push(43))  # until removed, the old KEK still works with its own counter
    member.remove(KEK_SPI)  # what the Delete asked for
    reject(member, push(44), PushRejection.UNKNOWN_KEK)
    reject(member, push(1, spi=NEW_SPI, kek=policy.kek_keys.kek), PushRejection.REPLAY)
    assert sorted(member.rekey_sas) == [NEW_SPI]


def test_the_rollover_push_is_acknowledged_with_the_kek_that_protected_it() -> None:
    member = receiver()
    rollover = accept(member, push(1, deletes=(DELETE_KEK,), **sa_kd(new_kek())))
    server = AckVerifier()
    server.install(kek_policy(), KEK)
    server.install(new_kek().kek, new_kek().kek_keys.kek)  # type: ignore[arg-type, union-attr]
    server.retire(KEK_SPI, NOW)
    assert rollover.datagram_for_ack is not None
    assert server.receive(rollover.datagram_for_ack, ("198.18.0.1", 848), NOW + 1) == AckReceived(
        KEK_SPI, 1, MEMBER, ("198.18.0.1", 848)
    )


# -- acknowledgements -----------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["class-9", "class-129"])
@pytest.mark.parametrize("ack_type", [KekAckType.KEK_SHA256, KekAckType.KEK_SHA512])
@pytest.mark.parametrize("length", list(AckKeyLength))
def test_requested_acks_verify_at_the_key_server(legacy: bool, ack_type: KekAckType, length: AckKeyLength) -> None:
    request = AckRequest(ack_type, legacy)
    assert request.attribute_class == (129 if legacy else 9)
    policy = kek_policy(ack=request)
    member = PushReceiver(GROUP, MEMBER, ack_key_length=length)
    member.install(policy, kek_keys(policy), 6)
    accepted = accept(member, push(7, **CONTENTS["tek-only"]()[0]))
    assert accepted.ack_requested == request and accepted.datagram_for_ack is not None
    server = AckVerifier(key_length=length)
    server.install(policy, KEK)
    assert server.receive(accepted.datagram_for_ack, ("198.18.0.1", 848), NOW) == AckReceived(
        KEK_SPI, 7, MEMBER, ("198.18.0.1", 848)
    )
    other = AckVerifier(key_length=next(x for x in AckKeyLength if x is not length))
    other.install(policy, KEK)
    result = other.receive(accepted.datagram_for_ack, ("198.18.0.1", 848), NOW)
    assert isinstance(result, AckRejected) and result.reason is AckRejection.BAD_HASH


def test_no_ack_unless_requested_and_none_for_lkh_types() -> None:
    assert accept(receiver(ack=None), push(1)).datagram_for_ack is None
    lkh = accept(receiver(ack=AckRequest(KekAckType.LKH_SHA256)), push(1))
    assert lkh.ack_requested == AckRequest(KekAckType.LKH_SHA256) and lkh.datagram_for_ack is None


def test_a_push_that_carries_a_sa_kek_asks_for_acks_itself() -> None:
    """RFC 8263 §4: the newest SA KEK says whether acks are wanted, also for the push that carries it."""
    quiet = accept(receiver(ack=None), push(1, **sa_kd(new_kek(ack=AckRequest(KekAckType.KEK_SHA512, True)))))
    assert quiet.ack_requested == AckRequest(KekAckType.KEK_SHA512, True) and quiet.datagram_for_ack is not None
    stop = accept(receiver(), push(1, **sa_kd(new_kek(ack=None))))
    assert stop.ack_requested is None and stop.datagram_for_ack is None
