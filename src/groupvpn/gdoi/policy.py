"""What a key server distributes for one group, as typed values, and its GDOI wire form.

A ``GroupPolicy`` is the unit both daemons work with.  The key server
builds one from its configuration and keys and sends ``to_wire()``; a
member gets one from ``from_wire`` only when everything it must check
before installing holds (RFC 6407 §3.3, §5.3-5.6): algorithms it
supports, key lengths that fit them, sane lifetimes, a key packet for every
SA and an SA for every key packet, no attribute it does not understand
(§5.3.2 "MUST abort") and the pairing rule for TEKs that share an SPI (two
policies only as mirror images, A-B and B-A).  The constructors enforce
these invariants, so a key server cannot build a policy its members would
refuse, and both sides report the same ``PolicyError`` sentence.

Deny entries (project choice, docs/conformance.md): RFC 6407 has no way to
send "do not encrypt this traffic".  A deny entry travels as an ESP SA TEK
with transform ESP_NULL, SPI 0 (reserved, RFC 4303 §2.1, so it can never
name an SA), no key packet, and the private-use IPsec attribute
POLICY_ACTION (32001) = DENY as its only attribute.  A receiver recognises
it by that attribute alone and ignores everything but its selector, so a
deny entry never fails a registration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

from ..crypto.cbc import kek_cipher
from ..crypto.errors import CryptoError
from ..crypto.gdoi import Kek
from ..crypto.sig import MIN_RSA_BITS, SignatureScheme, VerifyingKey, signature_scheme
from ..crypto.suites import SUITES, EspKeys, EspSuite, esp_suite
from ..wire.attributes import Attribute
from ..wire.gdoi import Gap, GroupSa, IpsecTek, KeyDownload, KeyPacket, SaKek, SaTek
from ..wire.ident import AddressRange, TrafficId
from ..wire.numbers import (
    KEK_ACK_REQUESTED_LEGACY,
    AddressPreservation,
    EncapsulationMode,
    EspTransform,
    GapAttribute,
    GdoiProtocol,
    IdType,
    IpsecAttribute,
    KekAckType,
    KekAlgorithm,
    KekAttribute,
    KekKeyAttribute,
    KeyPacketType,
    LifeType,
    PolicyAction,
    SaDirection,
    SidKeyAttribute,
    SigAlgorithm,
    SigHashAlgorithm,
    TekKeyAttribute,
    name_of,
)
from .errors import PolicyError, bad_key, bad_selector, unsupported

Address = IPv4Address | IPv6Address | IPv4Network | IPv6Network | AddressRange
E = TypeVar("E", bound=IntEnum)

IPPROTO_UDP = 17
DEFAULT_TEK_LIFETIME = 28800  # RFC 2407 §4.5: the lifetime when SA Life Type/Duration are absent
# Project bounds for "sane" lifetimes: a few seconds still allows lab rekeys,
# a month is far beyond any deployed TEK or KEK (Junos: "any supported value").
MIN_LIFETIME = 10
MAX_LIFETIME = 30 * 86400
DENY_SPI = bytes(4)
_FIRST_SPI = 256  # RFC 4303 §2.1: SPIs 1-255 are reserved by IANA, 0 for local use
_ECDSA_KEY_BITS = {SigAlgorithm.ECDSA_256: 256, SigAlgorithm.ECDSA_384: 384, SigAlgorithm.ECDSA_521: 521}
_ADDRESS_IDS = frozenset(
    {
        IdType.IPV4_ADDR,
        IdType.IPV4_ADDR_SUBNET,
        IdType.IPV4_ADDR_RANGE,
        IdType.IPV6_ADDR,
        IdType.IPV6_ADDR_SUBNET,
        IdType.IPV6_ADDR_RANGE,
    }
)


# -- helpers shared by the attribute readers ----------------------------------


def _class_name(classes: type[IntEnum], value: int) -> str:
    return name_of(classes, value) if value in classes._value2member_map_ else f"class {value}"


def _collect(
    attributes: Iterable[Attribute],
    where: str,
    classes: type[IntEnum],
    handled: frozenset[int],
    ignored: frozenset[int] = frozenset(),
) -> dict[int, Attribute]:
    """Attributes by class; anything not ``handled`` aborts (RFC 6407 §5.3.2), as do repeats."""
    found: dict[int, Attribute] = {}
    for attr in attributes:
        if attr.type in ignored:
            continue
        name = _class_name(classes, attr.type)
        if attr.type not in handled:
            raise unsupported(f"{where}: attribute {name} is not supported")
        if attr.type in found:
            raise PolicyError(f"{where}: attribute {name} appears twice")
        found[attr.type] = attr
    return found


def _member(enum: type[E], value: int, where: str, what: str) -> E:
    try:
        return enum(value)
    except ValueError:
        raise unsupported(f"{where}: {what} {value} is not supported") from None


def _check_lifetime(seconds: int, what: str) -> None:
    if not MIN_LIFETIME <= seconds <= MAX_LIFETIME:
        raise PolicyError(f"{what}: lifetime of {seconds} s is outside {MIN_LIFETIME}..{MAX_LIFETIME} s")


def _show(address: Address) -> str:
    return f"{address.first}-{address.last}" if isinstance(address, AddressRange) else str(address)


def _version(address: Address) -> int:
    return address.first.version if isinstance(address, AddressRange) else address.version


# -- selectors -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a selector or rekey identity: an address, subnet or range and a port (0: any)."""

    address: Address
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise bad_selector(f"port {self.port} is out of range")

    def __str__(self) -> str:
        return f"{_show(self.address)} port {self.port}" if self.port else _show(self.address)

    def to_wire(self) -> TrafficId:
        return TrafficId.of(self.address, self.port)

    @classmethod
    def from_wire(cls, ident: TrafficId, what: str) -> Endpoint:
        if ident.id_type not in _ADDRESS_IDS:
            raise bad_selector(
                f"{what} is {name_of(IdType, ident.id_type)}; only addresses, subnets and ranges are usable"
            )
        return cls(ident.value, ident.port)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """The traffic a TEK covers (RFC 6407 §5.5.1): IP protocol (0: any) and both endpoints."""

    protocol: int
    source: Endpoint
    destination: Endpoint

    def __post_init__(self) -> None:
        if not 0 <= self.protocol <= 0xFF:
            raise bad_selector(f"IP protocol {self.protocol} is out of range")
        if _version(self.source.address) != _version(self.destination.address):
            raise bad_selector(f"selector {self} mixes IPv4 and IPv6")
        if self.protocol == 0 and (self.source.port or self.destination.port):
            raise bad_selector(f"selector {self} has a port but no IP protocol")

    def __str__(self) -> str:
        proto = f"protocol {self.protocol} " if self.protocol else ""
        return f"{proto}{self.source} -> {self.destination}"

    def mirrored(self) -> TrafficSelector:
        """B-A for this A-B."""
        return TrafficSelector(self.protocol, self.destination, self.source)


