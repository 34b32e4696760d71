"""Main Mode pieces both sides share (RFC 2409 §5, §5.4): offer, choice, keys, hashes.

The initiator and the responder each run their own state machine, but
the SA offer and choice rules, the key schedule and HASH_I/HASH_R must be
computed identically, so they live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ..crypto.dh import EcpGroup, Group, KeyPair, ModpGroup
from ..crypto.errors import InvalidKey
from ..crypto.ikev1 import Phase1Keys, hash_i, hash_r, phase1_iv, psk_keys
from ..wire.isakmp import Identification, Proposal, SecurityAssociation, Transform, VendorId
from ..wire.message import Payload
from ..wire.numbers import DOI, DPD_VENDOR_ID, IsakmpTransformId, PayloadType, ProtocolId, Situation, name_of
from .proposals import Suite, TransformRejected, describe
from .psk import PreSharedKey
from .sa import Address, CbcChain, IkeSa, Role

Rng = Callable[[int], bytes]

NONCE_SIZE = 32
NONCE_RANGE = (8, 256)  # RFC 2409 §5


class NoProposalChosen(ValueError):
    """The offer and the acceptable suites have nothing in common; the message lists both."""


def offer(suites: Sequence[Suite], doi: int) -> SecurityAssociation:
    """One ISAKMP proposal with a transform per suite, in preference order."""
    if not suites:
        raise ValueError("at least one suite must be offered")
    transforms = tuple(Transform(i, IsakmpTransformId.KEY_IKE, s.attributes()) for i, s in enumerate(suites, 1))
    situation = Situation.SIT_IDENTITY_ONLY if doi == DOI.IPSEC else Situation.NONE
    return SecurityAssociation((Proposal(1, ProtocolId.ISAKMP, transforms),), doi, situation)


def _offered(sa: SecurityAssociation) -> list[tuple[Proposal, Transform, Suite | str]]:
    """Every transform of an offer with its suite, or why it cannot be one."""
    out: list[tuple[Proposal, Transform, Suite | str]] = []
    for proposal in sa.proposals:
        for transform in proposal.transforms:
            if proposal.protocol != ProtocolId.ISAKMP or transform.transform_id != IsakmpTransformId.KEY_IKE:
                out.append((proposal, transform, f"protocol {proposal.protocol}/transform {transform.transform_id}"))
                continue
            try:
                out.append((proposal, transform, Suite.from_attributes(transform.attributes)))
            except TransformRejected as err:
                out.append((proposal, transform, str(err)))
    return out


def choose(sa: SecurityAssociation, accepted: Sequence[Suite]) -> tuple[SecurityAssociation, Suite]:
    """The responder's reply SA and the agreed suite: the first offered transform we accept.

    The reply echoes the chosen transform unchanged (RFC 2409 §5: the
    responder returns exactly one); a shorter local lifetime is enforced
    locally rather than by altering it.
    """
    offered = _offered(sa)
    for proposal, transform, suite in offered:
        if isinstance(suite, str):
            continue
        for ours in accepted:
            if ours.same_algorithms(suite):
                reply = SecurityAssociation((replace(proposal, transforms=(transform,)),), sa.doi, sa.situation)
                return reply, replace(suite, lifetime=min(suite.lifetime, ours.lifetime))
    names = [s.name if isinstance(s, Suite) else f"unusable ({s})" for _, _, s in offered]
    raise NoProposalChosen(f"no proposal chosen (offered: {', '.join(names) or 'none'}; accepted: {describe(accepted)})")


def accept_choice(sent: Sequence[Suite], reply: SecurityAssociation) -> Suite:
    """The initiator's check of message 2: one transform, and one we offered."""
    transforms = [t for p in reply.proposals for t in p.transforms]
    if len(reply.proposals) != 1 or len(transforms) != 1:
        raise NoProposalChosen(f"responder returned {len(transforms)} transforms in {len(reply.proposals)} proposals")
    ((_, _, suite),) = _offered(reply)
    if isinstance(suite, str):
        raise NoProposalChosen(f"responder chose an unusable transform: {suite}")
    for ours in sent:
        if ours.same_algorithms(suite):
            return replace(suite, lifetime=min(suite.lifetime, ours.lifetime))
    raise NoProposalChosen(f"responder chose {suite.name}, which was not offered ({describe(sent)})")


