"""Optimizers over the adapted parameters, in numpy.

The trainable tensors are the norm layers' affine parameters: a few hundred floats. Stepping
them here instead of in ORT's optimizer graph keeps the optimizer state in plain arrays, so a
policy can snapshot, roll back and restore it exactly, and Tent (Adam) and SAR (SGD with
momentum) each get the optimizer their papers use. ORT computes the gradients.

Parameters, gradients and optimizer state are flat vectors over every trainable tensor (one
numpy call per operation, not one per layer; `edge_ttt.adapt.flat`); `state` names them per
tensor with the policy's `Layout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.flat import Layout, prefixed, unprefixed

Arrays = dict[str, np.ndarray]


def _named(prefix: str, vector: np.ndarray | None, layout: Layout) -> Arrays:
    return {} if vector is None else prefixed(prefix, layout.split(vector))


def _vector(prefix: str, flat: Arrays, layout: Layout) -> np.ndarray | None:
    """The vector saved under `prefix`/name, or None when none was (no step yet)."""
    named = unprefixed(prefix, flat)
    return layout.flatten(named, np.float64) if named else None


@dataclass
class Adam:
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam with weight_decay=0.

    >>> opt = Adam(lr=0.1)
    >>> opt.step(np.array([1.0]), np.array([2.0])).round(6).tolist()
    [0.9]
    """

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    t: int = 0
    m: np.ndarray | None = None  # None until the first step
    v: np.ndarray | None = None

    def step(self, params: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """New parameter values; `params` and the previous moments are not modified."""
        b1, b2 = self.betas
        self.t += 1
        g = np.asarray(grads, np.float64)
        m = b1 * (0.0 if self.m is None else self.m) + (1 - b1) * g
        v = b2 * (0.0 if self.v is None else self.v) + (1 - b2) * g * g
        self.m, self.v = m, v
        m_hat = m / (1 - b1**self.t)
        v_hat = v / (1 - b2**self.t)
        return params - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state(self, layout: Layout) -> Arrays:
        return {"t": np.asarray(self.t), **_named("m", self.m, layout), **_named("v", self.v, layout)}

    def load_state(self, flat: Arrays, layout: Layout) -> None:
        self.t = int(flat["t"])
        self.m, self.v = _vector("m", flat, layout), _vector("v", flat, layout)


@dataclass
class SGD:
    """SGD with momentum (dampening 0, not Nesterov), as torch.optim.SGD.

    >>> opt = SGD(lr=0.1, momentum=0.9)
    >>> p = opt.step(np.array([1.0]), np.array([1.0]))
    >>> opt.step(p, np.array([1.0])).round(6).tolist()
    [0.71]
    """

    lr: float
    momentum: float = 0.9
    buf: np.ndarray | None = None  # None until the first step

    def step(self, params: np.ndarray, grads: np.ndarray) -> np.ndarray:
        g = np.asarray(grads, np.float64)
        self.buf = g.copy() if self.buf is None else self.momentum * self.buf + g
        return params - self.lr * self.buf

    def state(self, layout: Layout) -> Arrays:
        return _named("buf", self.buf, layout)

    def load_state(self, flat: Arrays, layout: Layout) -> None:
        self.buf = _vector("buf", flat, layout)