# -- KEK -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckRequest:
    """KEK_ACK_REQUESTED (RFC 8263 §2): members acknowledge every GROUPKEY-PUSH."""

    type: KekAckType
    legacy: bool = False  # sent as private class 129 (older key servers) instead of the registered 9

    @property
    def attribute_class(self) -> int:
        return KEK_ACK_REQUESTED_LEGACY if self.legacy else KekAttribute.KEK_ACK_REQUESTED


_KEK_HANDLED = frozenset(
    {
        KekAttribute.KEK_ALGORITHM,
        KekAttribute.KEK_KEY_LENGTH,
        KekAttribute.KEK_KEY_LIFETIME,
        KekAttribute.SIG_HASH_ALGORITHM,
        KekAttribute.SIG_ALGORITHM,
        KekAttribute.SIG_KEY_LENGTH,
        KekAttribute.KEK_ACK_REQUESTED,
        KEK_ACK_REQUESTED_LEGACY,
    }
)
# RFC 6407 §5.3.1: "MUST NOT appear in a GROUPKEY-PULL ... ignored if received".
_KEK_IGNORED = frozenset({KekAttribute.KEK_MANAGEMENT_ALGORITHM})


@dataclass(frozen=True, slots=True)
class KekPolicy:
    """The rekey SA (SA KEK, RFC 6407 §5.3): how GROUPKEY-PUSH messages are protected and addressed.

    ``spi`` is CKY-I | CKY-R of future PUSH headers; ``source`` is the key
    server, ``destination`` where pushes go (a member's or a multicast
    address) and its port.  ``key_bits`` and ``sig_key_bits`` are None
    when the attribute is left out (fixed-length ciphers; optional sizes).
    """

    spi: bytes
    algorithm: KekAlgorithm
    key_bits: int | None
    lifetime: int
    sig_algorithm: SigAlgorithm
    sig_hash: SigHashAlgorithm | None
    source: Endpoint
    destination: Endpoint
    sig_key_bits: int | None = None
    ack: AckRequest | None = None
    protocol: int = IPPROTO_UDP

    def __post_init__(self) -> None:
        if len(self.spi) != 16:
            raise PolicyError(f"a KEK SPI is 16 octets (CKY-I | CKY-R), got {len(self.spi)}")
        where = f"KEK {self.spi.hex()}"
        try:
            cipher = kek_cipher(self.algorithm)
            if self.key_bits is not None:
                cipher.key_size(self.key_bits)
            signature_scheme(self.sig_algorithm, self.sig_hash)
        except CryptoError as err:
            raise unsupported(f"{where}: {err}") from None
        _check_lifetime(self.lifetime, where)
        if self.protocol != IPPROTO_UDP:
            raise unsupported(f"{where}: rekey protocol {self.protocol}; GROUPKEY-PUSH travels over UDP (17)")

    @property
    def scheme(self) -> SignatureScheme:
        """How GROUPKEY-PUSH signatures are made and checked."""
        return signature_scheme(self.sig_algorithm, self.sig_hash)

    def to_wire(self) -> SaKek:
        attrs = [Attribute.tv(KekAttribute.KEK_ALGORITHM, self.algorithm)]
        if self.key_bits is not None:
            attrs.append(Attribute.tv(KekAttribute.KEK_KEY_LENGTH, self.key_bits))
        attrs.append(Attribute.lifetime(KekAttribute.KEK_KEY_LIFETIME, self.lifetime))
        if self.sig_hash is not None:
            attrs.append(Attribute.tv(KekAttribute.SIG_HASH_ALGORITHM, self.sig_hash))
        attrs.append(Attribute.tv(KekAttribute.SIG_ALGORITHM, self.sig_algorithm))
        if self.sig_key_bits is not None:
            attrs.append(Attribute.tv(KekAttribute.SIG_KEY_LENGTH, self.sig_key_bits))
        if self.ack is not None:
            attrs.append(Attribute.tv(self.ack.attribute_class, self.ack.type))
        return SaKek(self.protocol, self.source.to_wire(), self.destination.to_wire(), self.spi, tuple(attrs))

    @classmethod
    def from_wire(cls, sak: SaKek) -> KekPolicy:
        where = f"SA KEK {sak.spi.hex()}"
        found = _collect(sak.attributes, where, KekAttribute, _KEK_HANDLED, _KEK_IGNORED)
        for required in (KekAttribute.KEK_ALGORITHM, KekAttribute.SIG_ALGORITHM, KekAttribute.KEK_KEY_LIFETIME):
            if required not in found:
                raise PolicyError(f"{where} has no {required.name} attribute")
        acks = [a for a in (KekAttribute.KEK_ACK_REQUESTED, KEK_ACK_REQUESTED_LEGACY) if a in found]
        if len(acks) > 1:
            raise PolicyError(f"{where} requests acknowledgements in both class 9 and legacy class 129")
        ack = None
        if acks:
            ack_type = _member(KekAckType, found[acks[0]].int, where, "KEK_ACK_REQUESTED")
            ack = AckRequest(ack_type, legacy=acks[0] == KEK_ACK_REQUESTED_LEGACY)

        def optional(cls_: int) -> int | None:
            return found[cls_].int if cls_ in found else None

        sig_hash = optional(KekAttribute.SIG_HASH_ALGORITHM)
        return cls(
            spi=sak.spi,
            algorithm=_member(KekAlgorithm, found[KekAttribute.KEK_ALGORITHM].int, where, "KEK_ALGORITHM"),
            key_bits=optional(KekAttribute.KEK_KEY_LENGTH),
            lifetime=found[KekAttribute.KEK_KEY_LIFETIME].int,
            sig_algorithm=_member(SigAlgorithm, found[KekAttribute.SIG_ALGORITHM].int, where, "SIG_ALGORITHM"),
            sig_hash=None if sig_hash is None else _member(SigHashAlgorithm, sig_hash, where, "SIG_HASH_ALGORITHM"),
            source=Endpoint.from_wire(sak.src, f"{where} source"),
            destination=Endpoint.from_wire(sak.dst, f"{where} destination"),
            sig_key_bits=optional(KekAttribute.SIG_KEY_LENGTH),
            ack=ack,
            protocol=sak.protocol,
        )


