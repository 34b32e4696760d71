"""The one exception the wire codec raises."""

from __future__ import annotations


class WireError(ValueError):
    """Bytes that are not a valid encoding of what they claim to be.

    ``payload`` names the element being decoded (e.g. ``"SA KEK"``),
    ``offset`` is the octet offset in the outermost buffer handed to the
    decoder, and ``problem`` says what was expected.
    """

    def __init__(self, payload: str, offset: int, problem: str) -> None:
        self.payload = payload
        self.offset = offset
        self.problem = problem
        super().__init__(f"{payload} at offset {offset}: {problem}")
