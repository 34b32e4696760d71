"""Every registry number used on the wire, once.

Values come from RFC 2407 (IPsec DOI), RFC 2408 (ISAKMP), RFC 2409 (IKE),
RFC 3706 (DPD), RFC 4868, RFC 6407 (GDOI), RFC 8052 and RFC 8263; the
digest (shared/specs/GDOI-DIGEST.md) cites the section of each.  Numbers
that collide across DOIs (exchange 32 is IKE Quick Mode and GDOI
GROUPKEY-PULL; ESP is 3 in the IPsec DOI but 1 in GDOI) get separate enums
so the type says which registry a value belongs to.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

ISAKMP_VERSION = 0x10  # major 1, minor 0
GDOI_PORT = 848
IKE_PORT = 500
NAT_T_PORT = 4500  # RFC 3948: IKE behind a non-ESP marker (4 zero octets), or UDP-encapsulated ESP


class ExchangeType(IntEnum):
    """ISAKMP exchange types (RFC 2408 §3.1; GDOI values RFC 6407 §3-4, RFC 8263 §8)."""

    NONE = 0
    BASE = 1
    IDENTITY_PROTECTION = 2  # IKE Main Mode
    AUTHENTICATION_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    # DOI-specific: in DOI 1 these are Quick Mode / New Group Mode.
    GROUPKEY_PULL = 32
    GROUPKEY_PUSH = 33
    GDOI_KNOWN_UNREGISTERED = 34
    GROUPKEY_PUSH_ACK = 35


MAIN_MODE = ExchangeType.IDENTITY_PROTECTION
QUICK_MODE = ExchangeType.GROUPKEY_PULL  # same number, IPsec DOI meaning


class IpsecExchangeType(IntEnum):
    """What the DOI-specific exchange numbers mean in the IPsec DOI (RFC 2409 App. A)."""

    QUICK_MODE = 32
    NEW_GROUP_MODE = 33


class Flags(IntFlag):
    """ISAKMP header flags (RFC 2408 §3.1)."""

    NONE = 0
    ENCRYPTION = 0x01
    COMMIT = 0x02
    AUTHENTICATION_ONLY = 0x04


class PayloadType(IntEnum):
    """ISAKMP payload types (RFC 2408 §3.1; GDOI RFC 6407 §5)."""

    NONE = 0
    SA = 1
    PROPOSAL = 2
    TRANSFORM = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    NOTIFY = 11
    DELETE = 12
    VENDOR_ID = 13
    SAK = 15
    SAT = 16
    KD = 17
    SEQ = 18
    POP = 19
    NAT_D = 20
    NAT_OA = 21
    GAP = 22


class DOI(IntEnum):
    """Domains of interpretation (RFC 2408 §3.4; RFC 6407 §5.2)."""

    ISAKMP = 0
    IPSEC = 1
    GDOI = 2


class Situation(IntEnum):
    """Situation values; 4 octets for both DOIs used here."""

    NONE = 0  # GDOI: MUST be 0
    SIT_IDENTITY_ONLY = 1  # IPsec DOI


# IPsec DOI situation bits that append labelled-domain fields (RFC 2407 §4.2.2).
SIT_LABELLED = 0x06

# Payload types 128-255 are private use (RFC 2408 §3.1); attribute classes,
# GDOI protocol IDs, KD types and GAP/KEK attribute classes from 128 up are
# private use in their registries (RFC 6407 §5.3-5.6).
PRIVATE_USE = 128
# IKE (RFC 2409 App. A) reserves attribute classes 16384-32767 for private use.
IKE_PRIVATE_USE = 16384
# RFC 2407 §4.6.2.1: ID types 249-255 are private use.
ID_PRIVATE_USE = 249


class ProtocolId(IntEnum):
    """IPsec DOI protocol identifiers (RFC 2407 §4.4.1); also Notify/Delete in DOI 0/1."""

    RESERVED = 0
    ISAKMP = 1
    IPSEC_AH = 2
    IPSEC_ESP = 3
    IPCOMP = 4


class GdoiProtocol(IntEnum):
    """GDOI protocol identifiers for SA TEK and Delete (RFC 6407 §5.5, §5.9; RFC 8052 §2.2)."""

    KEK = 0  # Delete of the rekey SA; RESERVED in SA TEK
    IPSEC_ESP = 1
    IPSEC_AH = 2
    IEC_61850 = 3


class CertEncoding(IntEnum):
    """Certificate encodings for CERT and CR payloads (RFC 2408 §3.9)."""

    NONE = 0
    PKCS7_X509 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    X509_KEY_EXCHANGE = 5
    KERBEROS_TOKENS = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10


class IsakmpTransformId(IntEnum):
    """Transform IDs for PROTO_ISAKMP (RFC 2407 §4.4.2)."""

    KEY_IKE = 1


class IkeAttribute(IntEnum):
    """Phase 1 attribute classes (RFC 2409 App. A)."""

    ENCRYPTION_ALGORITHM = 1
    HASH_ALGORITHM = 2
    AUTHENTICATION_METHOD = 3
    GROUP_DESCRIPTION = 4
    GROUP_TYPE = 5
    GROUP_PRIME = 6
    GROUP_GENERATOR_ONE = 7
    GROUP_GENERATOR_TWO = 8
    GROUP_CURVE_A = 9
    GROUP_CURVE_B = 10
    LIFE_TYPE = 11
    LIFE_DURATION = 12
    PRF = 13
    KEY_LENGTH = 14
    FIELD_SIZE = 15
    GROUP_ORDER = 16


# Phase 1 attribute classes defined as variable length (RFC 2409 App. A).
IKE_VARIABLE_ATTRIBUTES = frozenset(
    {
        IkeAttribute.GROUP_PRIME,
        IkeAttribute.GROUP_GENERATOR_ONE,
        IkeAttribute.GROUP_GENERATOR_TWO,
        IkeAttribute.GROUP_CURVE_A,
        IkeAttribute.GROUP_CURVE_B,
        IkeAttribute.LIFE_DURATION,
        IkeAttribute.GROUP_ORDER,
    }
)


class EncryptionAlgorithm(IntEnum):
    """IKE Phase 1 encryption algorithms (RFC 2409 App. A; RFC 3602 §5.1)."""

    DES_CBC = 1
    IDEA_CBC = 2
    BLOWFISH_CBC = 3
    RC5_R16_B64_CBC = 4
    TRIPLE_DES_CBC = 5
    CAST_CBC = 6
    AES_CBC = 7


class HashAlgorithm(IntEnum):
    """IKE Phase 1 hash algorithms (RFC 2409 App. A; RFC 4868 §4)."""

    MD5 = 1
    SHA1 = 2
    TIGER = 3
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6


class AuthMethod(IntEnum):
    """IKE Phase 1 authentication methods (RFC 2409 App. A)."""

    PRE_SHARED_KEY = 1
    DSS_SIGNATURES = 2
    RSA_SIGNATURES = 3
    RSA_ENCRYPTION = 4
    REVISED_RSA_ENCRYPTION = 5


class DhGroup(IntEnum):
    """Group Description values (RFC 2409 §6; RFC 3526; RFC 5903 for ECP)."""

    MODP_768 = 1
    MODP_1024 = 2
    EC2N_155 = 3
    EC2N_185 = 4
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21


class LifeType(IntEnum):
    """Life Type, shared by IKE (class 11) and IPsec SA (class 1) attributes."""

    SECONDS = 1
    KILOBYTES = 2


class IdType(IntEnum):
    """Identification types (RFC 2407 §4.6.2.1; RFC 8052 §4)."""

    RESERVED = 0
    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV4_ADDR_SUBNET = 4
    IPV6_ADDR = 5
    IPV6_ADDR_SUBNET = 6
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11
    LIST = 12
    OID = 13


class NotifyType(IntEnum):
    """Notify message types (RFC 2408 §3.14.1; RFC 2407 §4.6.3; RFC 3706)."""

    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_MINOR_VERSION = 6
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578
    R_U_THERE = 36136
    R_U_THERE_ACK = 36137


# RFC 3706 §5.1: Vendor ID announcing DPD support (version 1.0).
DPD_VENDOR_ID = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")


class KekAttribute(IntEnum):
    """SA KEK attribute classes (RFC 6407 §5.3; RFC 8263 §8)."""

    KEK_MANAGEMENT_ALGORITHM = 1
    KEK_ALGORITHM = 2
    KEK_KEY_LENGTH = 3
    KEK_KEY_LIFETIME = 4
    SIG_HASH_ALGORITHM = 5
    SIG_ALGORITHM = 6
    SIG_KEY_LENGTH = 7
    RESERVED_KE_OAKLEY_GROUP = 8
    KEK_ACK_REQUESTED = 9


KEK_VARIABLE_ATTRIBUTES = frozenset({KekAttribute.KEK_KEY_LIFETIME})

# The legacy KEK_ACK_REQUESTED class that older key servers send (private use range).
KEK_ACK_REQUESTED_LEGACY = 129


class KekManagementAlgorithm(IntEnum):
    LKH = 1


class KekAlgorithm(IntEnum):
    """KEK_ALGORITHM values (RFC 6407 §5.3.2)."""

    DES = 1
    TRIPLE_DES = 2
    AES = 3


class SigHashAlgorithm(IntEnum):
    """SIG_HASH_ALGORITHM values (RFC 6407 §5.3.5)."""

    MD5 = 1
    SHA1 = 2
    SHA256 = 3
    SHA384 = 4
    SHA512 = 5


class SigAlgorithm(IntEnum):
    """SIG_ALGORITHM values (RFC 6407 §5.3.6)."""

    RSA = 1
    DSS = 2
    ECDSS = 3
    ECDSA_256 = 4
    ECDSA_384 = 5
    ECDSA_521 = 6


class KekAckType(IntEnum):
    """KEK_ACK_REQUESTED values (RFC 8263 §2)."""

    KEK_SHA256 = 1
    LKH_SHA256 = 2
    KEK_SHA512 = 3
    LKH_SHA512 = 4


class GapAttribute(IntEnum):
    """Group Associated Policy attributes (RFC 6407 §5.4).

    ANTI_REPLAY_WINDOW is a project choice in the private-use range: the
    time-based anti-replay window (seconds, 0 disables) that the seed says
    travels in the GAP; see docs/conformance.md.
    """

    ACTIVATION_TIME_DELAY = 1
    DEACTIVATION_TIME_DELAY = 2
    SENDER_ID_REQUEST = 3
    ANTI_REPLAY_WINDOW = 200


class IpsecAttribute(IntEnum):
    """IPsec DOI SA attributes used in SA TEK (RFC 2407 §4.5; RFC 6407 §5.5.1)."""

    SA_LIFE_TYPE = 1
    SA_LIFE_DURATION = 2
    GROUP_DESCRIPTION = 3
    ENCAPSULATION_MODE = 4
    AUTHENTICATION_ALGORITHM = 5
    KEY_LENGTH = 6
    KEY_ROUNDS = 7
    COMPRESS_DICTIONARY_SIZE = 8
    COMPRESS_PRIVATE_ALGORITHM = 9
    ECN_TUNNEL = 10
    EXTENDED_SEQUENCE_NUMBER = 11
    AUTH_KEY_LENGTH = 12
    SIGNATURE_ENCODING_ALGORITHM = 13
    ADDRESS_PRESERVATION = 14
    SA_DIRECTION = 15
    # Project choice in RFC 2407 §4.5's private range (32001-32767): marks an
    # SA TEK that is a deny entry, not an SA; see docs/conformance.md.
    POLICY_ACTION = 32001


IPSEC_VARIABLE_ATTRIBUTES = frozenset(
    {IpsecAttribute.SA_LIFE_DURATION, IpsecAttribute.COMPRESS_PRIVATE_ALGORITHM}
)


class PolicyAction(IntEnum):
    """Values of the private ``IpsecAttribute.POLICY_ACTION``; absent means PERMIT."""

    PERMIT = 1
    DENY = 2


class EspTransform(IntEnum):
    """ESP transform IDs (RFC 2407 §4.4.4; RFC 3602; RFC 4106)."""

    DES_IV64 = 1
    DES = 2
    TRIPLE_DES = 3
    NULL = 11
    AES_CBC = 12
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20


class AuthAlgorithm(IntEnum):
    """IPsec Authentication Algorithm attribute values (RFC 2407 §4.5; RFC 4868 §4)."""

    HMAC_MD5 = 1
    HMAC_SHA1 = 2
    DES_MAC = 3
    KPDK = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class EncapsulationMode(IntEnum):
    TUNNEL = 1
    TRANSPORT = 2


class AddressPreservation(IntEnum):
    """RFC 6407 §5.5.1.1.1; absent means SOURCE_AND_DESTINATION."""

    RESERVED = 0
    NONE = 1
    SOURCE_ONLY = 2
    DESTINATION_ONLY = 3
    SOURCE_AND_DESTINATION = 4


class SaDirection(IntEnum):
    """RFC 6407 §5.5.1.1.2; absent means SYMMETRIC."""

    RESERVED = 0
    SENDER_ONLY = 1
    RECEIVER_ONLY = 2
    SYMMETRIC = 3


class KeyPacketType(IntEnum):
    """Key Download key packet types (RFC 6407 §5.6)."""

    TEK = 1
    KEK = 2
    LKH = 3
    SID = 4


class TekKeyAttribute(IntEnum):
    TEK_ALGORITHM_KEY = 1
    TEK_INTEGRITY_KEY = 2
    TEK_SOURCE_AUTH_KEY = 3


class KekKeyAttribute(IntEnum):
    KEK_ALGORITHM_KEY = 1
    SIG_ALGORITHM_KEY = 2


class LkhKeyAttribute(IntEnum):
    LKH_DOWNLOAD_ARRAY = 1
    LKH_UPDATE_ARRAY = 2
    SIG_ALGORITHM_KEY = 3


class SidKeyAttribute(IntEnum):
    NUMBER_OF_SID_BITS = 1  # Basic
    SID_VALUE = 2


class IpProtocol(IntEnum):
    """IP protocol / IPv6 Next Header numbers the data plane handles (IANA protocol numbers registry)."""

    ICMP = 1
    IPV4 = 4  # ESP tunnel mode carrying IPv4 (RFC 4303 §2.6)
    TCP = 6
    UDP = 17
    DCCP = 33
    IPV6 = 41
    IPV6_ROUTING = 43
    IPV6_FRAGMENT = 44
    ESP = 50
    AH = 51
    ICMPV6 = 58
    NO_NEXT_HEADER = 59  # ESP dummy packet (RFC 4303 §2.6)
    IPV6_DESTINATION_OPTIONS = 60
    SCTP = 132
    UDP_LITE = 136
    # RFC 3692 experimentation value; the project's delay-detection timestamp
    # shim inside the ESP payload (docs/conformance.md).
    EXPERIMENT_253 = 253


IPV6_HOP_BY_HOP = 0  # Next Header value only (0 is "reserved" as an IPv4 protocol)


class Ecn(IntEnum):
    """ECN codepoints, the two low bits of the IPv4 TOS / IPv6 Traffic Class (RFC 3168 §5)."""

    NOT_ECT = 0
    ECT_1 = 1
    ECT_0 = 2
    CE = 3


class IcmpType(IntEnum):
    """ICMPv4 types the data plane sends or must recognise (RFC 792; RFC 1122 §3.2.2)."""

    ECHO_REPLY = 0
    DESTINATION_UNREACHABLE = 3
    SOURCE_QUENCH = 4
    REDIRECT = 5
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12


ICMP_FRAGMENTATION_NEEDED = 4  # Destination Unreachable code (RFC 792; next-hop MTU RFC 1191 §4)


class Icmpv6Type(IntEnum):
    """ICMPv6 types (RFC 4443 §2.1): below 128 are errors."""

    PACKET_TOO_BIG = 2
    ECHO_REQUEST = 128


def name_of(enum: type[IntEnum], value: int) -> str:
    """Registry name of ``value`` for display, or ``UNKNOWN(n)`` when unassigned."""
    member = enum._value2member_map_.get(value)
    return member.name if member is not None else f"UNKNOWN({value})"