# -- GAP -------------------------------------------------------------------------


_GAP_CLASSES = {
    GapAttribute.ACTIVATION_TIME_DELAY: "activation_delay",
    GapAttribute.DEACTIVATION_TIME_DELAY: "deactivation_delay",
    GapAttribute.ANTI_REPLAY_WINDOW: "anti_replay_window",
}


@dataclass(frozen=True, slots=True)
class GroupAssociatedPolicy:
    """GAP (RFC 6407 §5.4): activation/deactivation delays and the time-based anti-replay window.

    All in seconds.  None means the attribute is absent, which differs
    from 0: without ATD new SAs are used at once, without DTD the SAs they
    replace run until they expire (seed, "groupkey-push"); a window of 0
    or none turns time-based anti-replay off.
    """

    activation_delay: int | None = None
    deactivation_delay: int | None = None
    anti_replay_window: int | None = None

    def __post_init__(self) -> None:
        for attr in _GAP_CLASSES.values():
            value = getattr(self, attr)
            if value is not None and not 0 <= value <= 0xFFFF:
                raise PolicyError(f"GAP {attr.replace('_', ' ')} of {value} s does not fit 16 bits")

    def to_wire(self) -> Gap:
        return Gap(
            tuple(
                Attribute.tv(cls_, getattr(self, attr))
                for cls_, attr in _GAP_CLASSES.items()
                if getattr(self, attr) is not None
            )
        )

    @classmethod
    def from_wire(cls, gap: Gap) -> GroupAssociatedPolicy:
        if any(a.type == GapAttribute.SENDER_ID_REQUEST for a in gap.attributes):
            raise PolicyError(
                "the key server's GAP carries SENDER_ID_REQUEST, which only a member sends (RFC 6407 §5.4.2)"
            )
        found = _collect(gap.attributes, "GAP", GapAttribute, frozenset(_GAP_CLASSES))
        return cls(**{attr: found[cls_].int for cls_, attr in _GAP_CLASSES.items() if cls_ in found})


