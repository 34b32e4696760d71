"""Junos-style configuration: parser and typed model."""
