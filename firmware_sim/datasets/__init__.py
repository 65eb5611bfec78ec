"""Converters of real recorded datasets into edge-ttt log format v1 (see docs/log-format.md)."""
