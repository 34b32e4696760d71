import pytest
from hypothesis import given, strategies as st

from groupvpn.wire.attributes import KEK_REGISTRY, Attribute, decode_attributes, encode_attributes
from groupvpn.wire.errors import WireError


def test_basic_and_variable_encoding():
    attrs = (Attribute.tv(1, 7), Attribute.lifetime(12, 86400))
    data = encode_attributes(attrs)
    assert data == bytes.fromhex("80010007000c000400015180")
    assert decode_attributes(data, "T") == attrs
    assert attrs[1].int == 86400


def test_number_chooses_basic_when_it_fits():
    assert Attribute.number(2, 3600).basic
    assert not Attribute.number(2, 70000).basic


def test_truncated_variable_attribute_names_offset():
    with pytest.raises(WireError) as err:
        decode_attributes(bytes.fromhex("80010007000c0004000151"), "Transform", 40)
    assert err.value.offset == 44
    assert "declares 4 value octets" in err.value.problem


def test_short_tail_is_an_error():
    with pytest.raises(WireError, match="too short"):
        decode_attributes(bytes.fromhex("800100070001"), "T")


@given(st.binary(max_size=64))
def test_random_bytes_only_raise_wire_error(data):
    try:
        attrs = decode_attributes(data, "T")
    except WireError:
        return
    assert encode_attributes(attrs) == data


def test_registry_keeps_private_classes_and_rejects_unknown_ones():
    legacy_ack = bytes.fromhex("80810001")
    assert decode_attributes(legacy_ack, "SA KEK", 0, KEK_REGISTRY) == (Attribute.tv(129, 1),)
    with pytest.raises(WireError) as err:
        decode_attributes(bytes.fromhex("80010001" "800a0001"), "SA KEK", 100, KEK_REGISTRY)
    assert (err.value.offset, err.value.problem) == (104, "unknown KEK attribute class 10")


def test_registry_accepts_variable_classes_in_either_form():
    short = decode_attributes(bytes.fromhex("80040e10"), "SA KEK", 0, KEK_REGISTRY)
    long = decode_attributes(bytes.fromhex("0004000400000e10"), "SA KEK", 0, KEK_REGISTRY)
    assert short[0].int == long[0].int == 3600
    assert encode_attributes(short) == bytes.fromhex("80040e10")
