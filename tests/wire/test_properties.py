"""Round trips for generated valid messages, and fuzzing that only ever yields WireError.

Every fuzz test also checks the converse round trip: whatever decodes
re-encodes to exactly the input, so a decoder that accepts two encodings
of the same value would show up here.
"""

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from groupvpn.wire import numbers as n
from groupvpn.wire.attributes import (
    GAP_REGISTRY,
    IKE_REGISTRY,
    IPSEC_REGISTRY,
    KEK_REGISTRY,
    SID_KEY_REGISTRY,
    TEK_KEY_REGISTRY,
    decode_attributes,
    encode_attributes,
)
from groupvpn.wire.errors import WireError
from groupvpn.wire.message import (
    HEADER,
    Message,
    decode_message,
    decode_payloads,
    encode_each,
    encode_payloads,
    first_type,
)

from wire_strategies import SHAPES, blob, cookie, shape, u32

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXCHANGES = [
    n.MAIN_MODE,
    n.ExchangeType.GROUPKEY_PULL,
    n.ExchangeType.GROUPKEY_PUSH,
    n.ExchangeType.GROUPKEY_PUSH_ACK,
    n.ExchangeType.INFORMATIONAL,
]


@pytest.mark.parametrize("name", sorted(SHAPES))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), icky=cookie, rcky=cookie, message_id=u32, padding=blob(15))
def test_every_message_shape_round_trips(name, data, icky, rcky, message_id, padding):
    shape = data.draw(SHAPES[name])
    if shape.encrypted:
        plaintext = encode_payloads(shape.payloads) + padding
        assert decode_payloads(first_type(shape.payloads), plaintext, shape.exchange) == (shape.payloads, padding)
        first = first_type(shape.payloads)
        sealed = Message.sealed(icky, rcky, shape.exchange, first, plaintext, message_id=message_id)
        assert decode_message(sealed.encode()) == sealed
        assert sealed.decode_plaintext(plaintext) == (shape.payloads, padding)
    else:
        message = Message.build(icky, rcky, shape.exchange, shape.payloads, message_id=message_id)
        data = message.encode()
        assert decode_message(data) == message
        assert len(data) == HEADER.size + sum(map(len, encode_each(shape.payloads)))
    json.dumps(Message.build(icky, rcky, shape.exchange, shape.payloads).to_dict())


def _clear_datagram(shape, icky, rcky):
    """Encode any shape in clear so the fuzzers reach every payload decoder."""
    return Message.build(icky, rcky, shape.exchange, shape.payloads).encode()


def _check_datagram(data: bytes) -> None:
    try:
        message = decode_message(data)
    except WireError as err:
        assert 0 <= err.offset <= len(data), err
        event(f"WireError in {err.payload}")
        return
    event("decoded")
    assert message.encode() == data


def _check_plaintext(first: int, data: bytes, exchange: int) -> None:
    try:
        payloads, padding = decode_payloads(first, data, exchange)
    except WireError as err:
        assert HEADER.size <= err.offset <= HEADER.size + len(data), err
        event(f"WireError in {err.payload}")
        return
    event("decoded")
    assert encode_payloads(payloads) + padding == data


mutation = st.tuples(
    st.sampled_from(["flip", "set", "truncate", "insert", "delete", "add16"]),
    st.integers(0, 1 << 16),
    st.integers(0, 255),
)


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, where, value in mutations:
        i = where % (len(buf) or 1)
        if not buf:
            buf.append(value)
        elif kind == "flip":
            buf[i] ^= 1 << (value % 8)
        elif kind == "set":
            buf[i] = value
        elif kind == "truncate":
            del buf[i:]
        elif kind == "insert":
            buf.insert(i, value)
        elif kind == "delete":
            del buf[i]
        elif i + 1 < len(buf):  # add16: nudge a 16-bit big-endian field, as a length edit would
            word = (int.from_bytes(buf[i : i + 2], "big") + value - 128) & 0xFFFF
            buf[i : i + 2] = word.to_bytes(2, "big")
    return bytes(buf)


def _with_length(data: bytes) -> bytes:
    """Make the header Length agree again, so mutations reach the payload decoders."""
    if len(data) < HEADER.size:
        return data
    return data[:24] + len(data).to_bytes(4, "big") + data[HEADER.size :]


@FUZZ
@given(shape, cookie, cookie, st.lists(mutation, min_size=1, max_size=3), st.booleans())
def test_mutated_messages_only_raise_wire_error(shape, icky, rcky, mutations, fix_length):
    mutated = _mutate(_clear_datagram(shape, icky, rcky), mutations)
    _check_datagram(_with_length(mutated) if fix_length else mutated)


@FUZZ
@given(shape, cookie, cookie, st.data())
def test_payload_length_edits_only_raise_wire_error(shape, icky, rcky, data):
    encoded = _clear_datagram(shape, icky, rcky)
    starts, pos = [], HEADER.size
    for payload in encode_each(shape.payloads):
        starts.append(pos)
        pos += len(payload)
    if not starts:
        return
    start = data.draw(st.sampled_from(starts))
    declared = int.from_bytes(encoded[start + 2 : start + 4], "big")
    new_length = data.draw(st.integers(0, 0xFFFF) | st.integers(declared - 4, declared + 4))
    _check_datagram(encoded[: start + 2] + (new_length & 0xFFFF).to_bytes(2, "big") + encoded[start + 4 :])


@FUZZ
@given(shape, st.lists(mutation, min_size=1, max_size=3), st.sampled_from(EXCHANGES))
def test_mutated_plaintexts_only_raise_wire_error(shape, mutations, exchange):
    plaintext = _mutate(encode_payloads(shape.payloads), mutations)
    _check_plaintext(first_type(shape.payloads), plaintext, exchange)


@FUZZ
@given(blob(28, 28), st.binary(max_size=200))
def test_random_bodies_only_raise_wire_error(header, body):
    data = header[:17] + b"\x10" + header[18:24] + (28 + len(body)).to_bytes(4, "big") + body
    _check_datagram(data)
    _check_plaintext(header[16], body, header[18])


@FUZZ
@given(
    st.sampled_from([IKE_REGISTRY, IPSEC_REGISTRY, KEK_REGISTRY, GAP_REGISTRY, TEK_KEY_REGISTRY, SID_KEY_REGISTRY]),
    st.binary(max_size=48),
)
def test_random_attributes_only_raise_wire_error(registry, data):
    try:
        attrs = decode_attributes(data, "T", 0, registry)
    except WireError:
        return
    assert encode_attributes(attrs) == data
