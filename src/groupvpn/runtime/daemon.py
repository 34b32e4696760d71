"""What every groupvpn daemon shares: logging, detaching, signals, the control socket, UDP sockets.

A daemon is a ``Service`` (its cores, store and drivers) that ``run``
starts and then serves until SIGTERM or SIGINT; SIGHUP asks it to reload
its configuration.  Without ``foreground`` the process detaches, but the
command that started it waits until the service is up (or has failed to
start) and exits 0 or 1 accordingly, printing the reason, so scripts and
operators see startup errors where they typed the command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..config.errors import ConfigError
from ..ike.sa import Address
from .control import ControlServer, Request
from .netns import socket_in

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s"
DEFAULT_LOG_DIR = Path("/var/log/groupvpn")
EXIT_OK = 0
EXIT_FAILED = 1

T = TypeVar("T")
Loader = Callable[[Path], T]


class StartupError(Exception):
    """The service cannot start; the message is the operator-facing reason."""


class Service(Protocol):
    """A started daemon: answers control requests, reloads on SIGHUP, closes on exit."""

    async def handle(self, request: Request) -> Any: ...

    def reload(self) -> None: ...

    async def close(self) -> None: ...


def check_config(name: str, path: Path, load: Loader[T]) -> T | None:
    """For the starting command: the configuration, or None after printing each problem on stderr.

    ``load`` raises ``ConfigError`` (problems with positions), another
    ``ValueError`` (a setting the daemon cannot serve) or ``OSError``.
    """
    try:
        return load(path)
    except ConfigError as err:
        for problem in err.problems:
            print(f"{path}: {problem}", file=sys.stderr)
    except ValueError as err:
        print(f"{path}: {err}", file=sys.stderr)
    except OSError as err:
        print(f"groupvpn {name}: cannot read {path}: {err.strerror}", file=sys.stderr)
    return None


def load_config(path: Path, load: Loader[T]) -> T:
    """For a starting service: the configuration, or ``StartupError`` saying why not."""
    try:
        return load(path)
    except ValueError as err:  # ConfigError among them
        raise StartupError(f"{path} is invalid:\n{err}") from None
    except OSError as err:
        raise StartupError(f"cannot read {path}: {err.strerror}") from None


def configure_logging(log_file: Path | None, level: int = logging.INFO) -> None:
    """One line per record to ``log_file`` (created 0640 with its directory), else to stderr."""
    if log_file is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def udp_socket(local: Address, routing_instance: str | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to ``local``, inside the routing instance's namespace if one is named."""
    family = socket.AF_INET6 if ip_address(local[0]).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM) if routing_instance is None else socket_in(
        routing_instance, family, socket.SOCK_DGRAM
    )
    try:
        sock.bind(local)
    except OSError as err:
        sock.close()
        where = f" in routing instance {routing_instance}" if routing_instance else ""
        raise StartupError(f"cannot listen on UDP {local[0]} port {local[1]}{where}: {err.strerror}") from None
    sock.setblocking(False)
    return sock


class _Readiness:
    """The pipe over which a detached daemon tells the starting command how startup went."""

    READY = b"ready"

    def __init__(self) -> None:
        self._read, self._write = os.pipe()

    def wait(self) -> int:
        """In the starting command: the exit status, after printing a failure's reason."""
        os.close(self._write)
        with os.fdopen(self._read, "rb") as pipe:
            report = pipe.read()
        if report == self.READY:
            return EXIT_OK
        print(report.decode(errors="replace") or "the daemon exited during startup (see its log)", file=sys.stderr)
        return EXIT_FAILED

    def detached(self) -> None:
        os.close(self._read)

    def report(self, message: bytes) -> None:
        if self._write >= 0:
            os.write(self._write, message)
            os.close(self._write)
            self._write = -1


def _detach(readiness: _Readiness) -> int | None:
    """Fork into the background (double fork, new session, stdio on /dev/null).

    Returns the exit status in the starting process and None in the daemon.
    """
    if os.fork() > 0:
        return readiness.wait()
    os.setsid()
    os.chdir("/")  # callers pass absolute paths; the daemon must not pin a mount point
    if os.fork() > 0:
        os._exit(EXIT_OK)  # the intermediate child: no atexit handlers, no buffers to flush
    readiness.detached()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return None


def run(
    name: str,
    start: Callable[[], Awaitable[Service]],
    *,
    control_path: Path,
    foreground: bool,
    log_file: Path | None,
) -> int:
    """Start the service made by ``start`` and serve it until SIGTERM/SIGINT; the exit status."""
    readiness = None
    if not foreground:
        readiness = _Readiness()
        status = _detach(readiness)
        if status is not None:
            return status
        log_file = log_file or DEFAULT_LOG_DIR / f"{name}.log"
    configure_logging(log_file)
    try:
        return asyncio.run(_serve(name, start, control_path, readiness))
    finally:
        if readiness is not None:
            readiness.report(b"")


async def _serve(
    name: str, start: Callable[[], Awaitable[Service]], control_path: Path, readiness: _Readiness | None
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        service = await start()
    except StartupError as err:
        return _not_started(name, str(err), readiness)
    control = ControlServer(control_path, service.handle)
    try:
        await control.start()
    except OSError as err:
        await service.close()
        return _not_started(name, f"cannot serve the control socket {control_path}: {err.strerror or err}", readiness)

    def reload() -> None:
        log.info("SIGHUP: reloading the configuration")
        service.reload()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("%s running (pid %d), control socket %s", name, os.getpid(), control_path)
    if readiness is not None:
        readiness.report(_Readiness.READY)
    try:
        await stop.wait()
        log.info("%s stopping", name)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await control.close()
        await service.close()
    return EXIT_OK


def _not_started(name: str, reason: str, readiness: _Readiness | None) -> int:
    log.error("%s not started: %s", name, reason)
    if readiness is None:
        print(f"groupvpn {name}: {reason}", file=sys.stderr)
    else:
        readiness.report(reason.encode())
    return EXIT_FAILED