# -- TEK -------------------------------------------------------------------------


_TEK_HANDLED = frozenset(
    {
        IpsecAttribute.ENCAPSULATION_MODE,
        IpsecAttribute.AUTHENTICATION_ALGORITHM,
        IpsecAttribute.KEY_LENGTH,
        IpsecAttribute.ADDRESS_PRESERVATION,
        IpsecAttribute.SA_DIRECTION,
        IpsecAttribute.POLICY_ACTION,
    }
)
_ESP_TRANSFORMS = frozenset(suite.transform for suite in SUITES.values())
_DENY_DEFAULTS = (
    DENY_SPI,
    None,
    DEFAULT_TEK_LIFETIME,
    None,
    AddressPreservation.SOURCE_AND_DESTINATION,
    SaDirection.SYMMETRIC,
)


@dataclass(frozen=True, slots=True)
class TekPolicy:
    """One SA TEK (RFC 6407 §5.5.1): an ESP SA for the traffic of ``selector``, or a deny entry.

    ``suite`` fixes transform, key length and authentication algorithm;
    ``lifetime`` is in seconds, ``lifetime_kilobytes`` the optional volume
    limit.  A deny entry (``TekPolicy.deny``) has only its selector.
    """

    spi: bytes
    selector: TrafficSelector
    suite: EspSuite | None
    lifetime: int = DEFAULT_TEK_LIFETIME
    lifetime_kilobytes: int | None = None
    preservation: AddressPreservation = AddressPreservation.SOURCE_AND_DESTINATION
    direction: SaDirection = SaDirection.SYMMETRIC
    action: PolicyAction = PolicyAction.PERMIT

    def __post_init__(self) -> None:
        if self.action is PolicyAction.DENY:
            fields_ = (self.spi, self.suite, self.lifetime, self.lifetime_kilobytes, self.preservation, self.direction)
            if fields_ != _DENY_DEFAULTS:
                raise PolicyError(f"deny entry {self.selector} carries SA parameters; a deny entry is only a selector")
            return
        if len(self.spi) != 4:
            raise PolicyError(f"a TEK SPI is 4 octets, got {len(self.spi)}")
        where = f"TEK {self.spi.hex()} ({self.selector})"
        if int.from_bytes(self.spi, "big") < _FIRST_SPI:
            raise PolicyError(f"{where}: SPIs 0-255 are reserved (RFC 4303 §2.1)")
        if self.suite is None:
            raise PolicyError(f"{where}: a permit entry needs an ESP suite")
        _check_lifetime(self.lifetime, where)
        if self.lifetime_kilobytes is not None and self.lifetime_kilobytes < 1:
            raise PolicyError(f"{where}: a volume lifetime must be at least 1 kilobyte")
        if self.preservation is AddressPreservation.RESERVED or self.direction is SaDirection.RESERVED:
            raise PolicyError(f"{where}: Address Preservation and SA Direction must not be 0 (reserved)")

    @classmethod
    def deny(cls, selector: TrafficSelector) -> TekPolicy:
        """An entry saying: traffic of ``selector`` is not encrypted by this group."""
        return cls(DENY_SPI, selector, None, action=PolicyAction.DENY)

    @property
    def permits(self) -> bool:
        return self.action is PolicyAction.PERMIT

    def _attributes(self, suite: EspSuite) -> list[Attribute]:
        attrs = [
            Attribute.tv(IpsecAttribute.SA_LIFE_TYPE, LifeType.SECONDS),
            Attribute.lifetime(IpsecAttribute.SA_LIFE_DURATION, self.lifetime),
        ]
        if self.lifetime_kilobytes is not None:
            attrs += [
                Attribute.tv(IpsecAttribute.SA_LIFE_TYPE, LifeType.KILOBYTES),
                Attribute.lifetime(IpsecAttribute.SA_LIFE_DURATION, self.lifetime_kilobytes),
            ]
        attrs.append(Attribute.tv(IpsecAttribute.ENCAPSULATION_MODE, EncapsulationMode.TUNNEL))
        if suite.auth is not None:
            attrs.append(Attribute.tv(IpsecAttribute.AUTHENTICATION_ALGORITHM, suite.auth))
        # Key Length: MUST for AES, MUST NOT for fixed-length ciphers (RFC 2407 §4.5; RFC 3602 §5.3).
        if suite.cipher is None or len(suite.cipher.key_sizes) > 1:
            attrs.append(Attribute.tv(IpsecAttribute.KEY_LENGTH, suite.key_bits))
        if self.preservation is not AddressPreservation.SOURCE_AND_DESTINATION:
            attrs.append(Attribute.tv(IpsecAttribute.ADDRESS_PRESERVATION, self.preservation))
        if self.direction is not SaDirection.SYMMETRIC:
            attrs.append(Attribute.tv(IpsecAttribute.SA_DIRECTION, self.direction))
        return attrs

    def to_wire(self) -> SaTek:
        src, dst = self.selector.source.to_wire(), self.selector.destination.to_wire()
        if self.suite is None:
            deny = (Attribute.tv(IpsecAttribute.POLICY_ACTION, PolicyAction.DENY),)
            tek = IpsecTek(self.selector.protocol, src, dst, EspTransform.NULL, DENY_SPI, deny)
        else:
            attrs = tuple(self._attributes(self.suite))
            tek = IpsecTek(self.selector.protocol, src, dst, self.suite.transform, self.spi, attrs)
        return SaTek(GdoiProtocol.IPSEC_ESP, tek)

    @classmethod
    def from_wire(cls, sat: SaTek) -> TekPolicy:
        if not isinstance(sat.policy, IpsecTek) or sat.protocol_id != GdoiProtocol.IPSEC_ESP:
            raise unsupported(f"SA TEK protocol {name_of(GdoiProtocol, sat.protocol_id)} is not supported (only ESP)")
        tek = sat.policy
        where = f"SA TEK {tek.spi.hex()}"
        source = Endpoint.from_wire(tek.src, f"{where} source")
        selector = TrafficSelector(tek.protocol, source, Endpoint.from_wire(tek.dst, f"{where} destination"))
        where = f"{where} ({selector})"
        actions = [a.int for a in tek.attributes if a.type == IpsecAttribute.POLICY_ACTION]
        if actions and _member(PolicyAction, actions[0], where, "POLICY_ACTION") is PolicyAction.DENY:
            return cls.deny(selector)
        lifetimes, others = _lifetimes(tek.attributes, where)
        found = _collect(others, where, IpsecAttribute, _TEK_HANDLED)

        def value(cls_: IpsecAttribute) -> int | None:
            return found[cls_].int if cls_ in found else None

        mode = value(IpsecAttribute.ENCAPSULATION_MODE)
        if mode is not None and mode != EncapsulationMode.TUNNEL:
            mode_name = name_of(EncapsulationMode, mode)
            raise unsupported(f"{where}: encapsulation mode {mode_name}; only tunnel mode is supported")
        if tek.transform_id not in _ESP_TRANSFORMS:
            raise unsupported(f"{where}: ESP transform {name_of(EspTransform, tek.transform_id)} is not supported")
        try:
            auth = value(IpsecAttribute.AUTHENTICATION_ALGORITHM)
            suite = esp_suite(tek.transform_id, value(IpsecAttribute.KEY_LENGTH), auth)
        except CryptoError as err:
            raise unsupported(f"{where}: {err}") from None
        preservation = value(IpsecAttribute.ADDRESS_PRESERVATION)
        direction = value(IpsecAttribute.SA_DIRECTION)
        return cls(
            tek.spi,
            selector,
            suite,
            lifetimes.get(LifeType.SECONDS, DEFAULT_TEK_LIFETIME),
            lifetimes.get(LifeType.KILOBYTES),
            AddressPreservation.SOURCE_AND_DESTINATION
            if preservation is None
            else _member(AddressPreservation, preservation, where, "Address Preservation"),
            SaDirection.SYMMETRIC if direction is None else _member(SaDirection, direction, where, "SA Direction"),
        )


