"""The adaptation engine: one batch of windows in, predictions out, state updated by a policy.

The same engine serves the agent, `edge-ttt replay` and the demo. It checks every window
(`guard.check_windows`); valid windows go to the policy's `update`, the others are predicted
from a sanitized copy by `predict` and never touch the adapted state.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_ttt.adapt.alignment_setup import AUTO_INPUTS, AutoInputs, for_bundle
from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.estimates import entropy_threshold, likely_right
from edge_ttt.adapt.fallback import FallbackOptions
from edge_ttt.adapt.fallback_setup import AUTO_FALLBACK, AutoFallback, fallback_for
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.guard import InputLimits
from edge_ttt.adapt.input_alignment import InputOptions
from edge_ttt.adapt.instance_offsets import FirstNorm
from edge_ttt.adapt.label_runs import LabelRuns, RunOptions
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import DEFAULT_POLICY, POLICY_TYPES, Policy, create
from edge_ttt.adapt.predictions import Predictions, Scored, blended, handed_out, not_run, ran_classes
from edge_ttt.adapt.report import Report
from edge_ttt.adapt.runs_setup import AUTO_RUNS, AutoRuns
from edge_ttt.adapt.screen import Screened, adapting, screen, source_view, teaching
from edge_ttt.adapt.snapshot import StateError, check_restored, fresh_layout, load_state, save_state
from edge_ttt.adapt.softmax import softmax_entropy

POLICIES = tuple(POLICY_TYPES)
FALLBACK_STATE = "fallback"  # the prefix of the fallback's arrays in a state file
INPUT_STATE = "input"  # the prefix of the input alignment's arrays
RUNS_STATE = "runs"  # the prefix of the label-run detector's arrays
PARTS = (FALLBACK_STATE, INPUT_STATE, RUNS_STATE)  # the state's parts beside the policy's
SOURCE_EVERY = 4  # the source model's estimate from every 4th window the policy serves (docs/adaptation.md)

__all__ = [
    "AUTO_FALLBACK",
    "AUTO_INPUTS",
    "AUTO_RUNS",
    "DEFAULT_POLICY",
    "POLICIES",
    "SOURCE_EVERY",
    "AutoFallback",
    "AutoInputs",
    "AutoRuns",
    "Counters",
    "Engine",
    "FallbackOptions",
    "InputOptions",
    "Predictions",
    "Report",
    "RunOptions",
    "StateError",
]

log = logging.getLogger(__name__)


class Engine:
    """A model, a policy by name (with its options), the input guard and the counters.

    The option `episodic=True` (gradient policies only) runs the policy episodically: each batch
    is adapted on and predicted, then the policy returns to its state before it (`Policy.episode`).

    The source model runs for its label-free estimate on every `source_every`-th window `process`
    takes outside a label run (0: never; counted from this engine's start, a restored engine counts
    afresh); `source` is its own. With a `fallback` (by default, `AUTO_FALLBACK`, ahead of the
    default policy) both models' estimates decide which serves (`Fallback`).

    `inputs` puts input alignment (`edge_ttt.adapt.input_alignment`) ahead of the policy: every
    window is corrected per channel before the model sees it, and the valid ones teach the
    correction. The guard and the source model see the raw windows; in episodic mode it learns
    nothing (the engine forgets after every batch). By default (`AUTO_INPUTS`) it is on ahead of
    the default policy, offsets left to the statistics on batch-norm bundles. With `runs` (by
    default, `AUTO_RUNS`, ahead of the default policy, not episodic) the source model serves in a
    label run, blended with the policy held still (`_in_run`, `edge_ttt.adapt.label_runs`).
    """

    def __init__(
        self,
        model: OrtModel,
        policy: str = DEFAULT_POLICY,
        options: dict[str, Any] | None = None,
        limits: InputLimits | None = None,
        fallback: FallbackOptions | AutoFallback | None = AUTO_FALLBACK,
        inputs: InputOptions | AutoInputs | None = AUTO_INPUTS,
        runs: RunOptions | AutoRuns | None = AUTO_RUNS,
        source_every: int = SOURCE_EVERY,
    ) -> None:
        if policy not in POLICY_TYPES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if source_every < 0:
            raise ValueError(f"source_every must be 0 (never) or more, got {source_every}")
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
        self.threshold = entropy_threshold(model.manifest)
        self.fallback = fallback_for(fallback, policy, model.manifest, source_every)
        self.source_every = source_every if policy != "source" else 0
        self._sampled = 0  # windows counted for `source_every` so far
        if isinstance(inputs, AutoInputs):
            inputs = inputs.resolve(policy, model.manifest)
        self.inputs = None if inputs is None else for_bundle(model.manifest, model.bundle_path, inputs)
        if isinstance(runs, AutoRuns):
            runs = runs.resolve(policy, self.episodic)
        if runs is not None and self.episodic:  # it forgets every batch: no run to keep apart
            raise ValueError("label runs need a policy that keeps its state, not an episodic one")
        self.runs = self.follow = None  # the run detector, and in a run the first norm's offsets
        if runs is not None:
            self.runs = LabelRuns(runs, len(info.classes))
            self.follow = FirstNorm.of(model, self.policy.source_stats, runs.instance_offsets)
        self._fresh = fresh_layout(self._arrays())  # what a restored state is checked against

    def process(self, x: np.ndarray) -> Predictions:
        """Predict a batch [n, channels, length] of raw windows and adapt on the valid ones (in a
        label run: `_in_run`); the served classes of the valid ones then feed the run detector."""
        out = self._in_run(x, learn=True) if self.runs is not None and self.runs.in_run else self._adapt(x)
        if self.runs is not None and self.runs.update(out.classes[out.valid]):
            log.info("label run %s", "on" if self.runs.in_run else "off")
        return out

    def _adapt(self, x: np.ndarray) -> Predictions:
        """`process` outside a label run: the policy adapts and serves (or the fallback)."""
        s = self._screen(x)
        x, checks, clean = s.x, s.checks, s.clean
        valid, adapts = checks.valid, adapting(s, self.limits)
        n_invalid = len(x) - int(np.count_nonzero(valid))
        n_adapts = int(np.count_nonzero(adapts))
        update = self.policy.episode if self.episodic else self.policy.update
        undone = self.counters.resets + self.counters.rollbacks  # the policy's guard, before
        if n_adapts == len(x):
            probs, entropy = update(clean).softmax
        else:
            logits = np.empty((len(x), len(self.model.manifest.model.classes)), np.float32)
            if n_adapts:
                logits[adapts] = update(clean[adapts]).logits
            logits[~adapts] = self.policy.predict(clean[~adapts]).logits
            probs, entropy = softmax_entropy(logits.astype(np.float64))
        if self.inputs is not None and self.counters.resets + self.counters.rollbacks > undone:
            self.inputs.reset()  # the policy undid a collapse: what it adapted to starts afresh too
        elif not self.episodic:
            self._teach(s, probs, entropy)
        self.counters.windows += len(x)
        self.counters.rejected_invalid += n_invalid
        self.counters.windows_filled += int(np.count_nonzero(s.filled))
        adapted = Scored(probs, likely_right(entropy, self.threshold), entropy)
        if self.fallback is not None:
            return self._serve(x, valid, adapted)
        return self._alone(valid, adapted, self._sample(x, valid))

    def predict(self, x: np.ndarray) -> Predictions:
        """Predict a batch as `process` would from the state as it is, learning nothing: for
        windows a device has no time to adapt on (a stream faster than the policy's step): input
        alignment applied, not learnt; fallback decision not moved; no sampled source pass; the
        counters (of what the engine adapted on) left to the caller."""
        if self.runs is not None and self.runs.in_run:
            return self._in_run(x, learn=False)
        x, _, checks, clean, _ = self._screen(x)
        probs, entropy = self.policy.predict(clean).softmax
        adapted = Scored(probs, likely_right(entropy, self.threshold), entropy)
        if self.fallback is None or not self.fallback.on_source:
            return self._alone(checks.valid, adapted, not_run(len(x)))
        source = self._source(source_view(x, checks.valid, self.limits), self.fallback)
        return handed_out(checks.valid, source, not_run(len(x)), on_source=True)

    def _in_run(self, x: np.ndarray, learn: bool) -> Predictions:
        """A label run: the policy's statistics would follow the activity, so the source model serves
        the run-floor aligned windows (or, `serve="blend"`, its mean with the policy held still),
        policy and fallback stand still; `learn`: alignment, counters."""
        s = self._screen(x, self.runs.options.offset_floor)
        x, checks, clean = s.x, s.checks, s.clean
        source = served = self._source(clean, self.runs, self.follow)
        blend = self.runs.options.serve == "blend"
        if blend:
            held = self.policy.predict_following(clean, self.follow)
            served = blended(source.probs, held.softmax[0], self.threshold)
        if learn:
            self._teach(s, served.probs, served.entropy)
            self.counters.windows += len(x)
            self.counters.windows_in_runs += len(x)
            self.counters.rejected_invalid += len(x) - int(np.count_nonzero(checks.valid))
            self.counters.windows_filled += int(np.count_nonzero(s.filled))
        return handed_out(checks.valid, served, source, on_source=not blend)

    def _teach(self, s: Screened, probs: np.ndarray, entropy: np.ndarray) -> None:
        """Input alignment learns from the windows fit to teach it (`screen.teaching`). When it
        turns the device's orientation, the policy starts afresh from source: what it adapted to
        was the old orientation (as the alignment's gain and offset start afresh)."""
        if self.inputs is None:
            return
        x, sound = s.x, teaching(s, self.limits)
        if not np.logical_and.reduce(sound):  # the common case needs no copies picked
            x, probs, entropy = x[sound], probs[sound], entropy[sound]
        if self.inputs.update(x, probs, entropy):
            self._turned()

    def _turned(self) -> None:
        """The alignment turned the device's orientation: the policy starts afresh from source."""
        self.policy.reset()
        log.info(
            "mounting changed (%s): %s starts afresh from source",
            self.inputs.mounting.describe(),
            self.policy_name,
        )

    def _screen(self, x: np.ndarray, floor: float | None = None) -> Screened:
        """The batch as `screen.screen` sees it (alignment with the offset `floor` if given); the
        model serves the policy from here on (engines of several devices share it)."""
        self.model.serve(self.policy, self.policy.param_vector)
        return screen(x, self.shape, self.limits, self.inputs, floor)

    def _alone(self, valid: np.ndarray, adapted: Scored, source: Scored) -> Predictions:
        """Without a fallback: the policy serves, beside the source model's view where it ran;
        the `source` policy is its own source model."""
        if self.policy_name == "source":
            return handed_out(valid, adapted, adapted, on_source=False)
        return handed_out(valid, adapted, source, on_source=False)

    def _sample(self, x: np.ndarray, valid: np.ndarray, served: Scored | None = None) -> Scored:
        """The source model's view of the batch's windows due for its estimate (every
        `source_every`-th, counted across batches), served as this engine (an owner other than the
        policy): only those rows go through it, or they are taken from its view of every window
        where it `served` (the estimate weighs every stretch of the stream alike)."""
        n, first = len(x), self._sampled
        self._sampled += n
        offset = -first % self.source_every if self.source_every else n  # the batch's first due window
        if offset >= n:
            return not_run(n)
        due = np.zeros(n, bool)
        due[offset :: self.source_every] = True
        if served is None:
            ran = self._source(source_view(x[due], valid[due], self.limits), self)
        else:
            ran = Scored(served.probs[due], served.estimate[due], None)
        probs, estimate = np.zeros((n, ran.probs.shape[1])), np.full(n, np.nan)
        probs[due], estimate[due] = ran.probs, ran.estimate
        return Scored(probs, estimate, None)

    def _source(self, x: np.ndarray, owner: object, follow: FirstNorm | None = None) -> Scored:
        """The source model's view of the batch (its first batch norm following each window's own
        offset with `follow`), served as `owner`; the model leaves as the policy's."""
        self.model.serve(owner, self.policy.source_vector)
        out = self.model.forward(x, self.policy.source_stats)
        if follow is not None:
            out = follow.follow(self.model, x, self.policy.source_stats, out)
        probs, entropy = out.softmax
        self.model.serve(self.policy, self.policy.param_vector)
        return Scored(probs, likely_right(entropy, self.threshold), entropy)

    def _serve(self, x: np.ndarray, valid: np.ndarray, adapted: Scored) -> Predictions:
        """Serve the source model where the fallback says so (decided on the windows before this
        batch; it runs on every window then, its estimate keeps to the sampled ones); then both
        models' classes on the valid windows where they ran move the fallback. The adapted model's
        are its own whichever served."""
        on_source, served = self.fallback.on_source, None
        if on_source:
            served = self._source(source_view(x, valid, self.limits), self.fallback)
            self.counters.windows_on_source += len(x)
        source = self._sample(x, valid, served)
        ran = ran_classes(source if served is None else served)
        if self.fallback.update(adapted.probs.argmax(axis=1)[valid], ran[valid]):
            self.counters.fallbacks += self.fallback.on_source
            now = "source" if self.fallback.on_source else self.policy_name
            log.info("%s serves now: %s", now, self.fallback.describe(self.policy_name))
        return handed_out(valid, served if on_source else adapted, source, on_source)

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The adapted state as copies (arrays, metadata): written later, e.g. on another thread,
        it is the state of now whatever this engine does meanwhile."""
        meta = {
            "bundle_sha256": self.model.bundle_sha256,
            "policy": self.policy_name,
            "counters": self.counters.as_dict(),
            "saved_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if self.inputs is not None and self.inputs.flush():  # windows it gathered: learnt first
            self._turned()
        return self._arrays(), meta

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = self.policy.state()
        for prefix, part in zip(PARTS, (self.fallback, self.inputs, self.runs), strict=True):
            if part is not None:
                arrays.update(prefixed(prefix, part.state()))
        return {k: np.array(v, copy=True) for k, v in arrays.items()}

    def save_state(self, path: str | Path) -> None:
        save_state(path, *self.snapshot())

    def load_state(self, path: str | Path) -> None:
        """Restore a saved state; refused when it was saved for another bundle or policy."""
        self.restore_snapshot(*load_state(path), source=f"state file {path}")

    def restore_snapshot(
        self, arrays: dict[str, np.ndarray], meta: dict[str, Any], source: str = "the state"
    ) -> None:
        """Restore what `snapshot` returned; refused when it was taken on another bundle or policy."""
        if meta.get("bundle_sha256") != self.model.bundle_sha256:
            raise StateError(
                f"{source} was adapted on bundle {meta.get('bundle_sha256')}, this engine runs "
                f"bundle {self.model.bundle_sha256}; refusing it (delete it to start from source)"
            )
        if meta.get("policy") != self.policy_name:
            raise StateError(f"{source} belongs to policy {meta.get('policy')!r}, not {self.policy_name!r}")
        before = self._arrays()
        try:  # a state that does not fit is refused whole: the engine stays as it was
            self._load(arrays)
            counters = check_restored(self._fresh, self._arrays(), meta, vars(self.counters))
        except (KeyError, ValueError, TypeError) as exc:
            self._load(before)
            raise StateError(f"{source} does not fit this policy and bundle: {exc}") from exc
        vars(self.counters).update(counters)

    def _load(self, arrays: dict[str, np.ndarray]) -> None:
        fallback, inputs, runs = (unprefixed(p, arrays) for p in PARTS)
        if self.fallback is not None and fallback:
            self.fallback.load_state(fallback)
        if self.inputs is not None and inputs:  # a state from before alignment: it starts afresh
            self.inputs.load_state(inputs)
        if self.runs is not None:  # a state from before the detector: it starts afresh
            self.runs.load_state(runs) if runs else self.runs.reset()
        self.policy.load_state({k: v for k, v in arrays.items() if k.split("/")[0] not in PARTS})

    def report(self) -> Report:
        """The counters and the adaptation level now, as a frozen value (for drift summaries)."""
        inputs = self.inputs
        mounting = None if inputs is None or inputs.mounting is None else inputs.mounting.describe()
        noise = None if inputs is None or inputs.noise is None else tuple(inputs.noise.share().tolist())
        return Report.of(self.counters.as_dict(), self.policy, mounting, noise)
