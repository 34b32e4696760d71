"""The one exception configuration loading raises, carrying every problem found."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Problem:
    """One mistake in a configuration text, at a 1-based line and column.

    Columns count characters (a tab is one).  Messages never contain
    secret values: the parser masks them before a problem is built.
    """

    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class ConfigError(ValueError):
    """A configuration that cannot be loaded.

    An operator fixing a file wants every mistake at once, so loading
    collects all problems and raises them together, sorted by position.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(sorted(set(problems)))
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__("\n".join(map(str, self.problems)))
