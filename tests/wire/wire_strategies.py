"""Hypothesis strategies for valid payloads and the message shapes the project exchanges."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from groupvpn.wire import numbers as n
from groupvpn.wire.attributes import (
    GAP_REGISTRY,
    IKE_REGISTRY,
    IPSEC_REGISTRY,
    KEK_KEY_REGISTRY,
    KEK_REGISTRY,
    LKH_KEY_REGISTRY,
    SID_KEY_REGISTRY,
    TEK_KEY_REGISTRY,
    Attribute,
    AttributeRegistry,
)
from groupvpn.wire.gdoi import Gap, GroupSa, IpsecTek, KeyDownload, KeyPacket, SaKek, SaTek, SequenceNumber
from groupvpn.wire.ident import TrafficId
from groupvpn.wire.isakmp import (
    Certificate,
    CertificateRequest,
    Delete,
    Hash,
    Identification,
    KeyExchange,
    Nonce,
    Notify,
    Proposal,
    RawPayload,
    SecurityAssociation,
    Signature,
    Transform,
    VendorId,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
cookie = st.binary(min_size=8, max_size=8)


def blob(max_size: int = 24, min_size: int = 0) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size)


def attribute(registry: AttributeRegistry) -> st.SearchStrategy[Attribute]:
    """A known class in a form the registry allows, or a private-use class in either form."""
    basic = st.sampled_from([int(c) for c in registry.classes])
    variable = st.sampled_from(sorted(registry.variable)) if registry.variable else st.nothing()
    private = st.integers(registry.private_from, 0x7FFF).filter(lambda t: not registry.known(t))
    return st.one_of(
        st.builds(Attribute.tv, basic | private, u16),
        st.builds(Attribute.tlv, variable | private, blob(20)),
    )


def attributes(registry: AttributeRegistry, max_size: int = 5) -> st.SearchStrategy[tuple[Attribute, ...]]:
    return st.lists(attribute(registry), max_size=max_size).map(tuple)


# --- identities ------------------------------------------------------------------------------------


def _subnet(size: int) -> st.SearchStrategy[bytes]:
    bits = size * 8
    return st.tuples(blob(size, size), st.integers(0, bits)).map(
        lambda t: t[0] + (((1 << bits) - 1) ^ ((1 << (bits - t[1])) - 1)).to_bytes(size, "big")
    )


def _range(size: int) -> st.SearchStrategy[bytes]:
    return st.tuples(blob(size, size), blob(size, size)).map(lambda t: min(t) + max(t))


def _oid() -> st.SearchStrategy[bytes]:
    return st.tuples(blob(12, 1), blob(12)).map(
        lambda t: bytes([len(t[0])]) + t[0] + len(t[1]).to_bytes(2, "big") + t[1]
    )


ID_DATA: dict[int, st.SearchStrategy[bytes]] = {
    n.IdType.IPV4_ADDR: blob(4, 4),
    n.IdType.IPV6_ADDR: blob(16, 16),
    n.IdType.IPV4_ADDR_SUBNET: _subnet(4),
    n.IdType.IPV6_ADDR_SUBNET: _subnet(16),
    n.IdType.IPV4_ADDR_RANGE: _range(4),
    n.IdType.IPV6_ADDR_RANGE: _range(16),
    n.IdType.FQDN: st.text("abcdefghijklmnopqrstuvwxyz.-", max_size=20).map(str.encode),
    n.IdType.USER_FQDN: st.text("abc@example.org", max_size=20).map(str.encode),
    n.IdType.DER_ASN1_DN: blob(),
    n.IdType.KEY_ID: blob(),
    n.IdType.OID: _oid(),
    250: blob(),
}
id_pair = st.one_of([st.tuples(st.just(t), data) for t, data in ID_DATA.items()])
traffic_id = st.builds(lambda p, port: TrafficId(p[0], p[1], port), id_pair, u16)
identification = st.builds(lambda p, proto, port: Identification(p[0], p[1], proto, port), id_pair, u8, u16)
address_id = st.builds(Identification, st.just(n.IdType.IPV4_ADDR), blob(4, 4)) | st.builds(
    Identification, st.just(n.IdType.IPV6_ADDR), blob(16, 16)
)
group_id = st.builds(Identification.group, u32)

# --- IKEv1 payloads ----------------------------------------------------------------------------------

transform = st.builds(Transform, u8, u8, attributes(IKE_REGISTRY, 8))
esp_transform = st.builds(Transform, u8, u8, attributes(IPSEC_REGISTRY))


proposal = st.builds(
    Proposal, u8, st.just(n.ProtocolId.ISAKMP), st.lists(transform, min_size=1, max_size=3).map(tuple), blob(16)
) | st.builds(
    Proposal, u8, st.just(n.ProtocolId.IPSEC_ESP), st.lists(esp_transform, max_size=2).map(tuple), blob(4, 4)
)


security_association = st.builds(
    lambda proposals, context: SecurityAssociation(proposals, *context),
    st.lists(proposal, min_size=1, max_size=3).map(tuple),
    st.sampled_from([(n.DOI.GDOI, n.Situation.NONE), (n.DOI.IPSEC, n.Situation.SIT_IDENTITY_ONLY)]),
)


ke = st.one_of([st.builds(KeyExchange, blob(size, size)) for size in (128, 192, 256)])
nonce = st.builds(Nonce, blob(64, 8))
hash_ = st.one_of([st.builds(Hash, blob(size, size)) for size in (16, 20, 32, 64)])
vendor_id = st.builds(VendorId, st.just(n.DPD_VENDOR_ID) | blob(20, 1))
notify = st.builds(Notify, u16, st.sampled_from([n.DOI.IPSEC, n.DOI.GDOI]), u8, blob(16), blob())
delete = st.one_of(
    [
        st.builds(
            Delete,
            st.sampled_from([n.DOI.IPSEC, n.DOI.GDOI]),
            u8,
            st.just(size),
            st.lists(blob(size, size), max_size=3 if size else 0).map(tuple),
        )
        for size in (0, 4, 16)
    ]
)
certificate = st.builds(Certificate, u8, blob()) | st.builds(CertificateRequest, u8, blob())
nat = st.builds(RawPayload, st.sampled_from([n.PayloadType.NAT_D, n.PayloadType.NAT_OA, 128, 255]), blob())

# --- GDOI payloads -----------------------------------------------------------------------------------

sa_kek = st.builds(SaKek, u8, traffic_id, traffic_id, blob(16, 16), attributes(KEK_REGISTRY))
ipsec_tek = st.builds(IpsecTek, u8, traffic_id, traffic_id, u8, blob(4, 4), attributes(IPSEC_REGISTRY))
sa_tek = st.builds(SaTek, st.sampled_from([n.GdoiProtocol.IPSEC_ESP, n.GdoiProtocol.IPSEC_AH]), ipsec_tek)
sa_tek |= st.builds(SaTek, st.sampled_from([n.GdoiProtocol.IEC_61850, 200]), blob())
gap = st.builds(Gap, attributes(GAP_REGISTRY))
group_sa = st.builds(GroupSa, sa_kek, st.none() | gap, st.lists(sa_tek, max_size=3).map(tuple)) | st.builds(
    GroupSa, st.none(), st.none() | gap, st.lists(sa_tek, min_size=1, max_size=3).map(tuple)
)
_KEY_PACKETS = {
    n.KeyPacketType.TEK: (TEK_KEY_REGISTRY, 4),
    n.KeyPacketType.KEK: (KEK_KEY_REGISTRY, 16),
    n.KeyPacketType.LKH: (LKH_KEY_REGISTRY, 16),
    n.KeyPacketType.SID: (SID_KEY_REGISTRY, 0),
}
private_key_attributes = st.lists(st.builds(Attribute.tlv, st.integers(0, 0x7FFF), blob()), max_size=2).map(tuple)
key_packet = st.one_of(
    [
        st.builds(KeyPacket, st.just(t), blob(size, size), attributes(registry, 3))
        for t, (registry, size) in _KEY_PACKETS.items()
    ]
    + [st.builds(KeyPacket, st.integers(128, 255), blob(16), private_key_attributes)]
)
key_download = st.builds(KeyDownload, st.lists(key_packet, max_size=4).map(tuple))
seq = st.builds(SequenceNumber, u32)
signature = st.builds(Signature, blob(64, 1))


# --- message shapes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Payloads of one message of an exchange, and whether it travels encrypted."""

    name: str
    exchange: int
    payloads: tuple
    encrypted: bool


