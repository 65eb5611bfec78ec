"""Import ONNX Runtime's on-device training API without importing torch.

`onnxruntime.training/__init__.py` imports torch (for ORTModule and AMP), but the API the device
needs (`onnxruntime.training.api`: CheckpointState, Module, Optimizer) does not. Where the real
package did not load (no torch on the device), a bare package module with the right `__path__`
stands in for it, so that only the API's own submodules are imported. This is the only place in
edge_ttt that touches the package layout of onnxruntime.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import ModuleType

_PACKAGE = "onnxruntime.training"


def training_api() -> ModuleType:
    """Return `onnxruntime.training.api`, importing it without the package `__init__` if needed."""
    if _PACKAGE not in sys.modules:
        import onnxruntime

        stub = types.ModuleType(_PACKAGE)
        stub.__path__ = [str(Path(onnxruntime.__file__).parent / "training")]
        sys.modules[_PACKAGE] = stub
        onnxruntime.training = stub  # type: ignore[attr-defined]
    try:
        return importlib.import_module(f"{_PACKAGE}.api")
    except ImportError as exc:
        raise ImportError(
            "onnxruntime's training API is missing: install onnxruntime-training-cpu==1.19.2 "
            "(x86_64), onnxruntime-training==1.19.2 (CUDA), or a source build with --enable_training "
            "(Jetson, see docs/jetson.md); plain onnxruntime cannot adapt"
        ) from exc
