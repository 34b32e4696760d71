"""Junos configuration syntax: the curly-brace hierarchy and ``set`` commands, one tree.

Operators write group VPN configuration the way they would on a Junos
router, in either form Junos prints (``show configuration`` and
``show configuration | display set``).  Both parse to the same ordered
``Node`` tree because both are resolved word by word against a
``Statement`` schema saying which keywords exist where, which take a name
(``proposal NAME { ... }``) and which are leaves with one value or a
list.  Without a schema the ``set`` form is ambiguous (is
``routing-instance`` a value of ``local-address`` or a statement?); with
one, both forms also get the same precise error messages.

Parsing is strict and collects every problem in the text before raising
one ``ConfigError``.  Values are not interpreted here (numbers, addresses
and cross references are the typed model's business) except that a leaf
may restrict them to a fixed set of choices.  Values of ``secret`` leaves
never appear in a message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, auto
from functools import cached_property
from typing import TypeGuard

from .errors import ConfigError, Problem

# --------------------------------------------------------------------------
# Schema


class Values(Enum):
    """How many values a statement takes after its keyword."""

    NONE = "no value"
    ONE = "one value"
    LIST = "a list of values"


@dataclass(frozen=True)
class Statement:
    """One keyword of the hierarchy and what may follow it.

    ``named`` statements take one name and may occur once per name
    (``proposal p1``, ``proposal p2``); other statements occur once, a
    repeated ``LIST`` leaf accumulating values and a repeated ``ONE``
    leaf keeping the last value, as Junos ``set`` does.  A ``wildcard``
    child matches any word not otherwise known there and keeps that word
    as its keyword (interface names under ``interfaces``); its
    ``keyword`` is only a label for messages.
    """

    keyword: str
    children: tuple[Statement, ...] = ()
    values: Values = Values.NONE
    choices: tuple[str, ...] = ()
    named: bool = False
    secret: bool = False
    wildcard: bool = False
    _index: dict[str, Statement] = field(init=False, repr=False, compare=False)
    _any: Statement | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, Statement] = {}
        wildcards = [child for child in self.children if child.wildcard]
        for child in self.children:
            if not child.wildcard and index.setdefault(child.keyword, child) is not child:
                raise ValueError(f"'{child.keyword}' appears twice under '{self.keyword}'")
        if len(wildcards) > 1:
            raise ValueError(f"more than one wildcard under '{self.keyword}'")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_any", wildcards[0] if wildcards else None)

    def lookup(self, word: str) -> Statement | None:
        """The child statement a word introduces here, if any."""
        return self._index.get(word, self._any)

    def is_keyword(self, word: str) -> bool:
        """Whether ``word`` is one of this statement's fixed child keywords."""
        return word in self._index

    @property
    def expected(self) -> str:
        """The child keywords, for messages."""
        return ", ".join(sorted(f"<{c.keyword}>" if c.wildcard else c.keyword for c in self.children))

    @property
    def guards_secrets(self) -> bool:
        """A misspelt child here is probably the secret itself, so it is never echoed."""
        return any(child.secret for child in self.children)

    @cached_property
    def secret_keywords(self) -> frozenset[str]:
        """Keywords of the secret leaves anywhere below."""
        own = {child.keyword for child in self.children if child.secret}
        return frozenset(own.union(*(child.secret_keywords for child in self.children)))


def schema(*children: Statement) -> Statement:
    """The root of a hierarchy: the top-level statements."""
    return Statement("", children)


def container(keyword: str, *children: Statement) -> Statement:
    """``keyword { ... }``, occurring once."""
    return Statement(keyword, children)


def named(keyword: str, *children: Statement, choices: tuple[str, ...] = ()) -> Statement:
    """``keyword NAME { ... }``, once per name."""
    return Statement(keyword, children, Values.ONE, choices, named=True)


def wildcard(label: str, *children: Statement) -> Statement:
    """``ANY-WORD { ... }`` (e.g. an interface name), once per word."""
    return Statement(label, children, wildcard=True)


def leaf(keyword: str, *choices: str, secret: bool = False, options: tuple[Statement, ...] = ()) -> Statement:
    """``keyword VALUE;`` optionally followed by option statements on the same line
    (``local-address 198.18.0.2 routing-instance vr1;``)."""
    return Statement(keyword, options, Values.ONE, choices, secret=secret)