def _lifetimes(attributes: Iterable[Attribute], where: str) -> tuple[dict[LifeType, int], list[Attribute]]:
    """SA Life Type/Duration pairs (RFC 2407 §4.5) and the other attributes.

    Group Description is dropped here: GDOI "MUST NOT" send it and ignores
    it if received (RFC 6407 §5.5.1).
    """
    lifetimes: dict[LifeType, int] = {}
    others: list[Attribute] = []
    pending: LifeType | None = None
    for attr in attributes:
        if attr.type == IpsecAttribute.SA_LIFE_TYPE:
            if pending is not None:
                raise PolicyError(f"{where}: SA Life Type {pending.name} has no SA Life Duration")
            pending = _member(LifeType, attr.int, where, "SA Life Type")
            if pending in lifetimes:
                raise PolicyError(f"{where}: two {pending.name} lifetimes")
        elif attr.type == IpsecAttribute.SA_LIFE_DURATION:
            if pending is None:
                raise PolicyError(f"{where}: SA Life Duration without a preceding SA Life Type")
            lifetimes[pending], pending = attr.int, None
        elif attr.type != IpsecAttribute.GROUP_DESCRIPTION:
            others.append(attr)
    if pending is not None:
        raise PolicyError(f"{where}: SA Life Type {pending.name} has no SA Life Duration")
    return lifetimes, others


