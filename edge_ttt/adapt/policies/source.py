"""`source`: the source model, untouched: the baseline every other policy must beat."""

from __future__ import annotations

from edge_ttt.adapt.policies.base import Policy


class Source(Policy):
    name = "source"
    plain = True