def leaf_list(keyword: str, *choices: str) -> Statement:
    """``keyword VALUE ...;`` or ``keyword [ VALUE ... ];``."""
    return Statement(keyword, (), Values.LIST, choices)


def flag(keyword: str) -> Statement:
    """``keyword;`` with no value."""
    return Statement(keyword)


# --------------------------------------------------------------------------
# Tree


@dataclass(frozen=True)
class Node:
    """One configured statement; the root has an empty keyword.

    Equality ignores positions, so trees parsed from the two syntaxes
    compare equal.  ``line``/``column`` locate the first occurrence of the
    statement (0 for statements given as ``at``); ``positions`` holds the
    line and column of each value, so that a bad value is reported where
    it is written.
    """

    keyword: str
    values: tuple[str, ...] = ()
    children: tuple[Node, ...] = ()
    inactive: bool = False
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)
    positions: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    @property
    def value(self) -> str:
        """The single value of a leaf or the name of a named statement."""
        if len(self.values) != 1:
            raise ValueError(f"'{self.keyword}' has {len(self.values)} values, not one")
        return self.values[0]

    def position(self, index: int | None = None) -> tuple[int, int]:
        """Line and column of value ``index``, or of the statement itself."""
        if index is not None and index < len(self.positions):
            return self.positions[index]
        return self.line, self.column

    def child(self, keyword: str, name: str | None = None) -> Node | None:
        """The child statement ``keyword`` (with that name, for named statements)."""
        for node in self.children:
            if node.keyword == keyword and (name is None or node.values == (name,)):
                return node
        return None

    def children_named(self, keyword: str) -> tuple[Node, ...]:
        """All ``keyword`` children, e.g. every ``proposal``, in configuration order."""
        return tuple(node for node in self.children if node.keyword == keyword)

    def effective(self) -> Node:
        """This tree without its inactive statements: what the daemons act on."""
        return replace(self, children=tuple(c.effective() for c in self.children if not c.inactive))


# --------------------------------------------------------------------------
# Tokens