def _check_pairing(teks: Iterable[TekPolicy]) -> None:
    """Two permit policies may share a TEK only as mirror images (A-B, B-A) with equal parameters.

    The seed's rule ("if the server sends two policies for the same TEK,
    then they must be paired to be accepted"); deny entries are exempt.
    """
    by_spi: dict[bytes, list[TekPolicy]] = {}
    for tek in teks:
        if tek.permits:
            by_spi.setdefault(tek.spi, []).append(tek)
    for spi, group in by_spi.items():
        listed = "; ".join(str(t.selector) for t in group)
        if len(group) > 2:
            raise PolicyError(
                f"TEK {spi.hex()} carries {len(group)} policies ({listed}); at most two, "
                "mirror images of each other (A-B and B-A), may share a TEK"
            )
        if len(group) == 2:
            first, second = group
            if second.selector != first.selector.mirrored():
                raise PolicyError(
                    f"TEK {spi.hex()} carries two unpaired policies ({listed}); two policies may share "
                    "a TEK only as mirror images (A-B and B-A)"
                )
            if replace(second, selector=first.selector) != first:
                raise PolicyError(
                    f"TEK {spi.hex()} carries a policy pair ({listed}) whose algorithms, lifetimes, "
                    "direction or address preservation differ"
                )


@dataclass(frozen=True)
class SaPolicy:
    """What the SA payload of GROUPKEY-PULL message 2 says: rekey SA, GAP and SA TEKs, no keys.

    A member checks it before sending message 3 (RFC 6407 §3.3), so an
    unacceptable policy is refused before the key server registers it.
    """

    teks: tuple[TekPolicy, ...] = ()
    kek: KekPolicy | None = None
    gap: GroupAssociatedPolicy | None = None

    def __post_init__(self) -> None:
        if self.kek is None and not self.teks:
            raise PolicyError("the group policy has neither a KEK nor a TEK")
        _check_pairing(self.teks)

    @property
    def permits(self) -> tuple[TekPolicy, ...]:
        return tuple(t for t in self.teks if t.permits)

    @property
    def counter_mode(self) -> bool:
        """Whether some TEK uses a counter mode, so members need SIDs (RFC 6407 §3.5)."""
        return any(t.suite is not None and t.suite.counter_mode for t in self.teks)

    def to_wire(self) -> GroupSa:
        return GroupSa(
            None if self.kek is None else self.kek.to_wire(),
            None if self.gap is None else self.gap.to_wire(),
            tuple(t.to_wire() for t in self.teks),
        )

    @classmethod
    def from_wire(cls, sa: GroupSa) -> SaPolicy:
        return cls(
            tuple(TekPolicy.from_wire(t) for t in sa.teks),
            None if sa.kek is None else KekPolicy.from_wire(sa.kek),
            None if sa.gap is None else GroupAssociatedPolicy.from_wire(sa.gap),
        )


# -- key material --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TekKeys:
    """A TEK key packet (RFC 6407 §5.6.1): the ESP keys for the SA TEK with ``spi``."""

    spi: bytes
    material: EspKeys

    def to_wire(self) -> KeyPacket:
        attrs = [Attribute.tlv(TekKeyAttribute.TEK_ALGORITHM_KEY, self.material.encryption)]
        if self.material.integrity:
            attrs.append(Attribute.tlv(TekKeyAttribute.TEK_INTEGRITY_KEY, self.material.integrity))
        return KeyPacket(KeyPacketType.TEK, self.spi, tuple(attrs))

    @classmethod
    def from_wire(cls, packet: KeyPacket) -> TekKeys:
        where = f"TEK key packet {packet.spi.hex()}"
        handled = frozenset({TekKeyAttribute.TEK_ALGORITHM_KEY, TekKeyAttribute.TEK_INTEGRITY_KEY})
        found = _collect(packet.attributes, where, TekKeyAttribute, handled)
        if TekKeyAttribute.TEK_ALGORITHM_KEY not in found:
            raise bad_key(f"{where} has no TEK_ALGORITHM_KEY")
        integrity = found.get(TekKeyAttribute.TEK_INTEGRITY_KEY)
        encryption = found[TekKeyAttribute.TEK_ALGORITHM_KEY].value
        return cls(packet.spi, EspKeys(encryption, b"" if integrity is None else integrity.value))


