"""``groupvpn member``: run the group member daemon, or ask a running one to reload.

``groupvpn member --config FILE`` checks the configuration first: an
invalid file prints each problem with its line and column and exits 1.
Without ``--foreground`` the daemon detaches once its sockets are open,
and this command exits 0, or 1 with the reason it did not start.
``groupvpn member reload`` makes the running daemon re-read its file (as
SIGHUP does) and prints the outcome: a configuration with problems is
refused, listing them, and the running one stays.

Each VPN whose service set is applied to an interface gets a data plane
(TUN devices and worker processes, ``--dataplane-workers`` of them, one
per CPU by default; ``--dataplane-offload on`` writes a batch's decrypted
TCP segments joined into GSO packets instead of one by one);
``--no-dataplane`` runs the control plane only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runtime import daemon
from ..runtime.control import ControlError, call
from ..runtime.member_daemon import MemberDaemon, load
from ..runtime.member_dataplane import DataplaneOptions
from .show import ROLE_SOCKETS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    member = subparsers.add_parser(
        "member",
        help="run the group member daemon, or 'member reload' a running one",
        description="Run the GDOI group member of a Junos-style 'security group-vpn member' configuration.",
    )
    member.add_argument(
        "action", nargs="?", choices=("reload",), help="reload: make the running daemon re-read its file"
    )
    member.add_argument("--config", type=Path, help="the configuration file (curly-brace or set form)")
    member.add_argument(
        "--socket", type=Path, default=ROLE_SOCKETS["member"], help="control socket (default %(default)s)"
    )
    member.add_argument(
        "--log-file", type=Path, help="log here (default: stderr in the foreground, else /var/log/groupvpn/member.log)"
    )
    member.add_argument("--foreground", action="store_true", help="do not detach; log to stderr unless --log-file")
    member.add_argument(
        "--dataplane-workers", type=_positive, metavar="N", help="packet workers per data plane (default: one per CPU)"
    )
    member.add_argument(
        "--dataplane-pin-cpus",
        dest="pin_workers",
        action="store_true",
        help="run worker i on CPU i only (for a dedicated gateway; hurts when several members share the CPUs)",
    )
    member.add_argument(
        "--dataplane-offload",
        choices=("on", "off"),
        default="off",
        help="write decrypted TCP segments to the TUN joined as GSO packets: fewer packets for the kernel, but the "
        "joined segments' TCP checksums are no longer checked end to end (default %(default)s)",
    )
    member.add_argument(
        "--no-dataplane", dest="dataplane", action="store_false", help="run the control plane only (no packet path)"
    )
    member.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "reload":
        return _reload(args.socket)
    if args.config is None:
        print("groupvpn member: --config FILE is required to start the daemon", file=sys.stderr)
        return daemon.EXIT_FAILED
    config = args.config.resolve()
    if daemon.check_config("member", config, load) is None:
        return daemon.EXIT_FAILED
    options = DataplaneOptions(args.dataplane, args.dataplane_workers, args.pin_workers, args.dataplane_offload == "on")
    return daemon.run(
        "member",
        lambda: MemberDaemon.start(config, options),
        control_path=args.socket.resolve(),
        foreground=args.foreground,
        log_file=None if args.log_file is None else args.log_file.resolve(),
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} workers: at least one is needed")
    return value


def _reload(socket: Path) -> int:
    try:
        view = call(socket, {"op": "reload", "role": "member"}, timeout=30.0)
    except ControlError as err:
        print(f"groupvpn member reload: {err}", file=sys.stderr)
        return daemon.EXIT_FAILED
    print("\n".join(view.get("notes", [])))
    return daemon.EXIT_OK
