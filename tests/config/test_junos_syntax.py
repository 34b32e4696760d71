"""What the Junos syntax allows, in both forms, and the tree it gives."""

from pathlib import Path

import pytest

from groupvpn.config.junos import (
    Node,
    flag,
    leaf,
    leaf_list,
    named,
    parse,
    parse_curly,
    parse_set,
    render_curly,
    render_set,
    schema,
)
from groupvpn.config.schema import MEMBER, SERVER

FIXTURES = Path(__file__).parent / "fixtures"

GATEWAY = "security group-vpn member ike gateway g1"
VPN = "security group-vpn member ipsec vpn v1"


def member(path: str) -> Node:
    """The node at a space-separated path of keywords and names (test shorthand)."""
    node = parse_set(f"set {path}", MEMBER)
    while node.children:
        node = node.children[0]
    return node


def vpn(tree: Node, name: str = "v1") -> Node:
    return tree.child("security").child("group-vpn").child("member").child("ipsec").child("vpn", name)


def test_set_lines_merge_into_one_hierarchy():
    tree = parse_set(
        f"set {GATEWAY} ike-policy p1\nset {GATEWAY} server-address 198.18.1.1\nset {VPN} df-bit clear\n", MEMBER
    )
    assert tree == parse_curly(
        """
        security {
            group-vpn {
                member {
                    ike { gateway g1 { ike-policy p1; server-address 198.18.1.1; } }
                    ipsec { vpn v1 { df-bit clear; } }
                }
            }
        }
        """,
        MEMBER,
    )
    assert [node.keyword for node in tree.children[0].children[0].children[0].children] == ["ike", "ipsec"]


def test_repeated_blocks_merge_and_keep_first_appearance_order():
    text = """
    security { group-vpn { member { ike {
        proposal p2 { dh-group group14; }
        proposal p1 { dh-group group2; }
        proposal p2 { lifetime-seconds 3600; }
    } } } }
    """
    ike = parse(text, MEMBER).child("security").child("group-vpn").child("member").child("ike")
    assert [p.value for p in ike.children_named("proposal")] == ["p2", "p1"]
    p2 = ike.child("proposal", "p2")
    assert [(c.keyword, c.value) for c in p2.children] == [("dh-group", "group14"), ("lifetime-seconds", "3600")]


def test_a_repeated_leaf_keeps_its_last_value_and_a_list_accumulates():
    tree = parse_set(
        f"set {VPN} df-bit clear\nset {VPN} df-bit copy\n"
        f"set {GATEWAY} server-address 198.18.1.1\n"
        f"set {GATEWAY} server-address [ 198.18.1.2 198.18.1.1 ]\n"
        f"set {GATEWAY} server-address 198.18.1.3 198.18.1.3\n",
        MEMBER,
    )
    assert vpn(tree).child("df-bit").value == "copy"
    gateway = tree.child("security").child("group-vpn").child("member").child("ike").child("gateway", "g1")
    assert gateway.child("server-address").values == ("198.18.1.1", "198.18.1.2", "198.18.1.3")


def test_list_values_may_be_bare_or_bracketed():
    bracketed = member(f"{GATEWAY} server-address [ 198.18.1.1 198.18.1.2 ]")
    assert member(f"{GATEWAY} server-address 198.18.1.1 198.18.1.2") == bracketed
    assert bracketed.values == ("198.18.1.1", "198.18.1.2")


def test_one_line_nesting_equals_the_block_form():
    one_line = """
    security { group-vpn { member { ike {
        policy p { pre-shared-key ascii-text "$9$abc"; }
        gateway g { local-address 198.18.0.2 routing-instance vr1; }
    } } } }
    """
    blocks = """
    security { group-vpn { member { ike {
        policy p { pre-shared-key { ascii-text "$9$abc"; } }
        gateway g { local-address 198.18.0.2 { routing-instance vr1; } }
    } } } }
    """
    assert parse(one_line, MEMBER) == parse(blocks, MEMBER)
    assert parse(one_line, MEMBER) == parse_set(
        'set security group-vpn member ike policy p pre-shared-key ascii-text "$9$abc"\n'
        "set security group-vpn member ike gateway g local-address 198.18.0.2 routing-instance vr1\n",
        MEMBER,
    )


def test_comments_strings_and_escapes():
    tree = parse_curly(
        """
        # a line comment
        security { /* a block
                      comment */ group-vpn { member { ipsec { vpn v1 {
            description "say \\"hi\\" {to} # \\\\ all;"; # trailing comment
            df-bit clear; ## SECRET-DATA
        } } } } }
        """,
        MEMBER,
    )
    assert vpn(tree).child("description").value == 'say "hi" {to} # \\ all;'
    assert vpn(tree).child("df-bit").value == "clear"


def test_words_keep_characters_that_only_start_comments_at_a_token_start():
    assert member(f"{VPN} description a#b/*c").value == "a#b/*c"


