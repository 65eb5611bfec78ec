"""The adaptation engine: one batch of windows in, predictions out, state updated by a policy.

The same engine serves the agent, `edge-ttt replay` and the demo. It checks every window
(`guard.check_windows`); valid windows go to the policy's `update`, the others are predicted
from a sanitized copy by `predict` and never touch the adapted state.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.guard import InputLimits, check_windows, sanitize
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import DEFAULT_POLICY, POLICY_TYPES, Policy, create
from edge_ttt.adapt.report import Report
from edge_ttt.adapt.snapshot import StateError, load_state, save_state
from edge_ttt.adapt.softmax import softmax_entropy

POLICIES = tuple(POLICY_TYPES)

__all__ = ["DEFAULT_POLICY", "POLICIES", "Counters", "Engine", "Predictions", "Report", "StateError"]


@dataclass(frozen=True, eq=False)
class Predictions:
    classes: np.ndarray  # int64 [n]
    probs: np.ndarray  # float32 [n, K]
    entropy: np.ndarray  # float32 [n], nats
    valid: np.ndarray  # bool [n]; False: the window failed the input guard and adapted nothing

    def __len__(self) -> int:
        return len(self.classes)


class Engine:
    """A model, a policy by name (with its options), the input guard and the counters.

    The option `episodic=True` (gradient policies only) runs the policy episodically: each batch
    is adapted on and predicted, then the policy returns to its state before it (`Policy.episode`).
    """

    def __init__(
        self,
        model: OrtModel,
        policy: str = DEFAULT_POLICY,
        options: dict[str, Any] | None = None,
        limits: InputLimits | None = None,
    ) -> None:
        if policy not in POLICY_TYPES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.model = model
        self.policy_name = policy
        self.counters = Counters()
        self.limits = limits or InputLimits.from_manifest(model.manifest)
        info = model.manifest.model
        self.shape = (len(info.channels), info.window)
        options = dict(options or {})
        self.episodic = bool(options.pop("episodic", False))
        if self.episodic and POLICY_TYPES[policy].loss is None:
            raise ValueError(
                f"policy {policy!r} takes no gradient steps: there is nothing to run episodically"
            )
        try:
            self.policy: Policy = create(policy, model, self.counters, options)
        except TypeError as exc:
            raise ValueError(f"policy {policy!r}: bad option ({exc})") from None

    def process(self, x: np.ndarray) -> Predictions:
        """Predict a batch [n, channels, length] of raw windows and adapt on the valid ones."""
        self.model.serve(self.policy, self.policy.param_vector)  # engines of several devices share it
        x = np.asarray(x, np.float32)
        if x.ndim != 3 or x.shape[1:] != self.shape:
            c, length = self.shape
            raise ValueError(f"windows must have shape [n, {c}, {length}], got {list(x.shape)}")
        valid = check_windows(x, self.limits).valid
        n_invalid = int((~valid).sum())
        update = self.policy.episode if self.episodic else self.policy.update
        if n_invalid == 0:
            probs, entropy = update(x).softmax
        else:
            logits = np.empty((len(x), len(self.model.manifest.model.classes)), np.float32)
            if n_invalid < len(x):
                logits[valid] = update(x[valid]).logits
            logits[~valid] = self.policy.predict(sanitize(x[~valid], self.limits)).logits
            probs, entropy = softmax_entropy(logits.astype(np.float64))
        self.counters.windows += len(x)
        self.counters.rejected_invalid += n_invalid
        return Predictions(probs.argmax(axis=1), probs.astype(np.float32), entropy.astype(np.float32), valid)

    def save_state(self, path: str | Path) -> None:
        meta = {
            "bundle_sha256": self.model.bundle_sha256,
            "policy": self.policy_name,
            "counters": self.counters.as_dict(),
            "saved_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        save_state(path, self.policy.state(), meta)

    def load_state(self, path: str | Path) -> None:
        """Restore a saved state; refused when it was saved for another bundle or policy."""
        arrays, meta = load_state(path)
        if meta.get("bundle_sha256") != self.model.bundle_sha256:
            raise StateError(
                f"state file {path} was adapted on bundle {meta.get('bundle_sha256')}, this engine runs "
                f"bundle {self.model.bundle_sha256}; refusing it (delete it to start from source)"
            )
        if meta.get("policy") != self.policy_name:
            raise StateError(
                f"state file {path} belongs to policy {meta.get('policy')!r}, not {self.policy_name!r}"
            )
        try:
            self.policy.load_state(arrays)
        except (KeyError, ValueError) as exc:
            raise StateError(f"state file {path} does not fit this policy and bundle: {exc}") from exc
        for name, value in meta.get("counters", {}).items():
            if hasattr(self.counters, name):
                setattr(self.counters, name, int(value))

    def report(self) -> Report:
        """The counters and the adaptation level now, as a frozen value (for drift summaries)."""
        return Report.of(self.counters.as_dict(), self.policy)
