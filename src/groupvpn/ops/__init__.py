"""Operator-facing commands: show output, lab topology, decode."""