@dataclass(frozen=True, slots=True)
class KekKeys:
    """A KEK key packet (RFC 6407 §5.6.2): the KEK (IV | key) and the key server's push-signing public key."""

    kek: Kek
    verifying_key: VerifyingKey

    def to_wire(self, spi: bytes) -> KeyPacket:
        attrs = (
            Attribute.tlv(KekKeyAttribute.KEK_ALGORITHM_KEY, self.kek.material),
            Attribute.tlv(KekKeyAttribute.SIG_ALGORITHM_KEY, self.verifying_key.spki),
        )
        return KeyPacket(KeyPacketType.KEK, spi, attrs)

    @classmethod
    def from_wire(cls, packet: KeyPacket, policy: KekPolicy) -> KekKeys:
        where = f"KEK key packet {packet.spi.hex()}"
        handled = frozenset({KekKeyAttribute.KEK_ALGORITHM_KEY, KekKeyAttribute.SIG_ALGORITHM_KEY})
        found = _collect(packet.attributes, where, KekKeyAttribute, handled)
        for required in handled:
            if required not in found:
                raise bad_key(f"{where} has no {KekKeyAttribute(required).name}")
        try:
            kek = Kek.from_material(policy.algorithm, found[KekKeyAttribute.KEK_ALGORITHM_KEY].value, policy.key_bits)
            verifying = VerifyingKey.from_spki(found[KekKeyAttribute.SIG_ALGORITHM_KEY].value)
        except CryptoError as err:
            raise bad_key(f"{where}: {err}") from None
        return cls(kek, verifying)


@dataclass(frozen=True, slots=True)
class SenderIds:
    """A SID key packet (RFC 6407 §5.6.4; RFC 6054): this member's counter-mode IV prefixes."""

    bits: int
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 63:
            raise bad_key(f"NUMBER_OF_SID_BITS {self.bits} is outside 1..63")
        if not self.values or len(set(self.values)) != len(self.values):
            raise bad_key("a SID key packet needs one or more distinct SID values")
        if any(not 0 <= v < 1 << self.bits for v in self.values):
            raise bad_key(f"a SID value does not fit in {self.bits} bits")

    def to_wire(self) -> KeyPacket:
        attrs = [Attribute.tv(SidKeyAttribute.NUMBER_OF_SID_BITS, self.bits)]
        attrs += [Attribute.tlv(SidKeyAttribute.SID_VALUE, v.to_bytes(4, "big")) for v in self.values]
        return KeyPacket(KeyPacketType.SID, b"", tuple(attrs))

    @classmethod
    def from_wire(cls, packet: KeyPacket) -> SenderIds:
        bits = [a.int for a in packet.attributes if a.type == SidKeyAttribute.NUMBER_OF_SID_BITS]
        values = tuple(a.int for a in packet.attributes if a.type == SidKeyAttribute.SID_VALUE)
        if len(bits) != 1:
            raise bad_key(f"the SID key packet carries {len(bits)} NUMBER_OF_SID_BITS attributes, not 1")
        if len(values) + 1 != len(packet.attributes):
            raise unsupported("the SID key packet carries attributes other than NUMBER_OF_SID_BITS and SID_VALUE")
        return cls(bits[0], values)


def _check_kek_keys(kek: KekPolicy | None, keys: KekKeys | None) -> None:
    if kek is None:
        if keys is not None:
            raise bad_key("KEK keys without an SA KEK")
        return
    where = f"KEK {kek.spi.hex()}"
    if keys is None:
        raise bad_key(f"{where} has no KEK key packet")
    if keys.kek.algorithm != kek.algorithm:
        raise bad_key(f"{where}: key material is for {keys.kek.algorithm.name}, the SA KEK says {kek.algorithm.name}")
    if kek.key_bits is not None and len(keys.kek.key) * 8 != kek.key_bits:
        bits = len(keys.kek.key) * 8
        raise bad_key(f"{where}: KEK_ALGORITHM_KEY holds a {bits}-bit key, KEK_KEY_LENGTH says {kek.key_bits}")
    # VerifyingKey refuses RSA keys below MIN_RSA_BITS and the supported curves
    # have 256/384/521-bit keys, so the size tells whether the key fits the scheme.
    bits = keys.verifying_key.key_bits
    if kek.sig_algorithm is SigAlgorithm.RSA:
        fits = bits >= MIN_RSA_BITS
    else:
        fits = bits == _ECDSA_KEY_BITS.get(kek.sig_algorithm)
    if not fits:
        raise bad_key(f"{where}: the {bits}-bit SIG_ALGORITHM_KEY does not fit SIG_ALGORITHM {kek.sig_algorithm.name}")
    if kek.sig_key_bits is not None and kek.sig_key_bits != bits:
        raise bad_key(f"{where}: SIG_KEY_LENGTH is {kek.sig_key_bits} but the SIG_ALGORITHM_KEY has {bits} bits")


