"""Replay a recorded log through the same windowing and engine as the live agent."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.engine import AUTO_INPUTS, DEFAULT_POLICY, SOURCE_EVERY, AutoInputs, Engine
from edge_ttt.adapt.estimates import class_prior, device_estimates, stream_estimate
from edge_ttt.adapt.fallback import FallbackOptions
from edge_ttt.adapt.fallback_setup import AUTO_FALLBACK, AutoFallback
from edge_ttt.adapt.input_alignment import InputOptions
from edge_ttt.adapt.label_runs import RunOptions
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import POLICY_TYPES, misfit
from edge_ttt.adapt.runs_setup import AUTO_RUNS, AutoRuns
from edge_ttt.artifacts import MANIFEST, Bundle, BundleError, load_bundle
from edge_ttt.manifest import Manifest, check_fits
from edge_ttt.metrics import accuracy, device_accuracy, devices_below, macro_f1
from edge_ttt.recordlog import RecordedLog, read_log
from edge_ttt.stream.window import WindowBatch, windows_from_log

COLLAPSE_SHARE = 0.9  # predictions of one class above this share are called a collapse
# ... over at least this many windows: a recording of one activity runs ~25 windows, so a short
# log can hold one class and the model be right.
COLLAPSE_MIN_WINDOWS = 50
BELOW_SOURCE = 0.01  # a device more than 1 point below `source` counts as made worse


class ReplayError(ValueError):
    """The log does not fit the model (channels, sample rate, class names) or gives no window."""


def check_compatible(log: RecordedLog, channels: list[str], sample_rate_hz: float, where: str) -> None:
    """Refuse a log whose channels or sample rate the model was not trained for (`check_fits`),
    saying how to make it fit."""
    mismatch = check_fits(
        channels, sample_rate_hz, channels=list(log.channels), period_ns=1e9 / log.sample_rate_hz
    )
    if mismatch == "channels":
        raise ReplayError(
            f"{where}: channels {list(log.channels)} do not match the model's {channels} "
            f"(same names, same order). Fix: {_channels_fix(log, channels, where)}"
        )
    if mismatch == "rate":
        raise ReplayError(
            f"{where}: sample rate {log.sample_rate_hz} Hz, the model expects {sample_rate_hz} Hz. Fix: "
            f"resample the recording to {sample_rate_hz:g} Hz and import it again (edge-ttt does not "
            "resample, and a window counts samples, so it would span another length of time than in "
            f"training), or train a model on {log.sample_rate_hz:g} Hz logs"
        )


def _channels_fix(log: RecordedLog, channels: list[str], where: str) -> str:
    """`datasets import` reads a recorded log like any Parquet file, so it reorders and renames
    channels; channels the log lacks need a recording that has them, or another model."""
    missing = [c for c in channels if c not in log.channels]
    if missing and len(log.channels) != len(channels):
        return f"the log lacks {', '.join(missing)}: record them, or train a model on the log's channels"
    if missing:  # as many channels under other names: the same sensors, perhaps
        how = f"if they are the model's in its order ({log.channels[0]} is {channels[0]}, ...), rename them"
        pairs = ",".join(f"{a}={b}" for a, b in zip(log.channels, channels, strict=True))
    else:
        how, pairs = "re-import the log with the model's channels in its order", ",".join(channels)
    labels = "" if log.label is None else " --label label"
    if log.label is not None and log.class_names is not None:
        labels += f" --classes {','.join(log.class_names)}"
    return (
        f"{how}: `edge-ttt datasets import {where} --out FIXED.parquet --time t_ns --time-unit ns "
        f"--device-column device_id --channels {pairs}{labels}`"
    )


def model_labels(log: RecordedLog, classes: Sequence[str], where: str) -> RecordedLog:
    """The log with its labels as indices of the model's classes, matched by name: a log imported
    with its class names sorted (the default) indexes them otherwise than the model. A log without
    class names keeps its indices. A class of the log the model does not know is refused where a
    label uses it: its windows could only be scored wrong."""
    if log.label is None or log.class_names is None or tuple(log.class_names) == tuple(classes):
        return log
    used = np.unique(log.label[log.label >= 0])
    unknown = [log.class_names[i] for i in used if log.class_names[i] not in classes]
    if unknown:
        raise ReplayError(
            f"{where}: the log's class(es) {unknown} are not among the model's ({', '.join(classes)}); "
            "replay matches labels to the model's classes by name. Fix: name the classes as the model "
            "does when you import the log (the label column's text), or mark those samples unknown (-1)"
        )
    index = np.array([classes.index(n) if n in classes else -1 for n in log.class_names], np.int32)
    label = np.where(log.label >= 0, index[np.maximum(log.label, 0)], -1)
    return dataclasses.replace(log, label=label, class_names=tuple(classes))


def open_bundle(artifacts: Path) -> Bundle:
    """`load_bundle`, with a file given for the bundle (its manifest.json, say) named as such:
    its message would otherwise say the directory does not exist and send one to re-export it."""
    artifacts = Path(artifacts)
    if artifacts.is_file():
        parent = artifacts.parent
        hint = str(parent) if (parent / MANIFEST).is_file() else "the directory `edge-ttt export --out` wrote"
        raise BundleError(
            f"{artifacts} is a file, not an artifact bundle. Fix: pass the bundle directory, {hint}"
        )
    return load_bundle(artifacts)


def _no_window(log: RecordedLog, window: int, where: str) -> ReplayError:
    """Too few samples for a window, or gaps that cut every run shorter than one."""
    counts = np.unique(log.device_id, return_counts=True)[1] if len(log) else np.zeros(1, np.int64)
    most = int(counts.max())
    held = "no samples" if not most else f"{'at most ' if len(counts) > 1 else ''}{most} samples per device"
    gaps = "" if most < window else " without a gap over 2 sample periods, and gaps cut every run shorter"
    return ReplayError(
        f"{where}: no complete window: the log holds {held}, a window is {window} samples{gaps}. "
        "Fix: replay a longer recording"
    )


def replay(
    artifacts: Path,
    log_path: Path,
    policies: Sequence[str] | None = (DEFAULT_POLICY,),
    batch_size: int = 1,
    device: str = "cpu",
    show_progress: bool = False,
    episodic: bool = False,
    per_device: bool = True,
    fallback: FallbackOptions | AutoFallback | None = AUTO_FALLBACK,
    with_classes: bool = False,
    inputs: InputOptions | AutoInputs | None = AUTO_INPUTS,
    runs: RunOptions | AutoRuns | None = AUTO_RUNS,
    source_every: int = SOURCE_EVERY,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the log once per policy; one summary (what `--json` prints) per policy.

    As the live agent does, each device has an engine of its own (`per_device`), and the
    devices' batches go through in live-stream order (by the end time of a batch's last
    window). `per_device=False` runs every device's windows through one engine. Each policy
    starts from source. `policies=None` means every policy the bundle can run (with `episodic`,
    every gradient one). `fallback`: serve the source model while the adapted one is estimated
    worse (see `Engine`; by default ahead of the default policy: `AutoFallback`). The source model
    runs on every `source_every`-th window each engine's policy serves (0: never), for
    `source_estimated_accuracy` and the fallback.
    `inputs`: input alignment ahead of every policy (by default where it wins: `AutoInputs`).
    `runs`: the label-run switch (by default ahead of the default policy: `AutoRuns`; see
    `Engine`). `options`: keyword options of the policy
    (for one policy: `[model.options]` of the agent's configuration).
    `with_classes` adds every window's predicted class (`classes`, in log order), to compare runs
    window by window (scripts/aarch64_check.sh).
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    bundle = open_bundle(artifacts)
    info = bundle.manifest.model
    log = read_log(log_path)
    check_compatible(log, info.channels, info.sample_rate_hz, str(log_path))
    log = model_labels(log, info.classes, str(log_path))
    windows, log_devices = windows_from_log(log, info.window, info.hop)
    if not len(windows):
        raise _no_window(log, info.window, str(log_path))
    devices = log_devices if per_device else np.zeros(len(windows), np.int64)
    if policies is None:
        policies = every_policy(bundle.manifest, episodic)[0]
    options = {**(options or {}), **({"episodic": True} if episodic else {})} or None
    batches = _batches(windows, devices, batch_size)
    results = []
    for p in policies:
        model = OrtModel(bundle, device=device)  # shared by the policy's engines, as in the agent
        engines = {
            d: Engine(
                model, p, options, fallback=fallback, inputs=inputs, runs=runs, source_every=source_every
            )
            for d in np.unique(devices)
        }
        summary, predicted = _run(engines, windows, devices, batches, show_progress)
        summary["device_accuracy"] = device_accuracy(windows.label, predicted, log_devices)
        results.append({**summary, "classes": predicted.tolist()} if with_classes else summary)
    return against_source(results)


def against_source(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each result gains `devices_below_source`: the devices where it is more than
    `BELOW_SOURCE` below the `source` policy of the same replay (None without one). A mean over the
    devices hides the device that adaptation made worse; the agent adapts, and an operator
    watches, one device at a time."""
    source = next((r["device_accuracy"] for r in results if r["policy"] == "source"), None)
    for r in results:
        below = None if source is None else devices_below(source, r["device_accuracy"], BELOW_SOURCE)
        r["devices_below_source"] = below
    return results


