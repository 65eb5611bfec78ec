"""Convert the real smartwatch recordings shipped inside `seglearn` into log format v1.

Facts about the data, from seglearn 1.2.5 `seglearn/datasets.py`, docstring of `load_watch`
(lines 24-30): "inertial sensor data, each element with shape [n_samples, 6] | sampled at 50 Hz"
and "data['side'] : array, length 140 / the extremity side, 1 = right, 0 = left".

We never `import seglearn` (it needs pandas on some installs) and never download anything: the
file is located through the installed package's search path and read with numpy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edge_ttt.recordlog import RecordedLog, write_log

__all__ = [
    "SAMPLE_RATE_HZ",
    "SOURCE_SUBJECTS",
    "TARGET_SUBJECTS",
    "convert_watch",
    "device_name",
    "load_watch_raw",
    "watch_logs",
]

SOURCE_SUBJECTS = (1, 2, 3, 4, 5)
TARGET_SUBJECTS = (6, 7, 8, 9, 10)

SAMPLE_RATE_HZ = 50.0  # seglearn/datasets.py, load_watch docstring: "sampled at 50 Hz"
SIDE_NAMES = {0: "left", 1: "right"}  # seglearn/datasets.py: "the extremity side, 1 = right, 0 = left"
EPOCH_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z: every device's timeline starts here
PERIOD_NS = 20_000_000  # 1 / 50 Hz
# Between one recording's last sample and the next one's first; far above 2 periods, so the
# windower treats each recording as its own run and no window spans two recordings.
RECORDING_GAP_NS = 10_000_000_000

_KEYS = ("X", "y", "y_labels", "subject", "side", "X_labels")


def load_watch_raw() -> dict:
    """The dict in seglearn's `data/watch_dataset.npy` (X, y, y_labels, subject, side, X_labels)."""
    spec = importlib.util.find_spec("seglearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The smartwatch recordings ship with the 'seglearn' package, which is not installed. "
            "Install it with: pip install 'edge-ttt[export]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "watch_dataset.npy"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: seglearn is installed but its smartwatch data file is missing. "
            "Reinstall it with: pip install --force-reinstall 'edge-ttt[export]'"
        )
    raw = np.load(path, allow_pickle=True).item()
    missing = [k for k in _KEYS if k not in raw]
    if missing:
        raise ValueError(
            f"{path}: expected keys {list(_KEYS)}, missing {missing}; unsupported seglearn version?"
        )
    n = len(raw["X"])
    if any(len(raw[k]) != n for k in ("y", "subject", "side")):
        raise ValueError(f"{path}: X, y, subject and side differ in length; unsupported seglearn version?")
    return raw


def device_name(subject: int, side: int) -> str:
    """Device id for one arm of one subject; both are recoverable from it."""
    return f"watch-s{subject:02d}-{SIDE_NAMES[side]}"


def _build(raw: dict, subjects: tuple[int, ...]) -> tuple[RecordedLog, dict[str, np.ndarray]]:
    """One split as a log plus its traceability columns (`subject`, `recording`)."""
    subject_of = np.asarray(raw["subject"]).astype(int)
    side_of = np.asarray(raw["side"]).astype(int)
    y = np.asarray(raw["y"]).astype(int)
    # Sorting by device id (not by subject number) fixes the row order write_log will use anyway.
    devices: dict[str, list[int]] = {}
    for rec in range(len(raw["X"])):
        if subject_of[rec] in subjects:
            devices.setdefault(device_name(int(subject_of[rec]), int(side_of[rec])), []).append(rec)

    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("device_id", "t_ns", "values", "label", "subject", "rec")
    }
    for device in sorted(devices):
        start = EPOCH_NS
        for rec in devices[device]:  # dataset order within a device
            x = np.asarray(raw["X"][rec])
            n = x.shape[0]
            parts["device_id"].append(np.full(n, device, dtype=object))
            parts["t_ns"].append(start + np.arange(n, dtype=np.int64) * PERIOD_NS)
            parts["values"].append(x.astype(np.float32))
            parts["label"].append(np.full(n, y[rec], dtype=np.int32))
            parts["subject"].append(np.full(n, subject_of[rec], dtype=np.int32))
            parts["rec"].append(np.full(n, rec, dtype=np.int32))
            start += (n - 1) * PERIOD_NS + RECORDING_GAP_NS

    log = RecordedLog(
        device_id=np.concatenate(parts["device_id"]),
        t_ns=np.concatenate(parts["t_ns"]),
        values=np.concatenate(parts["values"]),
        label=np.concatenate(parts["label"]),
        channels=tuple(str(c) for c in raw["X_labels"]),
        sample_rate_hz=SAMPLE_RATE_HZ,
        class_names=tuple(str(c) for c in raw["y_labels"]),
    )
    return log, {"subject": np.concatenate(parts["subject"]), "recording": np.concatenate(parts["rec"])}


def watch_logs() -> dict[str, RecordedLog]:
    """Source (subjects 1-5) and target (subjects 6-10) logs, built in memory."""
    raw = load_watch_raw()
    return {"source": _build(raw, SOURCE_SUBJECTS)[0], "target": _build(raw, TARGET_SUBJECTS)[0]}


def convert_watch(out_dir: Path) -> dict[str, Path]:
    """Write out_dir/watch_source.parquet and out_dir/watch_target.parquet; return their paths."""
    raw = load_watch_raw()
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for split, subjects in (("source", SOURCE_SUBJECTS), ("target", TARGET_SUBJECTS)):
        log, extra = _build(raw, subjects)
        paths[split] = out_dir / f"watch_{split}.parquet"
        write_log(paths[split], log, extra_columns=extra)
    return paths