def test_inactive_statements_are_kept_marked_and_left_out_of_the_effective_tree():
    text = """
    security { group-vpn { member { ipsec { vpn v1 {
        inactive: df-bit clear;
        inactive: fail-open { rule r1 { source-address 198.18.0.0/24; } }
        match-direction output;
    } } } } }
    """
    tree = parse(text, MEMBER)
    assert [(c.keyword, c.inactive) for c in vpn(tree).children] == [
        ("df-bit", True),
        ("fail-open", True),
        ("match-direction", False),
    ]
    assert [c.keyword for c in vpn(tree.effective()).children] == ["match-direction"]
    assert tree == parse(
        f"set {VPN} df-bit clear\n"
        f"set {VPN} fail-open rule r1 source-address 198.18.0.0/24\n"
        f"set {VPN} match-direction output\n"
        f"deactivate {VPN} df-bit\n"
        f"deactivate {VPN} fail-open\n",
        MEMBER,
    )


def test_positions_are_where_a_statement_first_appears():
    tree = parse_set(f"set {VPN} df-bit clear\n\nset {VPN}   group 7\n", MEMBER)
    group = vpn(tree).child("group")
    assert (group.line, group.column) == (3, 46)
    assert (vpn(tree).line, vpn(tree).column) == (1, 37)


def test_parse_tells_the_forms_apart_and_accepts_empty_text():
    assert parse("", MEMBER) == Node("") == parse("# only a comment\n", MEMBER)
    assert parse("set services service-set s1", MEMBER) == parse("services { service-set s1; }", MEMBER)


def test_at_parses_relative_to_a_block():
    relative = parse("df-bit clear;", MEMBER, at=VPN.split())
    assert relative == parse_set(f"set {VPN} df-bit clear", MEMBER)
    assert parse_set("set df-bit clear", MEMBER, at=VPN.split()) == relative


def test_interface_names_are_keywords():
    tree = parse_curly("interfaces { ge-0/0/0 { unit 0 { family inet { address 198.18.0.1/24; } } } }", MEMBER)
    (interface,) = tree.child("interfaces").children
    assert interface.keyword == "ge-0/0/0"
    assert interface.child("unit", "0").child("family", "inet").child("address").value == "198.18.0.1/24"


def test_node_value_needs_exactly_one_value():
    servers = member(f"{GATEWAY} server-address [ 198.18.1.1 198.18.1.2 ]")
    with pytest.raises(ValueError, match="has 2 values"):
        _ = servers.value


def test_renderers_golden():
    tree = parse(
        f"set {GATEWAY} server-address [ 198.18.1.1 198.18.1.2 ]\n"
        f'set {VPN} description "two words"\n'
        f"deactivate {VPN}\n",
        MEMBER,
    )
    assert render_curly(tree, indent="  ") == (
        "security {\n"
        "  group-vpn {\n"
        "    member {\n"
        "      ike {\n"
        "        gateway g1 {\n"
        "          server-address [ 198.18.1.1 198.18.1.2 ];\n"
        "        }\n"
        "      }\n"
        "      ipsec {\n"
        "        inactive: vpn v1 {\n"
        '          description "two words";\n'
        "        }\n"
        "      }\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    assert render_set(tree) == (
        f'set {GATEWAY} server-address [ 198.18.1.1 198.18.1.2 ]\nset {VPN} description "two words"\ndeactivate {VPN}\n'
    )


def test_a_schema_keyword_appears_once_per_level():
    with pytest.raises(ValueError, match="'a' appears twice"):
        schema(flag("a"), leaf("a"))


def test_a_small_custom_schema():
    root = schema(named("zone", leaf_list("member"), flag("trusted")))
    tree = parse("zone lan { member [ a b ]; trusted; }", root)
    assert tree == parse("set zone lan member a b\nset zone lan trusted", root)


def test_a_complete_key_server_configuration():
    tree = parse((FIXTURES / "server.conf").read_text(), SERVER)
    group = tree.child("security").child("group-vpn").child("server").child("group", "g1")
    assert group.child("ike-gateway").values == ("gm1", "gm2")
    assert group.child("server-member-communication").child("sig-hash-algorithm").value == "sha-256"
    policies = group.child("ipsec-sa", "sa1").children_named("match-policy")
    assert [(p.value, p.inactive) for p in policies] == [("lan-to-lan", False), ("bypass-bgp", True)]
    assert parse_set(render_set(tree), SERVER) == tree


def test_a_complete_member_configuration():
    tree = parse((FIXTURES / "member.set").read_text(), MEMBER)
    ike = tree.child("security").child("group-vpn").child("member").child("ike")
    assert ike.child("policy", "ks").child("pre-shared-key").child("ascii-text").value == 'Zq8#Wv2 kP0x-"Jy7"Lm4'
    assert ike.child("gateway", "ks-pair").child("server-address").values == ("198.18.0.1", "198.18.0.5")
    lan = vpn(tree.effective(), "lan")
    assert lan.child("fail-open") is None and lan.child("df-bit").value == "copy"
    assert parse_curly(render_curly(tree), MEMBER) == tree
