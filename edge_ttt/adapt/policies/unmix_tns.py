"""`unmix-tns`: UnMix-TNS (Tomar et al., ICLR 2024): each batch norm keeps K statistics
components; every window normalizes with a mixture re-weighted by its own statistics; no gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Interval

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.layerwise import forward_layerwise, joined
from edge_ttt.adapt.optim import Arrays
from edge_ttt.adapt.ort_model import OrtModel, Stats
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.policies.base import Count, Policy, Positive, Rate
from edge_ttt.adapt.unmix import Components, batch_momentum

# (assignment [K], instance mean, instance var) of one layer for one window
Seen = tuple[np.ndarray, np.ndarray, np.ndarray]


class UnmixTns(Policy):
    """UnMix-TNS for a label-correlated stream, down to batch size 1.

    Per batch norm, K components start from the source statistics (`Components.from_source`).
    Each window, layer by layer in graph order (`forward_layerwise`: layers + 1 forwards per
    window), is assigned softly to the components by the cosine similarity of its instance mean
    to theirs, and normalized with the mixture of the components each moved towards its own
    moments by its assignment. After the batch, each component moves towards the instance
    moments by the paper's momentum times the batch mean of its assignments. The paper mixes per
    sample, so a batch of n windows is n layer-by-layer passes, all with the components as they
    were at the start of the batch.

    Group and layer norms normalize every window by its own moments, so for models without batch
    norms this policy equals `source` (one plain forward per batch).
    """

    name = "unmix-tns"
    keeps_stats = True

    @dataclass(frozen=True)
    class Options(Policy.Options):
        """The paper's defaults: K = 16, temperature 0.07, spread (alpha) 0.5, the source
        model's batch-norm momentum 0.1 per reference batch of 64 windows."""

        components: Count = 16
        temperature: Positive = 0.07
        # share of the source variance that separates the component means
        spread: Annotated[float, Interval(ge=0.0, lt=1.0)] = 0.5
        momentum: Rate = 0.1  # per `reference_batch` windows: 0.0016 per window
        reference_batch: Count = 64
        seed: int = 0  # of the components' starting scatter

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        self.layers = [layer.name for layer in model.manifest.batch_norms]
        self.reset()

    def reset(self) -> None:
        """Back to the components' seeded start (the parameters never leave source)."""
        super().reset()
        cfg = self.options
        rng = np.random.default_rng(cfg.seed)
        self.components = {
            name: Components.from_source(*self.source_stats[name], cfg.components, cfg.spread, rng)
            for name in self.layers
        }

    def stats(self) -> Stats:
        """Per layer the components' own mixture, for reports: no window normalizes with it."""
        return {name: c.pooled() for name, c in self.components.items()}

    def update(self, x: np.ndarray) -> Outputs:
        if not self.layers:
            return self.predict(x)
        out, seen = self._mixed(x)
        m = batch_momentum(self.options.momentum, len(x), self.options.reference_batch)
        for name, c in self.components.items():
            p, means, variances = (np.stack([s[name][i] for s in seen]) for i in range(3))
            c.update(p, means, variances, m)
        self.counters.adapt_steps += 1
        return out

    def predict(self, x: np.ndarray) -> Outputs:
        if not self.layers:
            return self.model.forward(x, self.source_stats)
        return self._mixed(x)[0]

    def _mixed(self, x: np.ndarray) -> tuple[Outputs, list[dict[str, Seen]]]:
        """Each window through the model with its own mixtures (no state change): the outputs,
        and per window per layer what the update needs."""
        done = [self._window(window[None]) for window in x]
        return joined([out for out, _ in done]), [seen for _, seen in done]

    def _window(self, x: np.ndarray) -> tuple[Outputs, dict[str, Seen]]:
        """One window ([1, channels, length]), layer by layer with its own mixture."""
        seen: dict[str, Seen] = {}

        def choose(name: str, moments: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            c = self.components[name]
            p = c.assign(moments[0], self.options.temperature)
            seen[name] = (p, *moments)
            return c.mixture(p, *moments)

        return forward_layerwise(self.model, x, self.source_stats, choose)[0], seen

    def state(self) -> Arrays:
        flat: Arrays = {}
        for name, c in self.components.items():
            flat.update(prefixed(name, {"means": c.means, "vars": c.vars}))
        return flat

    def load_state(self, flat: Arrays) -> None:
        for name in self.layers:
            own = unprefixed(name, flat)
            means, variances = (np.array(own[k], np.float64) for k in ("means", "vars"))
            self.components[name] = Components(means, variances)
