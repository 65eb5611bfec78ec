"""The inputs the host writes and the graphs read (parameters, statistics, the window), placed
where the graphs run.

On the CPU a graph input is bound to the host array's own memory: a write to the array is what
the next run reads, with no copy at all. On a GPU the graph reads a copy in device memory, bound
once; `push` brings the copy up to the host array after a write (one host-to-device copy per
input written), so that inputs that did not change (the frozen weights, the parameters between
two steps) never cross the bus again. `copies=True` places such copies on the CPU as well: the
GPU's rule (a write is unseen until pushed), which the tests use to check every write is pushed
without a GPU.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

from edge_ttt.adapt.devices import PROVIDERS


class DeviceBuffers:
    """Host arrays and the OrtValues the graphs are bound to, by key."""

    def __init__(self, device: str = "cpu", copies: bool | None = None) -> None:
        import onnxruntime

        if device not in PROVIDERS:  # its name is also ORT's for an OrtValue's memory
            raise ValueError(f"unknown device {device!r}; choose one of {', '.join(PROVIDERS)}")
        self.device = device
        self.copies = device != "cpu" if copies is None else copies
        self._from_numpy = onnxruntime.OrtValue.ortvalue_from_numpy
        self._placed: dict[Hashable, tuple[object, np.ndarray]] = {}

    def place(self, key: Hashable, array: np.ndarray) -> object:
        """The OrtValue for `array` (C-contiguous, of the input's type), kept under `key`: its own
        memory on the CPU, else a copy on the device, made now."""
        if not self.copies:
            value = self._from_numpy(array)
        elif self.device == "cpu":
            value = self._from_numpy(array.copy())
        else:
            value = self._from_numpy(array, self.device, 0)
        self._placed[key] = (value, array)
        return value

    def host(self, key: Hashable) -> np.ndarray | None:
        """The host array placed under `key`, None if none is."""
        placed = self._placed.get(key)
        return None if placed is None else placed[1]

    def push(self, keys: Iterable[Hashable]) -> None:
        """Bring the device copies under `keys` up to their host arrays (nothing to do where the
        graphs read the host arrays themselves)."""
        if self.copies:
            for key in keys:
                value, array = self._placed[key]
                value.update_inplace(array)
