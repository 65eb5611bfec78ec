"""Where the fallback to source (`edge_ttt.adapt.fallback`) is on by default: `AutoFallback`, ahead
of the default policy (`steady`), whose promise is to do no worse than the source model; the
published methods run as their papers run them. It needs the source model's estimate, so a
configuration that never runs the source model (`source_every = 0`) has none."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_ttt.adapt.estimates import class_prior
from edge_ttt.adapt.fallback import Fallback, FallbackOptions
from edge_ttt.adapt.policies import DEFAULT_POLICY
from edge_ttt.manifest import Manifest


@dataclass(frozen=True)
class AutoFallback:
    """The fallback as it is on by default, with these options."""

    options: FallbackOptions = field(default_factory=FallbackOptions)

    def resolve(self, policy: str, source_every: int) -> FallbackOptions | None:
        """The options for `policy`; None: no fallback."""
        return self.options if policy == DEFAULT_POLICY and source_every else None


AUTO_FALLBACK = AutoFallback()


def fallback_for(
    fallback: FallbackOptions | AutoFallback | None, policy: str, manifest: Manifest, source_every: int
) -> Fallback | None:
    """The engine's fallback; None for `source`, which is the source model itself. ValueError for
    one that could compare with nothing (`source_every` 0)."""
    if isinstance(fallback, AutoFallback):
        fallback = fallback.resolve(policy, source_every)
    if fallback is None or policy == "source":
        return None
    if not source_every:
        raise ValueError("a fallback compares with the source model: source_every must be at least 1")
    return Fallback(fallback, class_prior(manifest), manifest.reference.stay)
