"""Optimizers over the adapted parameters, in numpy.

The trainable tensors are the norm layers' affine parameters: a few hundred floats. Stepping
them here instead of in ORT's optimizer graph keeps the optimizer state in plain arrays, so a
policy can snapshot, roll back and restore it exactly, and Tent (Adam) and SAR (SGD with
momentum) each get the optimizer their papers use. ORT computes the gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass
class Adam:
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam with weight_decay=0.

    >>> opt = Adam(lr=0.1)
    >>> p = {"w": np.array([1.0])}
    >>> opt.step(p, {"w": np.array([2.0])})["w"].round(6).tolist()
    [0.9]
    """

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    t: int = 0
    m: Arrays = field(default_factory=dict)
    v: Arrays = field(default_factory=dict)

    def step(self, params: Arrays, grads: Arrays) -> Arrays:
        """New parameter values; `params` is not modified."""
        b1, b2 = self.betas
        self.t += 1
        out = {}
        for name, g in grads.items():
            g = np.asarray(g, np.float64)
            m = b1 * self.m.get(name, 0.0) + (1 - b1) * g
            v = b2 * self.v.get(name, 0.0) + (1 - b2) * g * g
            self.m[name], self.v[name] = m, v
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            out[name] = params[name] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return out

    def state(self) -> Arrays:
        flat = {"t": np.asarray(self.t)}
        flat.update({f"m/{k}": v for k, v in self.m.items()})
        flat.update({f"v/{k}": v for k, v in self.v.items()})
        return flat

    def load_state(self, flat: Arrays) -> None:
        self.t = int(flat["t"])
        self.m = {k[2:]: np.asarray(v) for k, v in flat.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v) for k, v in flat.items() if k.startswith("v/")}


@dataclass
class SGD:
    """SGD with momentum (dampening 0, not Nesterov), as torch.optim.SGD.

    >>> opt = SGD(lr=0.1, momentum=0.9)
    >>> p = opt.step({"w": np.array([1.0])}, {"w": np.array([1.0])})
    >>> opt.step(p, {"w": np.array([1.0])})["w"].round(6).tolist()
    [0.71]
    """

    lr: float
    momentum: float = 0.9
    buf: Arrays = field(default_factory=dict)

    def step(self, params: Arrays, grads: Arrays) -> Arrays:
        out = {}
        for name, g in grads.items():
            g = np.asarray(g, np.float64)
            b = self.buf[name] = self.momentum * self.buf[name] + g if name in self.buf else g.copy()
            out[name] = params[name] - self.lr * b
        return out

    def state(self) -> Arrays:
        return {f"buf/{k}": v for k, v in self.buf.items()}

    def load_state(self, flat: Arrays) -> None:
        self.buf = {k[4:]: np.asarray(v) for k, v in flat.items() if k.startswith("buf/")}
