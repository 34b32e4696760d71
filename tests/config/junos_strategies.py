"""Hypothesis strategies: random configuration trees that a schema admits, and edits of texts.

Values are arbitrary text (spaces, quotes, backslashes, braces, comment
starters, newlines, non-ASCII) so that the renderers' quoting is exercised
along with the parser; interface names are plain words, as the syntax
requires of a keyword.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

from groupvpn.config.junos import Node, Statement, Values

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
INTERFACE_NAME = st.builds(str.__add__, st.sampled_from("egx"), st.text("abcdefgh0123456789/.-", max_size=8))
INACTIVE = st.integers(0, 9).map(lambda n: n == 0)


def _value(spec: Statement) -> st.SearchStrategy[str]:
    return st.sampled_from(spec.choices) if spec.choices else TEXT


def _values(spec: Statement) -> st.SearchStrategy[tuple[str, ...]]:
    if spec.values is Values.NONE:
        return st.just(())
    if spec.values is Values.ONE:
        return _value(spec).map(lambda v: (v,))
    return st.lists(_value(spec), min_size=1, max_size=3, unique=True).map(tuple)


def _child(spec: Statement) -> st.SearchStrategy[Node]:
    if spec.wildcard:
        head = INTERFACE_NAME.map(lambda word: (word, ()))
    elif spec.named:
        head = _value(spec).map(lambda name: (spec.keyword, (name,)))
    else:
        head = _values(spec).map(lambda values: (spec.keyword, values))
    return st.tuples(head, _children(spec), INACTIVE).map(lambda t: Node(t[0][0], t[0][1], t[1], t[2]))


_CHILDREN: dict[int, st.SearchStrategy[tuple[Node, ...]]] = {}


def _children(spec: Statement) -> st.SearchStrategy[tuple[Node, ...]]:
    """Up to three children in random order, so that trees stay small at every depth.

    Built once per statement: creating strategies while drawing is what
    makes generation slow.
    """
    if id(spec) in _CHILDREN:
        return _CHILDREN[id(spec)]
    if not spec.children:
        return _CHILDREN.setdefault(id(spec), st.just(()))
    picks = st.lists(st.sampled_from([(child, _child(child)) for child in spec.children]), max_size=3)

    @st.composite
    def pick(draw: st.DrawFn) -> tuple[Node, ...]:
        nodes: dict[object, Node] = {}
        for child, strategy in draw(picks):
            node = draw(strategy)
            nodes.setdefault((node.keyword, node.values) if child.named else node.keyword, node)
        return tuple(nodes.values())

    return _CHILDREN.setdefault(id(spec), pick())


def trees(root: Statement) -> st.SearchStrategy[Node]:
    """Whole configurations under ``root``, every statement possibly inactive."""
    return _children(root).map(lambda children: Node("", (), children))


SNIPPETS = st.sampled_from(
    ["{", "}", ";", "[", "]", '"', "\\", "#", "/*", "*/", "\n", "\r\n", "\t", " ", "inactive: ", "set ", "delete ", "x"]
) | st.text(max_size=3)


@st.composite
def mutation(draw: st.DrawFn, text: str, moves: bool = True) -> str:
    """One edit: delete or insert characters, or delete, repeat or (if ``moves``) move a word."""
    at = draw(st.integers(0, len(text)))
    words = [m.span() for m in re.finditer(r"\S+", text)]
    kind = draw(st.sampled_from(["delete", "insert", "word"] if words else ["delete", "insert"]))
    if kind == "delete":
        return text[:at] + text[at + draw(st.integers(1, 6)) :]
    if kind == "insert":
        return text[:at] + draw(SNIPPETS) + text[at:]
    start, end = draw(st.sampled_from(words))
    word, rest = text[start:end], text[:start] + text[end:]
    action = draw(st.sampled_from(["delete", "repeat", "move"] if moves else ["delete", "repeat"]))
    if action == "delete":
        return rest
    if action == "repeat":
        return text[:end] + " " + word + text[end:]
    to = draw(st.integers(0, len(rest)))
    return rest[:to] + " " + word + " " + rest[to:]
