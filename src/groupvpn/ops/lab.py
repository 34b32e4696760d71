"""``groupvpn lab up|status|down|demo``: a whole group VPN on one machine, in network namespaces.

::

               h1            h2            h3           hosts     198.19.N.2/24 (eth0)
               |             |             |
              gm1           gm2           gm3           members   lan 198.19.N.1/24, wan 198.18.N.2/24
                \\            |            /
                 +---------- wan ---------+---- ks      WAN router 198.18.N.1; key server 198.18.0.2/24

Every namespace is named ``PREFIX + role`` (default prefix ``gv-``); all
addresses are in 198.18.0.0/15 (benchmarking space, RFC 2544), WAN links
in 198.18.0.0/16 and LANs in 198.19.0.0/16.  The WAN router carries each
LAN prefix to its member, every other namespace routes only 198.18.0.0/15
and nothing has a default route, so the lab cannot reach or be reached
from the machine's own network.  Header-preserving ESP between members
travels with the hosts' addresses, which is why the WAN routes LANs.

The lab directory holds ``lab.json`` (what was created, updated as each
namespace appears, so ``down`` also cleans up after a crashed ``up``),
the key server and member configurations, and the daemons' logs, control
sockets and state.  Daemons are started only when this ``groupvpn`` has
the ``ks`` and ``member`` commands.  ``demo`` (``lab_demo``) shows a new
lab at work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TextIO

from ..config.errors import ConfigError
from ..runtime.control import ControlError, call
from . import lab_configs
from .netlab import (
    Link,
    NetlabError,
    Port,
    Route,
    Topology,
    build,
    destroy,
    existing_namespaces,
    interfaces,
    processes,
    routes_out,
    stop_processes,
)

DEFAULT_DIR = Path("/run/groupvpn/lab")  # tmpfs, like /run/netns: both vanish together on reboot
DEFAULT_PREFIX = "gv-"
DEFAULT_MEMBERS = 3
MAX_MEMBERS = 16
STATE_FILE = "lab.json"
KS_STATE_DIR = "ks"  # the key server's store (keys, SPIs, members)
DAEMON_START_TIMEOUT = 30.0

LAB_NET = IPv4Network("198.18.0.0/15")
WAN_NET = IPv4Network("198.18.0.0/16")
LAN_NET = IPv4Network("198.19.0.0/16")
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


class LabError(Exception):
    """Why a lab command could not do what was asked; shown to the operator as is."""


@dataclass(frozen=True, slots=True)
class Lab:
    """The lab's names and addresses: the topology as a function of prefix and member count."""

    prefix: str = DEFAULT_PREFIX
    members: int = DEFAULT_MEMBERS

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise LabError(f"prefix {self.prefix!r}: use up to 32 letters, digits, '.', '_' or '-'")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise LabError(f"a lab has 1 to {MAX_MEMBERS} members, not {self.members}")

    @property
    def wan(self) -> str:
        return f"{self.prefix}wan"

    @property
    def ks(self) -> str:
        return f"{self.prefix}ks"

    def gm(self, n: int) -> str:
        return f"{self.prefix}gm{n}"

    def host(self, n: int) -> str:
        return f"{self.prefix}h{n}"

    @property
    def numbers(self) -> range:
        return range(1, self.members + 1)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.wan, self.ks, *(self.gm(n) for n in self.numbers), *(self.host(n) for n in self.numbers))

    def owns(self, netns: str) -> bool:
        """Whether ``netns`` is named like a namespace of a lab with this prefix (any size)."""
        return re.fullmatch(rf"{re.escape(self.prefix)}(wan|ks|gm[0-9]+|h[0-9]+)", netns) is not None

    @staticmethod
    def _wan_link(n: int) -> IPv4Network:
        """WAN link 0 joins the key server, link N member N."""
        return IPv4Network(f"198.18.{n}.0/24")

    @staticmethod
    def lan(n: int) -> IPv4Network:
        return IPv4Network(f"198.19.{n}.0/24")

    @property
    def ks_address(self) -> IPv4Interface:
        return _nth(self._wan_link(0), 2)

    def member_wan(self, n: int) -> IPv4Interface:
        return _nth(self._wan_link(n), 2)

    def member_lan(self, n: int) -> IPv4Interface:
        return _nth(self.lan(n), 1)

    def host_address(self, n: int) -> IPv4Interface:
        return _nth(self.lan(n), 2)

    def topology(self) -> Topology:
        links = [Link(Port(self.wan, "ks", _nth(self._wan_link(0), 1)), Port(self.ks, "wan", self.ks_address))]
        routes = [Route(self.ks, LAB_NET, _nth(self._wan_link(0), 1).ip)]
        for n in self.numbers:
            router = _nth(self._wan_link(n), 1)
            links += [
                Link(Port(self.wan, f"gm{n}", router), Port(self.gm(n), "wan", self.member_wan(n))),
                Link(Port(self.gm(n), "lan", self.member_lan(n)), Port(self.host(n), "eth0", self.host_address(n))),
            ]
            routes += [
                Route(self.wan, self.lan(n), self.member_wan(n).ip),
                Route(self.gm(n), LAB_NET, router.ip),
                Route(self.host(n), LAB_NET, self.member_lan(n).ip),
            ]
        routers = frozenset((self.wan, *(self.gm(n) for n in self.numbers)))
        return Topology(self.namespaces, tuple(links), tuple(routes), routers)


