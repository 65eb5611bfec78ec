"""One ONNX graph in a plain `InferenceSession` whose inputs stay bound to arrays kept by the
caller, so that a call passes only what changed.

At batch size 1 the graphs are a few hundred tiny kernels, and handing ORT some thirty inputs per
call (each wrapped and checked by `InferenceSession.run`) costs a tenth of the call. Bound once
(`bind`), parameters, statistics and gradient buffers are read (and the gradient accumulators
written) in place; the caller changes them with `np.copyto`, and copies the batch-shaped inputs
into buffers bound anew only when the batch size changes (`feed`). Outputs of a fixed shape (the
gradients) can be written straight into the caller's arrays (`fetch(..., into=...)`).

On CUDA the same bindings hold host arrays: ORT copies them to the device and the outputs back on
every run. Keeping them in device memory is left for when a GPU can test it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_ttt.adapt.devices import PROVIDERS


class BoundGraph:
    """A graph, its input bindings and the outputs it fetches."""

    def __init__(self, path: Path, options, device: str = "cpu") -> None:
        import onnxruntime

        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), options, providers=PROVIDERS[device])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._ortvalue = onnxruntime.OrtValue.ortvalue_from_numpy
        self._binding = self.session.io_binding()
        self._held: dict[str, tuple] = {}  # the bound values, alive as long as their binding
        self._fetch: list[str] = []
        self._into: dict[str, tuple] = {}  # outputs written into the caller's arrays
        self._rows: int | None = None  # the batch size the outputs were allocated for

    def fetch(self, names: list[str], into: Mapping[str, np.ndarray] | None = None) -> None:
        """The outputs `run` returns, in this order; and outputs of a fixed shape that each run
        writes into the given arrays instead (C-contiguous, float32)."""
        into = dict(into or {})
        missing = [name for name in [*names, *into] if name not in self.outputs]
        if missing:
            raise ValueError(f"graph {self.path} has no outputs {missing}")
        self._fetch = list(names)
        self._into = {name: (self._ortvalue(array), array) for name, array in into.items()}
        self._rows = None

    def batch(self, rows: int) -> None:
        """Declare the next run's batch size: ORT keeps the outputs it allocated bound, with their
        shapes, so they are bound anew when the batch size changes."""
        if rows != self._rows:
            self._binding.clear_binding_outputs()
            for name in self._fetch:
                self._binding.bind_output(name, "cpu")
            for name, (value, _) in self._into.items():
                self._binding.bind_ortvalue_output(name, value)
            self._rows = rows

    def feed(self, name: str, array: np.ndarray) -> None:
        """Copy a batch-shaped input into the buffer bound to it, bound anew when the shape (or
        type) changes: a copy of one window costs less than wrapping and binding it."""
        held = self._held.get(name)
        if held is not None and held[1].shape == array.shape and held[1].dtype == array.dtype:
            np.copyto(held[1], array)
        else:
            self.bind(name, np.array(array, order="C"))

    def bind(self, name: str, array: np.ndarray) -> None:
        """Bind an input to the array's memory (C-contiguous, of the input's type): the next runs
        read whatever the array holds then."""
        value = self._ortvalue(array)
        self._binding.bind_ortvalue_input(name, value)
        self._held[name] = (value, array)

    def unbound(self) -> list[str]:
        """The inputs no array is bound to yet."""
        return [name for name in self.inputs if name not in self._held]

    def run(self) -> list[np.ndarray]:
        """Run on the bound inputs; the fetched outputs as new arrays (the `into` ones are written
        in place). Copying every output and dropping the `into` ones costs less than picking the
        fetched ones through `get_outputs`, which wraps each output anew (0.08 ms a call)."""
        self.session.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[: len(self._fetch)]