def every_policy(manifest: Manifest, episodic: bool) -> tuple[list[str], dict[str, str]]:
    """`--policy all`: the policies the bundle can run (with `episodic`, the gradient ones), and
    why each other one is left out, so that a missing row is explained rather than silent."""
    chosen, left_out = [], {}
    for name, policy in POLICY_TYPES.items():
        reason = misfit(policy, manifest)
        if reason is not None:
            left_out[name] = reason
        elif episodic and policy.loss is None:
            left_out[name] = "it takes no gradient steps, so an episode would have nothing to forget"
        else:
            chosen.append(name)
    return chosen, left_out


def _batches(windows: WindowBatch, devices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Window indices per batch: each device's windows in time order, cut into batches, and the
    batches of every device in the order their last window ends."""
    batches = []
    for d in np.unique(devices):
        own = np.flatnonzero(devices == d)
        own = own[np.argsort(windows.t_end_ns[own], kind="stable")]
        batches += [own[i : i + batch_size] for i in range(0, len(own), batch_size)]
    return sorted(batches, key=lambda b: (windows.t_end_ns[b[-1]], b[0]))


def _run(
    engines: dict[Any, Engine],
    windows: WindowBatch,
    devices: np.ndarray,
    batches: list[np.ndarray],
    show_progress: bool,
) -> tuple[dict[str, Any], np.ndarray]:
    n = len(windows)
    predicted = np.full(n, -1, dtype=np.int64)
    source = np.full(n, -1, dtype=np.int64)
    first = next(iter(engines.values()))
    start = time.perf_counter()
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"replay {first.policy_name}", total=n)
        for idx in batches:
            out = engines[devices[idx[0]]].process(windows.x[idx])
            predicted[idx], source[idx] = out.classes, out.source_classes
            progress.advance(task, len(idx))
    elapsed = time.perf_counter() - start
    counts = [e.counters.as_dict() for e in engines.values()]
    counters = Counters(**{name: sum(c[name] for c in counts) for name in counts[0]})
    manifest = first.model.manifest
    classes = len(manifest.model.classes)
    top = int(np.bincount(predicted[predicted >= 0], minlength=classes).argmax()) if n else 0
    top_share = float(np.mean(predicted == top)) if n else 0.0
    batch = int(max((len(b) for b in batches), default=1))
    prior, stay = class_prior(manifest), manifest.reference.stay
    summary = {
        "policy": first.policy_name,
        "episodic": first.episodic,
        "windows": n,
        "devices": len(engines),
        "accuracy": accuracy(windows.label, predicted),
        "macro_f1": macro_f1(windows.label, predicted, classes),
        "estimated_accuracy": stream_estimate(device_estimates(predicted, devices, prior, stay)),
        "source_estimated_accuracy": stream_estimate(device_estimates(source, devices, prior, stay)),
        **{k: v for k, v in counters.as_dict().items() if k != "windows"},  # adapt_steps, fallbacks, ...
        "ms_per_window": 1000 * elapsed / max(n, 1),
        "batch_size": batch,
        "bundle_sha256": first.model.bundle_sha256,
        "top_class": manifest.model.classes[top],
        "top_class_share": top_share,
        "collapse": collapse_note(
            first.policy_name, manifest, batch, counters, manifest.model.classes[top], top_share
        ),
        "input_guard": guard_note(counters, manifest.model.classes[top], top_share),
    }
    return summary, predicted


def guard_note(counters: Counters, top_class: str, share: float) -> str | None:
    """Where half the windows or more failed the input guard, whatever the policy: their classes
    come from a sanitized copy, without adaptation, so the accuracy says little of the model."""
    if counters.windows == 0 or 2 * counters.rejected_invalid < counters.windows:
        return None
    said = f": their class, {top_class!r}, says nothing of the model" if share >= COLLAPSE_SHARE else ""
    return (
        f"{counters.rejected_invalid} of {counters.windows} windows failed the input guard "
        "(non-finite, flat-lined or out-of-range values) and were predicted from a sanitized copy"
        f"{said}; check the sensor or the log"
    )


def collapse_note(
    policy: str, manifest: Manifest, batch: int, counters: Counters, top_class: str, share: float
) -> str | None:
    """Why a policy's predictions sit at one class, from what the counters and the policy say;
    None below COLLAPSE_SHARE, under COLLAPSE_MIN_WINDOWS, or where most windows failed the input
    guard (a dead sensor, not the model: `guard_note`). An accuracy at the share of one class
    otherwise reads as a bug."""
    if share < COLLAPSE_SHARE or counters.windows < COLLAPSE_MIN_WINDOWS:
        return None
    if 2 * counters.rejected_invalid >= counters.windows:
        return None
    said = [f"{100 * share:.0f}% of windows predicted as {top_class!r}: a collapse to one class"]
    if POLICY_TYPES[policy].batch_stats and manifest.batch_norms:
        which = (
            "a batch of one window is normalized by its own moments"
            if batch == 1
            else f"batches of {batch} windows in time order follow the current activity"
        )
        said.append(
            f"{policy} normalizes with the statistics of each batch, and {which} (why tent and sar "
            "collapse: docs/adaptation.md); use larger batches of mixed windows, or norm or steady, "
            "which keep population statistics"
        )
    if counters.skipped_unreliable:
        said.append(
            f"{counters.skipped_unreliable} of {counters.windows} windows were skipped as unreliable"
            + (", so no adaptation step caused it" if counters.adapt_steps == 0 else "")
        )
    if counters.resets or counters.rollbacks:
        said.append(f"{counters.resets} resets and {counters.rollbacks} rollbacks did not undo it")
    return "; ".join(said)
