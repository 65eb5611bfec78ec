"""One batch norm's UnMix-TNS components (Tomar et al., ICLR 2024): K (mean, var) pairs that
split the source statistics, so that a label-correlated stream moves only the components its
windows resemble instead of dragging one estimate towards the current class. Pure numpy,
float64 inside; the policy (`edge_ttt.adapt.policies.unmix_tns`) runs them layer by layer.

Per window, with instance moments (mu_i, var_i) of the layer's input:
  p_k       = softmax_k(cos(mu_i, mu_k) / temperature)             soft assignment
  mu_k'     = (1 - p_k) mu_k + p_k mu_i,  var_k' likewise          each component un-mixed
  mean, var = the equal-weight mixture of (mu_k', var_k'):  mean_k mu_k',
              mean_k var_k' + mean_k (mu_k' - mean)^2
and after a batch of B windows: mu_k += m mean_b p_bk (mu_b - mu_k), var_k likewise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.statistics import mixture_moments

COSINE_EPS = 1e-12  # a zero vector has no direction: its norm is taken as this


@dataclass
class Components:
    """K statistics components of one layer: `means` and `vars`, each [K, channels]."""

    means: np.ndarray
    vars: np.ndarray

    @classmethod
    def from_source(
        cls, mean: np.ndarray, var: np.ndarray, k: int, spread: float, rng: np.random.Generator
    ) -> Components:
        """The paper's start: component means scattered around the source mean with variance
        `spread` * K / (K - 1) * var_s, component variances (1 - spread) * var_s, so that their
        equal-weight mixture has the source variance in expectation (K = 1: the source itself)."""
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        if k == 1:
            return cls(mean[None].copy(), var[None].copy())
        noise = rng.standard_normal((k, len(mean)))
        means = mean + np.sqrt(spread * k / (k - 1) * var) * noise
        return cls(means, np.repeat(((1.0 - spread) * var)[None], k, axis=0))

    def assign(self, inst_mean: np.ndarray, temperature: float) -> np.ndarray:
        """Soft assignment [K] of a window to the components: softmax of the cosine similarity
        between its instance mean and each component mean, over `temperature`."""
        a = _unit(np.asarray(inst_mean, np.float64))
        sim = _unit(self.means) @ a / temperature
        e = np.exp(sim - sim.max())
        return e / e.sum()

    def mixture(
        self, p: np.ndarray, inst_mean: np.ndarray, inst_var: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (mean, var) a window normalizes with: each component moved towards the window's
        own moments by its assignment, then the equal-weight mixture of the K."""
        w = np.asarray(p, np.float64)[:, None]
        means = (1.0 - w) * self.means + w * np.asarray(inst_mean, np.float64)
        variances = (1.0 - w) * self.vars + w * np.asarray(inst_var, np.float64)
        return mixture_moments(means, variances)

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """The equal-weight mixture of the components themselves (the source at the start, in
        expectation): what the layer's statistics are, absent any window."""
        return mixture_moments(self.means, self.vars)

    def update(self, p: np.ndarray, inst_means: np.ndarray, inst_vars: np.ndarray, momentum: float) -> None:
        """Move each component towards the batch's instance moments by `momentum` times the batch
        mean of its assignments: p [B, K], instance moments [B, channels]."""
        w = np.asarray(p, np.float64)[:, :, None]
        dm = np.asarray(inst_means, np.float64)[:, None] - self.means
        dv = np.asarray(inst_vars, np.float64)[:, None] - self.vars
        self.means = self.means + momentum * (w * dm).mean(axis=0)
        self.vars = self.vars + momentum * (w * dv).mean(axis=0)


def batch_momentum(momentum: float, windows: int, reference_batch: int) -> float:
    """The paper's momentum for a batch of `windows`: 1 - (1 - m)^(windows / reference_batch), so
    the components forget at the same rate per window whatever the batch size."""
    return 1.0 - (1.0 - momentum) ** (windows / reference_batch)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows (or the vector) scaled to unit L2 norm."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), COSINE_EPS)