def _flatten(parts: tuple) -> tuple:
    """Parts are single payloads, absent optional ones (None) or lists of repeated ones."""
    out = []
    for part in parts:
        if isinstance(part, list):
            out.extend(part)
        elif part is not None:
            out.append(part)
    return tuple(out)


def _shape(name: str, exchange: int, encrypted: bool, *parts: st.SearchStrategy) -> st.SearchStrategy[Shape]:
    return st.tuples(*parts).map(lambda drawn: Shape(name, exchange, _flatten(drawn), encrypted))


MM, PULL, PUSH, ACK, INFO = (
    n.MAIN_MODE,
    n.ExchangeType.GROUPKEY_PULL,
    n.ExchangeType.GROUPKEY_PUSH,
    n.ExchangeType.GROUPKEY_PUSH_ACK,
    n.ExchangeType.INFORMATIONAL,
)
vids = st.lists(vendor_id | nat, max_size=2)
single_proposal_sa = st.builds(
    lambda number, t: SecurityAssociation((Proposal(number, n.ProtocolId.ISAKMP, (t,)),)), u8, transform
)

SHAPES = {
    "main mode 1": _shape("main mode 1", MM, False, security_association, vids),
    "main mode 2": _shape("main mode 2", MM, False, single_proposal_sa, vids),
    "main mode 3": _shape("main mode 3", MM, False, ke, nonce, vids),
    "main mode 4": _shape("main mode 4", MM, False, ke, nonce, vids),
    "main mode 5": _shape("main mode 5", MM, True, address_id, hash_, st.lists(certificate, max_size=1)),
    "main mode 6": _shape("main mode 6", MM, True, address_id, hash_),
    "pull 1": _shape("pull 1", PULL, True, hash_, nonce, group_id | identification),
    "pull 2": _shape("pull 2", PULL, True, hash_, nonce, group_sa),
    "pull 3": _shape("pull 3", PULL, True, hash_, st.none() | gap),
    "pull 4": _shape("pull 4", PULL, True, hash_, st.none() | seq, key_download),
    "push": _shape(
        "push",
        PUSH,
        True,
        seq,
        st.lists(delete, max_size=2),
        st.none() | group_sa,
        st.none() | key_download,
        signature,
    ),
    "push ack": _shape("push ack", ACK, False, hash_, seq, address_id),
    "informational": _shape("informational", INFO, True, hash_, notify | delete),
    "informational clear": _shape("informational clear", INFO, False, notify),
}
shape = st.one_of(list(SHAPES.values()))