_BARE_WORD = r'[^\s{};\[\]"]+'
_TOKEN = re.compile(
    r"(?P<space>[^\S\n]+)"
    r"|(?P<newline>\n)"
    r"|(?P<comment>\#[^\n]*|/\*.*?\*/)"
    r'|(?P<string>"(?:[^"\\]|\\.)*")'
    r"|(?P<punctuation>[{};\[\]])"
    rf"|(?P<word>{_BARE_WORD})",
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_NEEDS_ESCAPE = re.compile(r'([\\"])')


class _Kind(Enum):
    WORD = auto()
    STRING = auto()
    OPEN_BRACE = auto()
    CLOSE_BRACE = auto()
    SEMICOLON = auto()
    OPEN_BRACKET = auto()
    CLOSE_BRACKET = auto()
    END_OF_LINE = auto()


_PUNCTUATION = {
    "{": _Kind.OPEN_BRACE,
    "}": _Kind.CLOSE_BRACE,
    ";": _Kind.SEMICOLON,
    "[": _Kind.OPEN_BRACKET,
    "]": _Kind.CLOSE_BRACKET,
}
_TERMINATORS = frozenset({_Kind.OPEN_BRACE, _Kind.CLOSE_BRACE, _Kind.SEMICOLON})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str  # a word, or a string's contents with escapes resolved
    line: int
    column: int
    end: tuple[int, int]  # line and column just past the token
    hidden: bool = False  # may be (part of) a secret: never shown in a message


_VALUE_REST_OF_LINE = re.compile(rf'\s*(?:"(?:[^"\\]|\\.)*"?|{_BARE_WORD})?[^\n]*', re.DOTALL)


def _secret_spans(text: str, keywords: frozenset[str]) -> list[tuple[int, int]]:
    """Character ranges that may hold secret values, judged from the raw text alone.

    Masking by parse position fails exactly when quoting is broken (a stray
    '"' earlier in the file turns a quoted key into bare words elsewhere),
    so everything from a secret keyword to the end of the line where its
    value ends counts as secret, wherever the parse puts it.
    """
    if not keywords:
        return []
    outside = r'[^\s{};\[\]"]'
    pattern = rf"(?<!{outside})(?:{'|'.join(map(re.escape, sorted(keywords)))})(?!{outside})"
    spans = []
    for keyword in re.finditer(pattern, text):
        value = _VALUE_REST_OF_LINE.match(text, keyword.end())
        assert value is not None  # every part of the pattern is optional
        spans.append((keyword.end(), value.end()))
    return spans


def _shown(token: _Token) -> str:
    return "<hidden>" if token.hidden else token.text


def _tokenize(text: str, problems: list[Problem], secrets: frozenset[str]) -> tuple[list[_Token], bool]:
    """Tokens of the whole text, and whether it was read to the end.

    An unterminated string or comment swallows the rest of the input, so
    tokenizing stops there with one problem.  Tokens overlapping a
    possible secret (see ``_secret_spans``) are marked hidden.
    """
    spans = _secret_spans(text, secrets)
    tokens: list[_Token] = []
    line, line_start, pos = 1, 0, 0
    for match in _TOKEN.finditer(text):
        kind, start = match.lastgroup, match.start()
        if start != pos:  # the pattern skipped an opening quote that has no closing one
            break
        pos = match.end()
        if kind == "space":
            continue
        column, raw = start - line_start + 1, match.group()
        if kind == "word" and raw.startswith("/*"):
            problems.append(Problem(line, column, "unterminated comment ('/*' without '*/')"))
            return tokens, False
        start_line = line
        if kind != "word" and "\n" in raw:
            line += raw.count("\n")
            line_start = start + raw.rindex("\n") + 1
        end = (line, pos - line_start + 1)
        hidden = bool(spans) and any(low < pos and start < high for low, high in spans)
        if kind == "word":
            tokens.append(_Token(_Kind.WORD, raw, line, column, end, hidden))
        elif kind == "punctuation":
            tokens.append(_Token(_PUNCTUATION[raw], raw, line, column, end))
        elif kind == "string":
            contents = _ESCAPE.sub(lambda m: m.group(1), raw[1:-1])
            tokens.append(_Token(_Kind.STRING, contents, start_line, column, end, hidden))
        elif line != start_line:  # a newline, or a comment spanning lines
            tokens.append(_Token(_Kind.END_OF_LINE, "", start_line, column, end))
    if pos < len(text):
        problems.append(Problem(line, pos - line_start + 1, "unterminated quoted string"))
        return tokens, False
    return tokens, True


@dataclass(frozen=True, slots=True)
class _List:
    """A bracketed value list ``[ a b c ]``."""

    open: _Token
    words: tuple[_Token, ...]
    close: _Token


_Item = _Token | _List


def _quote(value: str) -> str:
    """A value as a token that reads back as the same value."""
    if re.fullmatch(_BARE_WORD, value) and not value.startswith(("#", "/*")):
        return value
    return '"' + _NEEDS_ESCAPE.sub(r"\\\1", value) + '"'


# --------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class _Segment:
    """One statement of a resolved path: keyword, its values, where it ends."""

    spec: Statement
    keyword: _Token
    tokens: tuple[_Token, ...]  # the value tokens
    last: _Token

    @property
    def values(self) -> tuple[str, ...]:
        """The value texts, without repeats."""
        return tuple(self._first_tokens)

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        return tuple((token.line, token.column) for token in self._first_tokens.values())

    @property
    def _first_tokens(self) -> dict[str, _Token]:
        first: dict[str, _Token] = {}
        for token in self.tokens:
            first.setdefault(token.text, token)
        return first

    def describe(self) -> str:
        if self.spec.secret or any(token.hidden for token in self.tokens):
            return " ".join((_shown(self.keyword), *["<hidden>"] * len(self.tokens)))
        return " ".join((_shown(self.keyword), *map(_quote, self.values)))


def _describe(segments: Sequence[_Segment]) -> str:
    return " ".join(segment.describe() for segment in segments)


@dataclass(eq=False, slots=True)
class _Draft:
    """A node under construction; children keyed the way Junos merges them."""

    spec: Statement
    keyword: str
    values: tuple[str, ...]
    line: int
    column: int
    path: str  # for messages: "security group-vpn member ike proposal p1"
    positions: tuple[tuple[int, int], ...] = ()
    inactive: bool = False
    children: dict[object, _Draft] = field(default_factory=dict)

    def where(self, segments: Sequence[_Segment]) -> str:
        """Where a statement after ``segments`` is, for messages."""
        path = _join(self.path, _describe(segments))
        return f"under '{path}'" if path else "at top level"

    def freeze(self) -> Node:
        children = tuple(child.freeze() for child in self.children.values())
        return Node(self.keyword, self.values, children, self.inactive, self.line, self.column, self.positions)


def _key(segment: _Segment) -> object:
    return (segment.keyword.text, segment.values) if segment.spec.named else segment.keyword.text


@dataclass(frozen=True, slots=True)
class _Frame:
    """An open ``{`` block; ``draft`` is None while skipping an invalid statement's block."""

    draft: _Draft | None
    open: _Token


# Junos configuration-mode commands: the first word of every `set`-form line.
_COMMANDS = frozenset(
    {"activate", "annotate", "copy", "deactivate", "delete", "insert"}
    | {"protect", "rename", "replace", "set", "unprotect"}
)
_ACCEPTED_COMMANDS = ("set", "deactivate")


class _Loader:
    """Resolves statements against the schema and merges them into one draft tree."""

    def __init__(self, root: Statement, at: Sequence[str]) -> None:
        self.problems: list[Problem] = []
        self.root = _Draft(root, "", (), 0, 0, "")
        self.base = self.root
        if at:
            words = [_Token(_Kind.WORD, word, 0, 0, (0, 0)) for word in at]
            resolved = self._resolve(words, 0, self.root)
            if resolved is None or resolved[1] != len(words) or not resolved[0][-1].spec.children:
                reasons = "; ".join(problem.message for problem in self.problems) or "not a container"
                raise ValueError(f"'at' path {' '.join(at)!r} is not a configuration block: {reasons}")
            self.base = self._apply(self.root, resolved[0], None)

    def _problem(self, at: tuple[int, int], message: str) -> None:
        self.problems.append(Problem(at[0], at[1], message))

    # -- resolving words against the schema --------------------------------

    def _resolve(
        self, items: Sequence[_Item], start: int, ctx: _Draft, *, deactivating: bool = False
    ) -> tuple[list[_Segment], int] | None:
        """One statement path from ``items[start:]`` under ``ctx``.

        Returns the segments and the index of the first item not used: a
        statement ends after a leaf, or where a word is not a child of the
        last statement but is a keyword of the block or of the statement
        holding it (a missing ``;``).  Returns None after reporting a problem.
        """
        segments: list[_Segment] = []
        holder, parent, i = ctx.spec, ctx.spec, start
        while i < len(items):
            item = items[i]
            word = _word(item)
            if segments and (not parent.children or (parent.lookup(word) is None and _follows(word, holder, ctx))):
                break
            spec = self._keyword(item, parent, ctx, segments)
            if spec is None:
                return None
            assert isinstance(item, _Token)
            if spec.wildcard and item.hidden:
                self._problem(
                    _start(item),
                    f"a <{spec.keyword}> shares a line with a pre-shared key; give the key a line of its own",
                )
                return None
            taken = self._values(spec, item, items, i + 1, parent, optional=deactivating)
            if taken is None:
                return None
            tokens, last, i = taken
            segments.append(_Segment(spec, item, tokens, last))
            holder, parent = parent, spec
        return segments, i

    def _keyword(self, item: _Item, parent: Statement, ctx: _Draft, segments: Sequence[_Segment]) -> Statement | None:
        """The statement ``item`` introduces under ``parent``; None after reporting why not."""
        if isinstance(item, _List):
            found = "a '[' list instead of a statement"
        elif item.kind is _Kind.STRING:
            found = "a quoted string instead of a statement"
        elif (spec := parent.lookup(item.text)) is not None:
            return spec
        else:
            found = f"unknown statement '{'<hidden>' if parent.guards_secrets else _shown(item)}'"
        self._problem(_start(item), f"{found} {ctx.where(segments)} (expected one of: {parent.expected})")
        return None

    def _values(
        self, spec: Statement, keyword: _Token, items: Sequence[_Item], i: int, parent: Statement, *, optional: bool
    ) -> tuple[tuple[_Token, ...], _Token, int] | None:
        """The value tokens after ``keyword``, the last token used and the next index; or None."""
        if spec.values is Values.NONE:
            return (), keyword, i
        if i == len(items):
            if optional and not spec.named:
                return (), keyword, i
            what = "a name" if spec.named else "a value"
            self._problem(_start(keyword), f"'{_shown(keyword)}' needs {what}")
            return None
        item = items[i]
        if isinstance(item, _List):
            if spec.values is not Values.LIST:
                self._problem(_start(item), f"'{_shown(keyword)}' takes {spec.values.value}, not a list")
                return None
            if not item.words:
                self._problem(_start(item), f"empty list for '{_shown(keyword)}'")
                return None
            tokens, last, i = list(item.words), item.close, i + 1
        else:
            tokens, i = [item], i + 1
            while spec.values is Values.LIST and i < len(items) and _more_value(more := items[i], spec, parent):
                tokens.append(more)
                i += 1
            last = tokens[-1]
        for token in tokens:
            if token.hidden and not spec.secret:
                # What shares a line with a key may be the key (see _secret_spans): it never
                # becomes an ordinary value, which messages and logs would show.
                shared = f"a value of '{_shown(keyword)}' shares a line with a pre-shared key"
                self._problem(_start(token), f"{shared}; give the key a line of its own")
                return None
            if spec.choices and token.text not in spec.choices:
                choices = ", ".join(spec.choices)
                message = f"invalid value '{_shown(token)}' for '{_shown(keyword)}' (expected one of: {choices})"
                self._problem(_start(token), message)
                return None
        return tuple(tokens), last, i

    def _leftover(self, segments: list[_Segment], item: _Item, ctx: _Draft, command: str | None) -> bool:
        """Report what follows a complete statement; True if a ``;`` is all that is missing.

        A keyword of the block after a statement is a forgotten ``;``, and
        the rest is parsed as the next statement; a keyword of the
        statement's own parent after a one-line nested statement, or any
        keyword in a ``set`` command, is one statement too many.
        """
        stated, word = _describe(segments), _word(item)
        shown = _shown(item) if isinstance(item, _Token) else ""
        if command is None and ctx.spec.is_keyword(word):
            self._problem(segments[-1].last.end, f"missing ';' after '{stated}'")
            return True
        if _follows(word, segments[-2].spec if len(segments) > 1 else ctx.spec, ctx):
            if command is None:
                message = f"unexpected '{shown}' after '{stated}' (it needs a statement of its own)"
            else:
                message = f"one statement per '{command}' command: unexpected '{shown}' after '{stated}'"
            self._problem(_start(item), message)
            return False
        spec, keyword = segments[-1].spec, _shown(segments[-1].keyword)
        if spec.values is Values.LIST:
            self._problem(_start(item), f"values of '{keyword}' must be given as one list")
        else:
            self._problem(_start(item), f"too many values for '{keyword}' (it takes {spec.values.value})")
        return False

    # -- merging into the tree ---------------------------------------------

    def _apply(self, ctx: _Draft, segments: Sequence[_Segment], inactive: _Token | None) -> _Draft:
        draft = ctx
        for segment in segments:
            draft = self._insert(draft, segment)
            if inactive is not None:
                draft.inactive, inactive = True, None
        return draft

    @staticmethod
    def _insert(parent: _Draft, segment: _Segment) -> _Draft:
        key = _key(segment)
        draft = parent.children.get(key)
        if draft is None:
            token = segment.keyword
            path = _join(parent.path, segment.describe())
            draft = _Draft(segment.spec, token.text, segment.values, token.line, token.column, path, segment.positions)
            parent.children[key] = draft
        elif segment.spec.values is Values.LIST:
            for value, position in zip(segment.values, segment.positions):
                if value not in draft.values:
                    draft.values += (value,)
                    draft.positions += (position,)
        else:
            draft.values, draft.positions = segment.values, segment.positions
        return draft

    def _deactivate(self, ctx: _Draft, segments: Sequence[_Segment]) -> None:
        draft = ctx
        for segment in segments:
            found = draft.children.get(_key(segment))
            if found is None or (segment.values and found.values != segment.values):
                stated = _describe(segments)
                self._problem(_start(segment.keyword), f"cannot deactivate '{stated}': it is not configured")
                return
            draft = found
        draft.inactive = True

    # -- the two syntaxes ----------------------------------------------------

    def _items(self, tokens: Sequence[_Token]) -> list[_Item] | None:
        """Words and ``[ ... ]`` lists; None after reporting a bracket problem."""
        items: list[_Item] = []
        opened: _Token | None = None
        words: list[_Token] = []
        for token in tokens:
            if token.kind is _Kind.OPEN_BRACKET:
                if opened is not None:
                    self._problem(_start(token), "unexpected '[' inside a list")
                    return None
                opened, words = token, []
            elif token.kind is _Kind.CLOSE_BRACKET:
                if opened is None:
                    self._problem(_start(token), "unexpected ']' (no list is open)")
                    return None
                items.append(_List(opened, tuple(words), token))
                opened = None
            elif opened is not None:
                words.append(token)
            else:
                items.append(token)
        if opened is not None:
            self._problem(_start(opened), "'[' is never closed (missing ']')")
            return None
        return items

    def load_curly(self, tokens: Sequence[_Token], complete: bool) -> None:
        frames = [_Frame(self.base, _Token(_Kind.OPEN_BRACE, "", 0, 0, (0, 0)))]
        chunk: list[_Token] = []
        for token in tokens:
            if token.kind is _Kind.END_OF_LINE:
                continue
            if token.kind not in _TERMINATORS:
                chunk.append(token)
                continue
            frame = frames[-1]
            if token.kind is _Kind.OPEN_BRACE:
                if not chunk:
                    self._problem(_start(token), "'{' without a statement before it")
                frames.append(_Frame(self._curly_statement(frame, chunk, token) if chunk else None, token))
            elif token.kind is _Kind.SEMICOLON:
                if chunk:
                    self._curly_statement(frame, chunk, token)
                else:
                    self._problem(_start(token), "unexpected ';' (empty statement)")
            else:
                if chunk:
                    self._curly_statement(frame, chunk, None)
                if len(frames) == 1:
                    self._problem(_start(token), "unexpected '}' (no block is open)")
                else:
                    frames.pop()
            chunk = []
        if not complete:
            return
        if chunk:
            self._curly_statement(frames[-1], chunk, None)
        for frame in frames[1:]:
            self._problem(_start(frame.open), "'{' is never closed (missing '}')")

    def _curly_statement(self, frame: _Frame, chunk: Sequence[_Token], terminator: _Token | None) -> _Draft | None:
        """Apply one statement ended by ``;``, ``{`` or (missing ``;``) ``}``/end of input.

        Returns the draft a ``{`` opens, None if its block is to be skipped.
        """
        items = self._items(chunk)
        if items is None or frame.draft is None:
            return None
        first, inactive = items[0], None
        if isinstance(first, _Token) and _word(first) == "inactive:":
            inactive = first
            del items[0]
            if not items:
                self._problem(_start(inactive), "'inactive:' must be followed by a statement")
                return None
        start = 0
        while True:
            resolved = self._resolve(items, start, frame.draft)
            if resolved is None:
                return None
            segments, start = resolved
            draft = self._apply(frame.draft, segments, inactive)
            if start == len(items):
                break
            if not self._leftover(segments, items[start], frame.draft, None):
                return None
            inactive = None
        if terminator is None:
            self._problem(segments[-1].last.end, f"missing ';' after '{_describe(segments)}'")
        elif terminator.kind is _Kind.OPEN_BRACE and not draft.spec.children:
            keyword = _shown(segments[-1].keyword)
            self._problem(_start(terminator), f"'{keyword}' is a leaf statement and cannot open a block")
            return None
        return draft

    def load_set(self, tokens: Sequence[_Token]) -> None:
        line: list[_Token] = []
        for token in (*tokens, _Token(_Kind.END_OF_LINE, "", 0, 0, (0, 0))):
            if token.kind is not _Kind.END_OF_LINE:
                line.append(token)
            elif line:
                self._set_command(line)
                line = []

    def _set_command(self, line: Sequence[_Token]) -> None:
        verb = line[0]
        if verb.kind is not _Kind.WORD or verb.text not in _ACCEPTED_COMMANDS:
            accepted = " and ".join(f"'{c}'" for c in _ACCEPTED_COMMANDS)
            if verb.kind is _Kind.WORD and verb.text in _COMMANDS:
                self._problem(_start(verb), f"unsupported command '{verb.text}' (only {accepted} are accepted)")
            else:
                self._problem(_start(verb), f"expected a command ({accepted})")
            return
        for token in line[1:]:
            if token.kind in _TERMINATORS:
                self._problem(_start(token), f"unexpected '{token.text}' in a '{verb.text}' command")
                return
        items = self._items(line[1:])
        if items is None:
            return
        if not items:
            self._problem(_start(verb), f"'{verb.text}' needs a statement path")
            return
        deactivating = verb.text == "deactivate"
        resolved = self._resolve(items, 0, self.base, deactivating=deactivating)
        if resolved is None:
            return
        segments, end = resolved
        if end < len(items):
            self._leftover(segments, items[end], self.base, verb.text)
        elif deactivating:
            self._deactivate(self.base, segments)
        else:
            self._apply(self.base, segments, None)


def _start(item: _Item) -> tuple[int, int]:
    token = item.open if isinstance(item, _List) else item
    return token.line, token.column


def _word(item: _Item) -> str:
    """The text of a bare word; empty for strings and lists, which are never keywords."""
    return item.text if isinstance(item, _Token) and item.kind is _Kind.WORD else ""


def _follows(word: str, holder: Statement, ctx: _Draft) -> bool:
    """Whether ``word`` starts another statement of the block or of the one holding the last."""
    return holder.is_keyword(word) or ctx.spec.is_keyword(word)


def _more_value(item: _Item, spec: Statement, parent: Statement) -> TypeGuard[_Token]:
    """Whether an unbracketed list goes on: up to a keyword that could follow it."""
    if not isinstance(item, _Token):
        return False
    return item.kind is _Kind.STRING or not (spec.is_keyword(item.text) or parent.is_keyword(item.text))


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


# --------------------------------------------------------------------------
# Public entry points


def parse(text: str, root: Statement, *, at: Sequence[str] = ()) -> Node:
    """Parse either syntax; text whose first word is a configuration command is the ``set`` form.

    ``at`` is the hierarchy the text is relative to, like Junos
    ``load merge relative`` at ``[edit security group-vpn]``.
    """
    return _load(text, root, at, set_form=None)


def parse_curly(text: str, root: Statement, *, at: Sequence[str] = ()) -> Node:
    """Parse the curly-brace form (``show configuration``)."""
    return _load(text, root, at, set_form=False)


def parse_set(text: str, root: Statement, *, at: Sequence[str] = ()) -> Node:
    """Parse ``set`` (and ``deactivate``) commands, one per line (``| display set``)."""
    return _load(text, root, at, set_form=True)


def _load(text: str, root: Statement, at: Sequence[str], *, set_form: bool | None) -> Node:
    loader = _Loader(root, at)
    tokens, complete = _tokenize(text, loader.problems, root.secret_keywords)
    if set_form is None:
        first = next((t for t in tokens if t.kind is not _Kind.END_OF_LINE), None)
        set_form = first is not None and first.kind is _Kind.WORD and first.text in _COMMANDS
    if set_form:
        loader.load_set(tokens)
    else:
        loader.load_curly(tokens, complete)
    if loader.problems:
        raise ConfigError(loader.problems)
    return loader.root.freeze()


def _head(node: Node) -> str:
    if len(node.values) == 1:
        return f"{node.keyword} {_quote(node.values[0])}"
    return " ".join((node.keyword, "[", *map(_quote, node.values), "]")) if node.values else node.keyword


def render_curly(root: Node, indent: str = "    ") -> str:
    """The curly-brace form of a tree; parses back to an equal tree."""
    lines: list[str] = []

    def emit(node: Node, depth: int) -> None:
        prefix = indent * depth + ("inactive: " if node.inactive else "")
        if not node.children:
            lines.append(f"{prefix}{_head(node)};")
            return
        lines.append(f"{prefix}{_head(node)} {{")
        for child in node.children:
            emit(child, depth + 1)
        lines.append(indent * depth + "}")

    for child in root.children:
        emit(child, 0)
    return "".join(f"{line}\n" for line in lines)


def render_set(root: Node) -> str:
    """The ``set`` form of a tree, ``deactivate`` lines last; parses back to an equal tree."""
    sets: list[str] = []
    deactivations: list[str] = []

    def walk(node: Node, path: str) -> None:
        here = _join(path, _head(node))
        if not node.children:
            sets.append(f"set {here}")
        if node.inactive:
            deactivations.append(f"deactivate {here}")
        for child in node.children:
            walk(child, here)

    for child in root.children:
        walk(child, "")
    return "".join(f"{line}\n" for line in (*sets, *deactivations))
