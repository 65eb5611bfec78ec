"""Which device ONNX Runtime runs a bundle on: the execution providers of each, what this
installation offers, and `auto` resolved to the best of it."""

from __future__ import annotations

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def available_devices() -> list[str]:
    """'cuda' when the installed onnxruntime has the CUDA execution provider, and always 'cpu'."""
    import onnxruntime

    return (["cuda"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else []) + ["cpu"]


def resolve_device(device: str) -> str:
    """Map 'auto' to the best available device; refuse 'cuda' where there is none."""
    devices = available_devices()
    if device == "auto":
        return devices[0]
    if device not in devices:
        raise RuntimeError(f"device {device!r} is not available here; available: {', '.join(devices)}")
    return device
