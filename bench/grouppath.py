"""The group VPN between two lab members: groupvpn's key server and member daemons with their data planes.

``GroupVpn`` (re)starts the lab's daemons with one ESP suite (the lab key
server's ``ipsec proposal``, ``groupvpn.ops.lab_configs.ESP_SUITES``) and
member options such as ``--dataplane-workers 1``, waits until both members
are registered with running data planes and h1 reaches h2, and stops
them on exit.  Inside, ``counters`` reads the members' ``show ... ipsec
statistics`` and ``wan_esp`` shows what the WAN router sees of a few pings,
so a benchmark can prove its traffic was really encrypted by groupvpn.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from groupvpn.ops.lab import Lab, load_state, reconfigure, start_daemons, stop_daemons
from groupvpn.runtime.control import ControlError, call

READY_TIMEOUT = 30.0  # registration takes about a second, the data planes start right after
FLOW_TIMEOUT = 15.0
WAN_PINGS = 3
CAPTURE_TIMEOUT = 10.0
REPORT_PERIOD = 1.5  # the workers report their counters every second (dataplane.manager's report_interval)
SETTLE_TRIES = 5


@dataclass(frozen=True)
class Counters:
    """One member's data-plane counters (summed over its workers)."""

    encrypted: int
    decrypted: int
    dropped: int


class GroupVpn:
    def __init__(self, directory: Path, lab: Lab, esp: str, member_options: Sequence[str] = ()) -> None:
        self.directory, self.lab, self.esp, self.member_options = directory, lab, esp, tuple(member_options)

    def __enter__(self) -> Self:
        reconfigure(self.directory, self.lab, self.esp)
        try:
            state = load_state(self.directory)
            if state is None or not start_daemons(self.directory, self.lab, state, self.member_options):
                raise RuntimeError(f"groupvpn {self.esp}: a daemon did not start (logs in {self.directory})")
            self._wait(self._ready, READY_TIMEOUT, "members registered with running data planes")
            self._wait(self._flows, FLOW_TIMEOUT, "h1 reaching h2 across the group")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._stop()

    def counters(self) -> tuple[Counters, Counters]:
        """gm1's and gm2's counters once the workers' reports stopped changing: they arrive once a second."""
        latest = self._counters()
        for _ in range(SETTLE_TRIES):
            time.sleep(REPORT_PERIOD)
            previous, latest = latest, self._counters()
            if latest == previous:
                break
        return latest

    def wan_esp(self) -> list[str]:
        """tcpdump's lines for h1's pings to h2 and back, as the WAN router sees them on its link to gm1."""
        hosts = [str(self.lab.host_address(n).ip) for n in (1, 2)]
        capture = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.wan, "tcpdump", "-n", "-l", "-i", "gm1", "-c", str(2 * WAN_PINGS),
             "host", hosts[0], "and", "host", hosts[1]],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert capture.stderr is not None
            capture.stderr.readline()  # "listening on gm1 ...": the capture is armed
            self._ping(WAN_PINGS)
            lines, _ = capture.communicate(timeout=CAPTURE_TIMEOUT)
        finally:
            if capture.poll() is None:
                capture.kill()
                capture.communicate()
        return lines.splitlines()

    # -- helpers ---------------------------------------------------------------------------

    def _counters(self) -> tuple[Counters, Counters]:
        def one(n: int) -> Counters:
            (record,) = self._statistics(n)
            return Counters(record["encrypted_packets"], record["decrypted_packets"], record["dropped_packets"])

        return one(1), one(2)

    def _statistics(self, n: int) -> list[dict[str, Any]]:
        request = {"op": "show", "role": "member", "topic": "ipsec-statistics", "show_keys": False}
        records: list[dict[str, Any]] = call(self.directory / f"gm{n}.sock", request, timeout=2.0).get("records", [])
        return records

    def _ready(self) -> bool:
        try:
            planes = [record["data_plane"] for n in (1, 2) for record in self._statistics(n)]
        except ControlError:
            return False
        return len(planes) == 2 and all(plane.startswith("running") for plane in planes)

    def _flows(self) -> bool:
        return self._ping(1) == 0

    def _ping(self, count: int) -> int:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", str(self.lab.host_address(2).ip)]
        return subprocess.run(
            ["ip", "netns", "exec", self.lab.host(1), *argv], check=False, capture_output=True, timeout=count + 10
        ).returncode

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise RuntimeError(f"groupvpn {self.esp}: no {what} within {timeout:.0f} s (logs in {self.directory})")

    def _stop(self) -> None:
        stop_daemons(self.lab)