def _nth(network: IPv4Network, host: int) -> IPv4Interface:
    return IPv4Interface(f"{network.network_address + host}/{network.prefixlen}")


# --------------------------------------------------------------------------
# The lab directory


def _state_path(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_path(directory).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise LabError(f"cannot read {_state_path(directory)}: {err}") from None
    return state


def _save_state(directory: Path, state: dict[str, Any]) -> None:
    """Atomically, so a crash leaves either the old or the new list of what exists."""
    temporary = _state_path(directory).with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    temporary.replace(_state_path(directory))


def _write_private(path: Path, text: str) -> None:
    """Configurations carry the lab's pre-shared key: owner-only from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


# --------------------------------------------------------------------------
# up


def configurations(lab: Lab, esp: str = lab_configs.DEFAULT_ESP_SUITE) -> dict[str, str]:
    """File name -> text of the key server and member configurations, sharing a fresh pre-shared key.

    ``esp`` is the group's suite, a key of ``lab_configs.ESP_SUITES``.
    """
    psk = secrets.token_urlsafe(24)
    members = [lab.member_wan(n).ip for n in lab.numbers]
    try:
        files = {"ks.conf": lab_configs.server_config(lab.ks_address.ip, members, LAN_NET, psk, esp)}
        for n in lab.numbers:
            files[f"gm{n}.conf"] = lab_configs.member_config(lab.ks_address.ip, lab.member_wan(n), "wan", psk)
    except ConfigError as err:
        raise LabError(f"the lab's own configuration does not load (a bug): {err}") from None
    return files


def create(directory: Path, lab: Lab) -> dict[str, Any]:
    """Build the namespaces and write the configurations; the new lab state.

    A failure removes whatever was built.  Refused when a lab recorded in
    ``directory`` still has namespaces, or the names are taken.  A new lab
    starts with a new key store: its group and pre-shared key are new too.
    """
    _require_root()
    previous = load_state(directory)
    if previous is not None:
        alive = sorted(existing_namespaces() & set(previous["namespaces"]))
        if alive:
            raise LabError(
                f"a lab is already up in {directory} ({len(alive)} namespaces, prefix {previous['prefix']!r}); "
                f"run `groupvpn lab down --dir {directory}` first"
            )
    files = configurations(lab)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    state: dict[str, Any] = {"prefix": lab.prefix, "members": lab.members, "namespaces": [], "daemons": {}}

    def journal(netns: str) -> None:
        state["namespaces"].append(netns)
        _save_state(directory, state)

    try:
        build(lab.topology(), journal)
        leaks = {netns: found for netns in lab.namespaces if (found := routes_out(netns))}
        if leaks:
            raise LabError(f"namespaces have routes out of the lab: {leaks}")
    except NetlabError as err:
        destroy(state["namespaces"])
        _state_path(directory).unlink(missing_ok=True)
        hint = " (another lab? `groupvpn lab down --prefix ...`)" if "already exist" in str(err) else ""
        raise LabError(f"{err}{hint}") from None
    except BaseException:
        destroy(state["namespaces"])
        _state_path(directory).unlink(missing_ok=True)
        raise
    _write_configurations(directory, files)
    return state


def reconfigure(directory: Path, lab: Lab, esp: str) -> None:
    """Stop the daemons, keep the network; new configurations for ``esp`` and a new key store.

    For a benchmark that measures several suites through the same namespaces.
    """
    stop_daemons(lab)
    _write_configurations(directory, configurations(lab, esp))


def stop_daemons(lab: Lab) -> None:
    """Stop the key server and the members; the network stays up."""
    stop_processes(pid for netns in (lab.ks, *map(lab.gm, lab.numbers)) for pid in processes(netns))


def _write_configurations(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        _write_private(directory / name, text)
    shutil.rmtree(directory / KS_STATE_DIR, ignore_errors=True)


def _daemon_records(directory: Path, lab: Lab, member_options: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Where each daemon's files go and its extra options, key server first."""
    roles = [("ks", "ks", lab.ks), *((f"gm{n}", "member", lab.gm(n)) for n in lab.numbers)]
    records = {}
    for role, command, netns in roles:
        records[role] = {
            "netns": netns,
            "command": command,
            "config": str(directory / f"{role}.conf"),
            "socket": str(directory / f"{role}.sock"),
            "log": str(directory / f"{role}.log"),
            "options": list(member_options) if command == "member" else [],
        }
        if command == "ks":
            records[role]["state_dir"] = str(directory / KS_STATE_DIR)
    return records


def _launch(record: dict[str, Any]) -> subprocess.Popen[str]:
    """The daemon, detaching: the launching command exits once it serves (0) or has failed (1)."""
    argv = [record["command"], "--config", record["config"], "--socket", record["socket"], "--log-file", record["log"]]
    if "state_dir" in record:
        argv += ["--state-dir", record["state_dir"]]
    argv += record["options"]
    return subprocess.Popen(
        ["ip", "netns", "exec", record["netns"], sys.executable, "-m", "groupvpn.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _started(launcher: subprocess.Popen[str], record: dict[str, Any]) -> bool:
    try:
        _, errors = launcher.communicate(timeout=DAEMON_START_TIMEOUT)
        failure = launcher.returncode and f"exit status {launcher.returncode}: {errors.strip()}"
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.communicate()
        failure = f"no readiness report within {DAEMON_START_TIMEOUT:.0f} s"
    record["status"] = f"failed to start ({failure})" if failure else "started"
    record["pids"] = processes(record["netns"])
    return not failure


def available_commands() -> frozenset[str]:
    """The subcommands this ``groupvpn`` has (the daemons arrived after the lab)."""
    from ..cli import build_parser  # the CLI imports this module

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices)
    return frozenset()


def start_daemons(directory: Path, lab: Lab, state: dict[str, Any], member_options: Sequence[str] = ()) -> bool:
    """Start the key server, then every member at once (with ``member_options``); whether all that exist started.

    The key server goes first so that members register at once instead
    of after their first retry interval.
    """
    commands = available_commands()
    records = _daemon_records(directory, lab, member_options)
    state["daemons"] = records
    waves = [["ks"], [role for role in records if role != "ks"]]
    ok = True
    for wave in waves:
        launched = {}
        for role in wave:
            if records[role]["command"] in commands:
                launched[role] = _launch(records[role])
            else:
                records[role]["status"] = f"not started: this groupvpn has no `{records[role]['command']}` command yet"
        for role, launcher in launched.items():
            ok = _started(launcher, records[role]) and ok
        _save_state(directory, state)
    return ok


def up(directory: Path, lab: Lab, daemons: bool, out: TextIO) -> int:
    state = create(directory, lab)
    print(
        f"lab up in {directory}: {len(lab.namespaces)} namespaces with prefix {lab.prefix!r}, {lab.members} members",
        file=out,
    )
    print(f"configurations: {directory}/ks.conf, gm1.conf .. gm{lab.members}.conf", file=out)
    if not daemons:
        print("daemons not started (--no-daemons)", file=out)
        return 0
    ok = start_daemons(directory, lab, state)
    for role, record in state["daemons"].items():
        print(f"{role}: {record['status']}", file=out)
    if state["daemons"]["ks"]["status"] == "started":
        print(
            f"see: groupvpn show security group-vpn server registered-members --socket {directory}/ks.sock",
            file=out,
        )
    return 0 if ok else 1


# --------------------------------------------------------------------------
# status

# What a running daemon is asked for ``lab status``: (role, show topic, what its records count).
_SUMMARIES = {
    "ks": ("server", "registered-members", "members registered"),
    "member": ("member", "ipsec-security-associations", "TEKs installed"),
}


def _summary(record: dict[str, Any]) -> str:
    role, topic, counted = _SUMMARIES[record["command"]]
    request = {"op": "show", "role": role, "topic": topic, "show_keys": False}
    try:
        view = call(Path(record["socket"]), request, timeout=2.0)
    except ControlError as err:
        return f"no answer: {err}"
    return f"{counted}: {len(view.get('records', []))}"


def status(directory: Path) -> dict[str, Any]:
    """What exists of the lab recorded in ``directory``: namespaces, interfaces, routes out, daemons."""
    state = load_state(directory)
    if state is None:
        raise LabError(f"no lab in {directory} (no {STATE_FILE})")
    present = existing_namespaces()
    alive = [netns for netns in state["namespaces"] if netns in present]
    daemons = {}
    for role, record in state["daemons"].items():
        running = processes(record["netns"])
        socket_present = Path(record["socket"]).exists()
        daemons[role] = {
            **record,
            "pids": running,
            "running": bool(running),
            "socket_present": socket_present,
            "summary": _summary(record) if running and socket_present else None,
        }
    return {
        "directory": str(directory),
        "prefix": state["prefix"],
        "members": state["members"],
        "namespaces": {netns: netns in present for netns in state["namespaces"]},
        "interfaces": [interface.as_dict() for interface in interfaces(alive)],
        "routes_out": {netns: routes_out(netns) for netns in alive},
        "daemons": daemons,
    }


def render_status(report: dict[str, Any], out: TextIO) -> None:
    namespaces = report["namespaces"]
    up_count = sum(namespaces.values())
    print(
        f"Lab {report['directory']} (prefix {report['prefix']!r}, {report['members']} members): "
        f"{up_count} of {len(namespaces)} namespaces present",
        file=out,
    )
    missing = [netns for netns, present in namespaces.items() if not present]
    if missing:
        print(f"  missing: {', '.join(missing)}", file=out)
    rows = [("Namespace", "Interface", "Kind", "State", "Addresses", "Peer")]
    rows += [
        (i["netns"], i["ifname"], i["kind"], i["state"], " ".join(i["addresses"]) or "-", i["peer"] or "-")
        for i in report["interfaces"]
        if i["ifname"] != "lo"
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)
    leaks = {netns: found for netns, found in report["routes_out"].items() if found}
    print(f"Routes out of the lab: {leaks or 'none'}", file=out)
    print("Daemons:", file=out)
    if not report["daemons"]:
        print("  none started", file=out)
    for role, d in report["daemons"].items():
        if d["running"]:
            state = f"running (pid {', '.join(map(str, d['pids']))})" + (f", {d['summary']}" if d["summary"] else "")
        else:
            state = "not running" if d["status"] == "started" else d["status"]
        socket = "present" if d["socket_present"] else "absent"
        print(f"  {role:<4} {d['netns']:<12} {state}; control socket {d['socket']} {socket}; log {d['log']}", file=out)


# --------------------------------------------------------------------------
# down


def remove(directory: Path, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Stop the lab's processes and delete its namespaces; the namespaces removed.

    Removes what ``lab.json`` lists plus any namespace named like a lab
    with that prefix, so it also works after a crashed ``up`` or a lost
    directory; running it again finds nothing to do.  Logs and
    configurations stay for a post-mortem.
    """
    _require_root()
    state = load_state(directory)
    lab = Lab(state["prefix"] if state else prefix)
    recorded: Iterable[str] = state["namespaces"] if state else ()
    removed = destroy([*recorded, *sorted(filter(lab.owns, existing_namespaces()))])
    _state_path(directory).unlink(missing_ok=True)
    return removed


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces)")


# --------------------------------------------------------------------------
# Command line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = subparsers.add_parser("lab", help="a whole group VPN in network namespaces on this machine")
    commands = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="lab directory (default %(default)s)")

    shape = argparse.ArgumentParser(add_help=False)
    shape.add_argument("--members", type=int, default=DEFAULT_MEMBERS, help="group members (default %(default)s)")
    shape.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix (default %(default)s)")

    start = commands.add_parser(
        "up", parents=[where, shape], help="build the namespaces, write configurations, start daemons"
    )
    start.add_argument("--no-daemons", dest="daemons", action="store_false", help="only the network and configurations")
    start.set_defaults(func=_run(lambda args: up(args.dir, Lab(args.prefix, args.members), args.daemons, sys.stdout)))

    show_off = commands.add_parser(
        "demo",
        parents=[where, shape],
        help="up, then pings, iperf3, a decrypted WAN capture and the show views (reveals lab keys); then down",
    )
    show_off.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    show_off.add_argument("--replace", action="store_true", help="remove a lab already up in --dir first")
    show_off.set_defaults(func=_run(_demo))

    show = commands.add_parser("status", parents=[where], help="namespaces, links, addresses and daemons")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_run(_status))

    stop = commands.add_parser("down", parents=[where], help="stop the daemons and remove every namespace")
    stop.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="prefix to clean up when the directory has no lab.json (default %(default)s)",
    )
    stop.set_defaults(func=_run(_down))


def _status(args: argparse.Namespace) -> int:
    report = status(args.dir)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        render_status(report, sys.stdout)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .lab_demo import demo  # it drives this module

    return demo(args.dir, Lab(args.prefix, args.members), args.replace, args.keep, sys.stdout)


def _down(args: argparse.Namespace) -> int:
    removed = remove(args.dir, args.prefix)
    print(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else " (nothing was up)"))
    return 0


def _run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Operator errors become one line on stderr and exit status 1."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (LabError, NetlabError) as err:
            print(f"groupvpn lab {args.lab_command}: {err}", file=sys.stderr)
            return 1

    return wrapped
