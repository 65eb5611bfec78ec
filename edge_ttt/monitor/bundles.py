"""`monitor report --bundle`: the bundle's validation accuracy is the reference only for the
devices that run its model. A bundle of another model was taken silently, and every device's
accuracy lost was measured against a model it never ran."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from edge_ttt.commandline import fail
from edge_ttt.monitor.text import visible

log = logging.getLogger(__name__)
NAMED = 5  # devices and models named in a message, at most


def latest_models(table: pa.Table) -> dict[str, str]:
    """Per device, the model (`model_sha256`) of its latest summary, as the report ranks it."""
    rows = table.select(["device_id", "interval_end", "model_sha256"]).sort_by(
        [("device_id", "ascending"), ("interval_end", "ascending")]
    )
    latest = rows.group_by("device_id", use_threads=False).aggregate([("model_sha256", "last")])
    return dict(zip(latest["device_id"].to_pylist(), latest["model_sha256_last"].to_pylist(), strict=True))


def bundle_reference(path: Path, table: pa.Table) -> tuple[float, str | None]:
    """(the bundle's validation accuracy, the model hash to compare it with, or None when every
    device runs it). None of the devices running it is one line, exit 2; some not, a warning that
    names them (they keep the reference their summaries carry)."""
    from edge_ttt.artifacts import BundleError, load_bundle

    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        fail(f"--bundle: {exc}")
    models = latest_models(table)
    others = sorted(d for d, m in models.items() if m != bundle.sha256)
    if len(others) == len(models):
        seen = sorted(set(models.values()))
        fail(
            f"--bundle {path}: its model {bundle.sha256} is not the fleet's (the summaries name "
            f"{', '.join(seen[:NAMED])}{' and others' if len(seen) > NAMED else ''}). Fix: pass the bundle "
            "the devices run (the SHA-256 of its manifest.json is their model_sha256), or leave --bundle "
            "out to compare each device with the reference its summaries carry"
        )
    if not others:
        return bundle.manifest.reference.val_accuracy, None
    named = ", ".join(visible(d) for d in others[:NAMED]) + (", ..." if len(others) > NAMED else "")
    log.warning(
        "--bundle %s: %d of %d devices run another model (%s): they are compared with the reference "
        "their summaries carry, the others with the bundle's",
        path,
        len(others),
        len(models),
        named,
        extra={"fields": {"bundle": str(path), "other_devices": len(others)}},
    )
    return bundle.manifest.reference.val_accuracy, bundle.sha256