def _check_tek_keys(permits: tuple[TekPolicy, ...], keys: tuple[TekKeys, ...]) -> None:
    """Exactly one key packet per permit SPI, sized for its suite (RFC 6407 §3.3, §5.6.1)."""
    suites = {t.spi: t.suite for t in permits}
    seen: set[bytes] = set()
    for key in keys:
        where = f"TEK {key.spi.hex()}"
        if key.spi in seen:
            raise bad_key(f"{where} has two key packets")
        seen.add(key.spi)
        suite = suites.get(key.spi)
        if suite is None:
            raise bad_key(f"the TEK key packet for SPI {key.spi.hex()} matches no SA TEK")
        salt = " (key | 4-octet salt)" if suite.counter_mode else ""
        if len(key.material.encryption) != suite.encryption_key_size:
            raise bad_key(
                f"{where}: TEK_ALGORITHM_KEY is {len(key.material.encryption)} octets, "
                f"{suite.name} needs {suite.encryption_key_size}{salt}"
            )
        if len(key.material.integrity) != suite.integrity_key_size:
            raise bad_key(
                f"{where}: TEK_INTEGRITY_KEY is {len(key.material.integrity)} octets, "
                f"{suite.name} needs {suite.integrity_key_size}"
            )
    for spi in suites:
        if spi not in seen:
            raise bad_key(f"SA TEK {spi.hex()} has no TEK key packet")


# -- the whole group -------------------------------------------------------------


@dataclass(frozen=True)
class GroupPolicy:
    """Everything one registration delivers for group ``group_id``: the SA policy and its keys.

    ``sender_ids`` is member-specific: the key server adds it to the KD
    when a TEK uses a counter mode (RFC 6407 §3.5, §5.6.4).
    """

    group_id: int
    sa: SaPolicy
    tek_keys: tuple[TekKeys, ...] = ()
    kek_keys: KekKeys | None = None
    sender_ids: SenderIds | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.group_id <= 0xFFFFFFFF:
            raise PolicyError(f"group ID {self.group_id} does not fit 4 octets")
        _check_kek_keys(self.sa.kek, self.kek_keys)
        _check_tek_keys(self.sa.permits, self.tek_keys)
        if self.sender_ids is not None and not self.sa.counter_mode:
            raise bad_key("a SID key packet was delivered but no TEK uses a counter mode")

    @property
    def kek(self) -> KekPolicy | None:
        return self.sa.kek

    @property
    def gap(self) -> GroupAssociatedPolicy | None:
        return self.sa.gap

    @property
    def teks(self) -> tuple[TekPolicy, ...]:
        return self.sa.teks

    def key_download(self) -> KeyDownload:
        """The KD: KEK packet first, then a TEK packet per SPI, then the SIDs."""
        packets: list[KeyPacket] = []
        if self.sa.kek is not None and self.kek_keys is not None:
            packets.append(self.kek_keys.to_wire(self.sa.kek.spi))
        packets += [k.to_wire() for k in self.tek_keys]
        if self.sender_ids is not None:
            packets.append(self.sender_ids.to_wire())
        return KeyDownload(tuple(packets))

    def to_wire(self) -> tuple[GroupSa, KeyDownload]:
        return self.sa.to_wire(), self.key_download()

    @classmethod
    def from_wire(cls, group_id: int, sa: GroupSa, kd: KeyDownload) -> GroupPolicy:
        """The policy of PULL messages 2 and 4, or ``PolicyError`` saying why it must not be installed."""
        return cls.with_key_download(group_id, SaPolicy.from_wire(sa), kd)

    @classmethod
    def with_key_download(cls, group_id: int, sa: SaPolicy, kd: KeyDownload) -> GroupPolicy:
        """Match the key packets of ``kd`` to an already checked ``sa`` (by SPI, RFC 6407 §3.3)."""
        tek_keys: list[TekKeys] = []
        kek_keys: KekKeys | None = None
        sender_ids: SenderIds | None = None
        for packet in kd.packets:
            if packet.kd_type == KeyPacketType.TEK:
                tek_keys.append(TekKeys.from_wire(packet))
            elif packet.kd_type == KeyPacketType.KEK:
                if kek_keys is not None:
                    raise bad_key("the KD carries more than one KEK key packet")
                if sa.kek is None:
                    raise bad_key("the KD carries a KEK key packet but the SA has no SA KEK")
                if packet.spi != sa.kek.spi:
                    raise bad_key(f"the KEK key packet SPI {packet.spi.hex()} is not the SA KEK SPI {sa.kek.spi.hex()}")
                kek_keys = KekKeys.from_wire(packet, sa.kek)
            elif packet.kd_type == KeyPacketType.SID:
                if sender_ids is not None:
                    raise bad_key("the KD carries more than one SID key packet")
                sender_ids = SenderIds.from_wire(packet)
            else:
                raise unsupported(f"key packet type {name_of(KeyPacketType, packet.kd_type)} is not supported")
        return cls(group_id, sa, tuple(tek_keys), kek_keys, sender_ids)