def generate_keypair(group: Group, rng: Rng) -> KeyPair:
    """A DH key pair whose private value comes from ``rng`` (injectable for tests)."""
    if isinstance(group, ModpGroup):
        bits = group.exponent_bits
        raw = int.from_bytes(rng((bits + 7) // 8), "big") & ((1 << (bits - 1)) - 1)
        return group.keypair(raw | (1 << (bits - 1)))
    assert isinstance(group, EcpGroup)
    size, bits = group.coordinate_size, group.curve.key_size
    for _ in range(64):  # a draw at or above the order is rare (< 2^-32 for P-256)
        try:
            return group.keypair(int.from_bytes(rng(size), "big") >> (8 * size - bits))
        except InvalidKey:
            continue
    raise RuntimeError(f"random source gave no usable scalar for group {group.number}")


def announces_dpd(payloads: Sequence[Payload]) -> bool:
    """Whether a Main Mode message carries the RFC 3706 vendor ID."""
    return any(isinstance(p, VendorId) and p.data == DPD_VENDOR_ID for p in payloads)


def with_dpd_vendor_id(payloads: Sequence[Payload], dpd: bool) -> tuple[Payload, ...]:
    return (*payloads, VendorId(DPD_VENDOR_ID)) if dpd else tuple(payloads)


def check_nonce(data: bytes) -> None:
    low, high = NONCE_RANGE
    if not low <= len(data) <= high:
        raise ValueError(f"nonce of {len(data)} octets, RFC 2409 §5 allows {low}..{high}")


@dataclass(frozen=True)
class Exchanged:
    """What messages 1-4 established; both sides derive the same keys from it."""

    suite: Suite
    icookie: bytes
    rcookie: bytes
    sai_b: bytes
    g_xi: bytes
    g_xr: bytes
    ni: bytes
    nr: bytes
    g_xy: bytes = field(repr=False)

    def derive(self, psk: PreSharedKey) -> Derived:
        keys = psk_keys(self.suite.hash, psk.secret, self.ni, self.nr, self.g_xy, self.icookie, self.rcookie)
        return Derived(self, keys, keys.cipher_key(self.suite.key_size))


@dataclass(frozen=True)
class Derived:
    """Keys under one pre-shared key, and the HASH_I/HASH_R they give."""

    exchanged: Exchanged
    keys: Phase1Keys = field(repr=False)
    cipher_key: bytes = field(repr=False)

    def _inputs(self) -> dict[str, bytes]:
        x = self.exchanged
        return {"g_xi": x.g_xi, "g_xr": x.g_xr, "cky_i": x.icookie, "cky_r": x.rcookie, "sai_b": x.sai_b}

    def hash_i(self, idii: Identification) -> bytes:
        return hash_i(self.exchanged.suite.hash, self.keys.skeyid, idii_b=idii.encode_body(), **self._inputs())

    def hash_r(self, idir: Identification) -> bytes:
        return hash_r(self.exchanged.suite.hash, self.keys.skeyid, idir_b=idir.encode_body(), **self._inputs())

    def establish(
        self,
        role: Role,
        peer: Address,
        doi: int,
        local_identity: Identification,
        peer_identity: Identification,
        last_block: bytes,
        now: float,
        peer_supports_dpd: bool,
    ) -> IkeSa:
        """The IKE SA these keys make, once message 5 or 6 verified; ``last_block`` ends Phase 1's CBC chain."""
        x = self.exchanged
        return IkeSa(
            role=role,
            icookie=x.icookie,
            rcookie=x.rcookie,
            peer=peer,
            suite=x.suite,
            doi=doi,
            keys=self.keys,
            cipher_key=self.cipher_key,
            last_block=last_block,
            local_identity=local_identity,
            peer_identity=peer_identity,
            established_at=now,
            expires_at=now + x.suite.lifetime,
            peer_supports_dpd=peer_supports_dpd,
        )

    def message5_chain(self) -> CbcChain:
        """CBC state for message 5: IV = H(g^xi | g^xr); message 6 chains on from it."""
        x = self.exchanged
        cipher = x.suite.cipher
        return CbcChain(cipher, self.cipher_key, phase1_iv(x.suite.hash, x.g_xi, x.g_xr, cipher.block_size))


class UnexpectedPayloads(ValueError):
    """A Main Mode message without the payloads it must carry, or with ones it must not."""


# Payloads tolerated in any Main Mode message besides the required ones and ignored:
# vendor IDs, status notifies such as INITIAL-CONTACT, NAT-D (we never announce NAT-T).
_IGNORABLE = frozenset({PayloadType.VENDOR_ID, PayloadType.NOTIFY, PayloadType.NAT_D})


def pick(payloads: Sequence[Payload], *required: type[Payload]) -> tuple[Payload, ...]:
    """The single payload of each ``required`` class, in that order; extras must be ignorable."""
    found: list[Payload] = []
    for cls in required:
        matches = [p for p in payloads if type(p) is cls]
        if len(matches) != 1:
            raise UnexpectedPayloads(f"{len(matches)} {cls.NAME} payloads, expected 1")
        found.append(matches[0])
    for p in payloads:
        if type(p) not in required and p.payload_type not in _IGNORABLE:
            raise UnexpectedPayloads(f"{name_of(PayloadType, p.payload_type)} payload is not allowed here")
    return tuple(found)
