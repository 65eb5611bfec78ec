"""The v1 contract's names, and the checks reader and writer share: one set of checks, so that we
never write a file we would refuse to read."""

from __future__ import annotations

import math
import os

import numpy as np

LOG_FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (LOG_FORMAT_VERSION,)

KEY_LOG_FORMAT = "edge_ttt.log_format"
KEY_CHANNELS = "edge_ttt.channels"
KEY_SAMPLE_RATE_HZ = "edge_ttt.sample_rate_hz"
KEY_CLASS_NAMES = "edge_ttt.class_names"

COL_DEVICE_ID = "device_id"
COL_T_NS = "t_ns"
COL_LABEL = "label"
RESERVED_COLUMNS = (COL_DEVICE_ID, COL_T_NS, COL_LABEL)

# The fix for a file that is not a log at all: what a command-line user runs, not a Python call.
CONVERT_FIX = (
    "pass a recorded log; convert a CSV or Parquet recording of your own with "
    "`edge-ttt datasets import FILE --out LOG --time COLUMN` (docs/log-format.md)"
)


class LogFormatError(ValueError):
    """A log file (or a log about to be written) breaks the v1 contract.

    The message always names the file and the offending key or column and says how to fix it,
    because these errors surface on a field engineer's console, far from the code.
    """


def contract_error(where: str | os.PathLike[str], what: str, fix: str) -> LogFormatError:
    return LogFormatError(f"{where}: {what}. Fix: {fix}.")


def _refuse_repeats(
    where: str | os.PathLike[str], key: str, names: tuple[str, ...], what: str, fix: str
) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise contract_error(where, f"metadata key '{key}' repeats {what} {duplicates}", fix)


def check_metadata(
    where: str | os.PathLike[str],
    channels: tuple[str, ...],
    sample_rate_hz: float,
    class_names: tuple[str, ...] | None,
) -> None:
    if not channels:
        raise contract_error(
            where, f"metadata key '{KEY_CHANNELS}' lists no channels", "list at least one channel name"
        )
    for name in channels:
        if not name:
            raise contract_error(
                where, f"metadata key '{KEY_CHANNELS}' contains an empty channel name", "name every channel"
            )
        if name in RESERVED_COLUMNS:
            raise contract_error(
                where,
                f"metadata key '{KEY_CHANNELS}' uses the reserved column name '{name}' as a channel",
                f"rename the channel; {', '.join(RESERVED_COLUMNS)} are reserved",
            )
    _refuse_repeats(where, KEY_CHANNELS, channels, "channel(s)", "give each channel a unique name")
    if not (math.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise contract_error(
            where,
            f"metadata key '{KEY_SAMPLE_RATE_HZ}' is {sample_rate_hz!r}, not a positive finite number",
            'store the nominal rate in Hz as a decimal string, e.g. "50.0"',
        )
    if class_names is not None:
        if not class_names:
            raise contract_error(
                where,
                f"metadata key '{KEY_CLASS_NAMES}' is an empty list",
                "omit the key when there are no classes",
            )
        _refuse_repeats(where, KEY_CLASS_NAMES, class_names, "class(es)", "make class names unique")


def sort_and_check_rows(
    where: str | os.PathLike[str],
    device_id: np.ndarray,
    t_ns: np.ndarray,
    label: np.ndarray | None,
    class_names: tuple[str, ...] | None,
) -> np.ndarray:
    """Validate row invariants and return the stable (device_id, t_ns) sort order."""
    if label is not None and label.size:
        low, high = int(label.min()), int(label.max())
        if low < -1:
            raise contract_error(
                where,
                f"column '{COL_LABEL}' has value {low} < -1",
                "use -1 for unknown labels and 0.. for classes",
            )
        if class_names is not None and high >= len(class_names):
            raise contract_error(
                where,
                f"column '{COL_LABEL}' has value {high} but metadata key '{KEY_CLASS_NAMES}' "
                f"lists only {len(class_names)} classes",
                f"extend '{KEY_CLASS_NAMES}' or fix the labels (valid: -1..{len(class_names) - 1})",
            )
    if not t_ns.size:
        return np.zeros(0, dtype=np.intp)
    try:
        # np.unique sorts by Python string order, so codes order like the ids themselves.
        uniques, codes = np.unique(device_id, return_inverse=True)
    except TypeError as exc:
        raise contract_error(
            where, f"column '{COL_DEVICE_ID}' holds non-string values ({exc})", "store ids as strings"
        ) from exc
    if not all(isinstance(u, str) for u in uniques):
        bad = next(u for u in uniques if not isinstance(u, str))
        raise contract_error(
            where, f"column '{COL_DEVICE_ID}' holds a non-string value {bad!r}", "store ids as strings"
        )
    order = np.lexsort((t_ns, codes))
    sorted_codes, sorted_t = codes[order], t_ns[order]
    clash = (sorted_codes[1:] == sorted_codes[:-1]) & (sorted_t[1:] <= sorted_t[:-1])
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise contract_error(
            where,
            f"column '{COL_T_NS}' repeats time {int(sorted_t[i])} for device '{uniques[sorted_codes[i]]}' "
            f"({int(clash.sum())} duplicate row(s) in total)",
            "each device may have at most one sample per timestamp; drop or re-time duplicates",
        )
    return order
