"""One ONNX graph in a plain `InferenceSession` whose inputs stay bound to buffers kept by the
caller (`DeviceBuffers`), so that a call passes only what changed.

At batch size 1 the graphs are a few hundred tiny kernels, and handing ORT some thirty inputs per
call (each wrapped and checked by `InferenceSession.run`) costs a tenth of the call. Bound once
(`bind`), parameters, statistics and gradient buffers are read (and the gradient accumulators
written) in place: on the CPU the host arrays themselves, on a GPU their copies in device memory.
The batch-shaped inputs are copied into buffers bound anew only when the batch size changes
(`feed`). Outputs of a fixed shape (the gradients) can be written straight into the caller's
host arrays (`fetch(..., into=...)`); the others come back as new host arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_ttt.adapt.device_buffers import DeviceBuffers
from edge_ttt.adapt.devices import PROVIDERS
from edge_ttt.artifacts import unreadable


class BoundGraph:
    """A graph, its input bindings and the outputs it fetches."""

    def __init__(self, path: Path, options, buffers: DeviceBuffers) -> None:
        import onnxruntime

        self.path = path
        self.buffers = buffers
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, InvalidProtobuf

        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=PROVIDERS[buffers.device]
            )
        except (InvalidProtobuf, InvalidGraph) as exc:  # not RuntimeErrors: the CLI would show a traceback
            raise unreadable(path, exc) from exc
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.takes = frozenset(self.inputs)  # for a caller's "does it take this input?", per call
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._ortvalue = onnxruntime.OrtValue.ortvalue_from_numpy
        self._binding = self.session.io_binding()
        self._bound: set[str] = set()  # inputs bound (their values are kept by `buffers`)
        self._fetch: list[str] = []
        self._into: dict[str, tuple] = {}  # outputs written into the caller's arrays
        self._rows: int | None = None  # the batch size the outputs were allocated for
        self._zeros: dict[str, tuple[int, ...]] = {}  # inputs that hold zeros, with their shape

    def fetch(self, names: list[str], into: Mapping[str, np.ndarray] | None = None) -> None:
        """The outputs `run` returns, in this order; and outputs of a fixed shape that each run
        writes into the given host arrays instead (C-contiguous, float32)."""
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
        """Copy a batch-shaped input into this graph's buffer for it (placed anew when the shape
        or type changes): a copy of one window costs less than wrapping and binding it."""
        self._zeros.pop(name, None)
        key = (id(self), name)
        held = self.buffers.host(key)
        if held is not None and held.shape == array.shape and held.dtype == array.dtype:
            np.copyto(held, array)
            self.buffers.push([key])
        else:
            self.bind(name, self.buffers.place(key, np.array(array, order="C")))

    def feed_target(self, name: str, value: np.ndarray | None, shape: tuple[int, ...]) -> None:
        """A float32 target input of `shape`, zeros when `value` is None: most calls (every forward
        among them) leave a target empty, so zeros are copied only when it holds something else."""
        if value is not None:
            self.feed(name, value)
        elif self._zeros.get(name) != shape:
            self.feed(name, np.zeros(shape, np.float32))
            self._zeros[name] = shape

    def bind(self, name: str, value) -> None:
        """Bind an input to an OrtValue (placed by `DeviceBuffers`): the next runs read whatever
        it holds then."""
        self._binding.bind_ortvalue_input(name, value)
        self._bound.add(name)

    def unbound(self) -> list[str]:
        """The inputs nothing is bound to yet."""
        return [name for name in self.inputs if name not in self._bound]

    def run(self) -> list[np.ndarray]:
        """Run on the bound inputs; the fetched outputs as new arrays (the `into` ones are written
        in place). Copying every output and dropping the `into` ones costs less than picking the
        fetched ones through `get_outputs`, which wraps each output anew (0.08 ms a call)."""
        self.session.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[: len(self._fetch)]
