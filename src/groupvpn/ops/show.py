"""Junos-style operational commands: `show`, `clear` and `request` over the control socket.

The words after the verb are matched against ``COMMANDS`` (``N`` and
``ADDR`` are values); the daemon answers with a view, ``{"title": str,
"records": [ {field: value, ...}, ... ], "notes": [str, ...]}``, which is
printed as a table (or one block per record with ``detail``) or as JSON.
The daemon decides the fields; this module only lays them out, so a new
field needs no change here.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.control import DEFAULT_DIR, ControlError, call

ROLE_SOCKETS = {"member": DEFAULT_DIR / "member.sock", "server": DEFAULT_DIR / "ks.sock"}


@dataclass(frozen=True)
class Command:
    verb: str
    words: tuple[str, ...]  # after "security group-vpn"; "N"/"ADDR" are values, "[...]" optional tails
    topic: str

    @property
    def role(self) -> str:
        return self.words[0]


COMMANDS = (
    Command("show", ("member", "ike", "security-associations"), "ike-security-associations"),
    Command("show", ("member", "kek", "security-associations"), "kek-security-associations"),
    Command("show", ("member", "ipsec", "security-associations"), "ipsec-security-associations"),
    Command("show", ("member", "ipsec", "statistics"), "ipsec-statistics"),
    Command("show", ("member", "policy"), "policy"),
    Command("show", ("server", "registered-members"), "registered-members"),
    Command("show", ("server", "kek", "security-associations"), "kek-security-associations"),
    Command("show", ("server", "ipsec", "security-associations"), "ipsec-security-associations"),
    Command("show", ("server", "statistics"), "statistics"),
    Command("clear", ("member", "ipsec", "security-associations"), "ipsec-security-associations"),
    Command("clear", ("server", "registered-members"), "registered-members"),
    Command("request", ("server", "rekey"), "rekey"),
    Command("request", ("server", "reauthorize"), "reauthorize"),
)

# Trailing options: keyword -> (request field, value parser or None for a flag).
OPTIONS: dict[str, tuple[str, Any]] = {
    "detail": ("detail", None),
    "group": ("group", int),
    "member": ("member", lambda v: str(ipaddress.ip_address(v))),
    "method": ("method", lambda v: {"delete": "delete", "dtd": "dtd"}[v]),
}


def parse_words(verb: str, words: Sequence[str]) -> tuple[Command, dict[str, Any]]:
    """Match ``security group-vpn ...`` words; return the command and its options."""
    words = list(words)
    if words[:2] != ["security", "group-vpn"]:
        raise ControlError(f"expected 'security group-vpn', got {' '.join(words[:2]) or 'nothing'}")
    rest = words[2:]
    matches = [c for c in COMMANDS if c.verb == verb and tuple(rest[: len(c.words)]) == c.words]
    if not matches:
        choices = "; ".join(" ".join(c.words) for c in COMMANDS if c.verb == verb)
        raise ControlError(f"unknown command '{verb} {' '.join(words)}' (expected one of: {choices})")
    command = max(matches, key=lambda c: len(c.words))
    options: dict[str, Any] = {}
    tail = rest[len(command.words) :]
    while tail:
        word = tail.pop(0)
        if word not in OPTIONS:
            raise ControlError(f"unexpected '{word}' (options: {', '.join(OPTIONS)})")
        field, parse = OPTIONS[word]
        if parse is None:
            options[field] = True
            continue
        if not tail:
            raise ControlError(f"'{word}' needs a value")
        value = tail.pop(0)
        try:
            options[field] = parse(value)
        except (ValueError, KeyError):
            raise ControlError(f"'{value}' is not a valid {word}") from None
    return command, options


def render(view: dict[str, Any], detail: bool) -> str:
    """A view as an aligned table, or as one block of ``field: value`` lines per record."""
    lines = [view.get("title", "")] if view.get("title") else []
    records: list[dict[str, Any]] = view.get("records", [])
    if not records:
        lines.append("  (none)")
    elif detail:
        for record in records:
            width = max(len(_label(k)) for k in record)
            lines.append("")
            lines += [f"  {_label(k) + ':':<{width + 1}} {_cell(v)}" for k, v in record.items()]
    else:
        fields = list(dict.fromkeys(k for r in records for k in r))
        table = [[_label(f) for f in fields]] + [[_cell(r.get(f, "")) for f in fields] for r in records]
        widths = [max(len(row[i]) for row in table) for i in range(len(fields))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines += view.get("notes", [])
    return "\n".join(lines)


def _label(field: str) -> str:
    return field.replace("_", " ").capitalize()


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):  # counts by name, e.g. drops by reason
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items()) or "-"
    if value is None:
        return "-"
    return str(value)


def _run(args: argparse.Namespace) -> int:
    try:
        command, options = parse_words(args.command, args.words)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.show_keys:
        print("WARNING: --show-keys prints secret key material; protect this output.", file=sys.stderr)
    socket_path = args.socket or ROLE_SOCKETS[command.role]
    request = {"op": command.verb, "role": command.role, "topic": command.topic, "show_keys": args.show_keys, **options}
    try:
        view = call(socket_path, request)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=False))
    else:
        print(render(view, bool(options.get("detail"))))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, helptext in (
        ("show", "show operational state, e.g. 'show security group-vpn member ipsec security-associations'"),
        ("clear", "clear state, e.g. 'clear security group-vpn member ipsec security-associations'"),
        ("request", "request an action, e.g. 'request security group-vpn server rekey group 1'"),
    ):
        parser = subparsers.add_parser(verb, help=helptext)
        parser.add_argument("words", nargs="+", help="the command words, Junos style")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--socket", type=Path, help="the daemon's control socket (default: by role, in /run/groupvpn)")
        parser.add_argument(
            "--show-keys", action="store_true", help="include key material (reveals secrets)"
        )
        parser.set_defaults(func=_run)
