"""The in-memory log: every sample of one file, with dtypes every consumer can rely on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class RecordedLog:
    """All samples of one log file, sorted by (device_id, t_ns).

    `eq=False` because element-wise array comparison has no single truth value; compare fields.
    """

    device_id: np.ndarray
    t_ns: np.ndarray
    values: np.ndarray
    label: np.ndarray | None
    channels: tuple[str, ...]
    sample_rate_hz: float
    class_names: tuple[str, ...] | None

    def __post_init__(self) -> None:
        # Normalise dtypes once here so every consumer can rely on them; refuse lossy casts.
        t_ns = np.asarray(self.t_ns)
        values = np.asarray(self.values)
        if t_ns.ndim != 1 or not np.issubdtype(t_ns.dtype, np.integer):
            raise ValueError(f"t_ns must be a 1-D integer array, got {t_ns.dtype} with shape {t_ns.shape}")
        n = t_ns.shape[0]
        channels = tuple(str(c) for c in self.channels)
        if values.shape != (n, len(channels)) or not np.issubdtype(values.dtype, np.floating):
            raise ValueError(
                f"values must be a float array of shape ({n}, {len(channels)}), "
                f"got {values.dtype} with shape {values.shape}"
            )
        device_id = np.asarray(self.device_id, dtype=object)
        if device_id.shape != (n,):
            raise ValueError(f"device_id must have shape ({n},), got {device_id.shape}")
        label = self.label
        if label is not None:
            label = np.asarray(label)
            if label.shape != (n,) or not np.issubdtype(label.dtype, np.integer):
                raise ValueError(
                    f"label must be a 1-D integer array of shape ({n},), got {label.dtype} {label.shape}"
                )
            label = label.astype(np.int32, copy=False)
        class_names = None if self.class_names is None else tuple(str(c) for c in self.class_names)
        object.__setattr__(self, "device_id", device_id)
        object.__setattr__(self, "t_ns", t_ns.astype(np.int64, copy=False))
        object.__setattr__(self, "values", values.astype(np.float32, copy=False))
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "sample_rate_hz", float(self.sample_rate_hz))
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    @property
    def period_ns(self) -> int:
        """Nominal sample period; windowing measures gaps in these units."""
        return round(1e9 / self.sample_rate_hz)

    def devices(self) -> list[str]:
        """Sorted unique device ids."""
        return sorted(set(self.device_id.tolist()))

    def select(self, mask: np.ndarray) -> RecordedLog:
        """Row subset (boolean mask over rows) with the same metadata."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != self.t_ns.shape:
            raise ValueError(
                f"mask must be a boolean array of shape {self.t_ns.shape}, got {mask.dtype} {mask.shape}"
            )
        return RecordedLog(
            device_id=self.device_id[mask],
            t_ns=self.t_ns[mask],
            values=self.values[mask],
            label=None if self.label is None else self.label[mask],
            channels=self.channels,
            sample_rate_hz=self.sample_rate_hz,
            class_names=self.class_names,
        )
