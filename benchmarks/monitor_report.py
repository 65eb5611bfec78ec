"""Fleet report benchmark: `edge-ttt monitor report` on a synthetic fleet of many devices, one
summary per device per minute for a day (default 500 x 1440 = 720,000 summaries).

The dataset is built from a few dozen real summaries (`SummaryCollector` over standard normal data
on six channels, a share of the devices shifted on one channel), repeated with each device's id,
interval times and ids, and written as one zstd Parquet file per date like a compacted dataset.
Timed: reading the report's columns (and the reference's bins), and rendering plus writing the
HTML (reading the plotted devices' histograms on the way), as `edge-ttt monitor report` does;
the whole command is timed in docs/monitoring.md.

    .venv/bin/python -m benchmarks.monitor_report [--devices 500] [--intervals 1440] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge_ttt.drift.reference import Reference
from edge_ttt.drift.schema import to_table
from edge_ttt.drift.summary import SummaryCollector
from edge_ttt.monitor import dataset, distributions
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.report import REPORT_COLUMNS, write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "monitor_report.json"
PARTIAL = ROOT / "runs" / "bench" / "partial" / "monitor_report.json"  # other fleet sizes
CHANNELS = ("ax", "ay", "az", "wx", "wy", "wz")
TEMPLATES = 32  # distinct real summaries per kind (steady, shifted)
T0 = 1_700_006_400.0  # 2023-11-15 00:00 UTC: one day is one date partition


def templates(shifted: bool) -> pa.Table:
    """Real summaries of 40 windows; `shifted`: channel ax moved by 1.5 sd, and the source model's
    estimates lower (ATC 0.45, and its classes three of the seven: a class-mix bound of 3/7)."""
    edges = tuple(NormalDist().inv_cdf(k / 16) for k in range(1, 16))
    ref = Reference(
        CHANNELS,
        (0.0,) * 6,
        (1.0,) * 6,
        (edges,) * 6,
        ((1 / 16,) * 16,) * 6,
        tuple(f"k{i}" for i in range(7)),
        class_prior=(1 / 7,) * 7,
        accuracy=0.8,
    )
    made = []
    for i in range(TEMPLATES):
        rng = np.random.default_rng(i + 1000 * shifted)
        c = SummaryCollector(ref, "template", "0", "ab" * 32, "steady", interval_s=1e9, now=T0)
        x = rng.standard_normal((40, 6, 50))
        if shifted:
            x[:, 0] += 1.5
        h = rng.uniform(0.1, 1.5, 40)
        c.observe(
            x,
            rng.integers(0, 7, 40),
            np.exp(-h),
            h,
            None,
            {},
            None,
            [5.0] * 40,
            estimated_correct=(rng.random(40) < (0.6 if shifted else 0.8)).astype(float),
            source_estimated_correct=(rng.random(40) < (0.45 if shifted else 0.8)).astype(float),
            source_classes=rng.integers(0, 3 if shifted else 7, 40),
        )
        made.append(c.close(T0 + 60))
    return to_table(made)


def synthetic(location: str, devices: int, intervals: int) -> int:
    """Write the fleet; every fifth device drifts. Returns the rows written."""
    steady, shifted = templates(False), templates(True)
    rng = np.random.default_rng(0)
    for d in range(devices):
        source = shifted if d % 5 == 0 else steady
        part = source.take(rng.integers(0, TEMPLATES, intervals))
        name = f"dev-{d:04d}"
        ends = pa.array((T0 + 60 * (np.arange(intervals) + 1)) * 1e6, pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        )
        starts = pc.subtract(ends, pa.scalar(60_000_000, pa.duration("us")))
        columns = {
            "device": pa.array([name] * intervals),
            "summary_id": pa.array([uuid.uuid4().hex for _ in range(intervals)]),
            "interval_start": starts,
            "interval_end": ends,
        }
        for column, values in columns.items():
            part = part.set_column(part.schema.get_field_index(column), column, values)
        dataset.append(location, part)
    dataset.compact(location)
    return devices * intervals


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.monitor_report", description=__doc__.partition("\n\n")[0]
    )
    parser.add_argument("--devices", type=int, default=500, help="devices of the synthetic fleet")
    parser.add_argument("--intervals", type=int, default=1440, help="summaries per device (one a minute)")
    parser.add_argument("--keep", type=Path, help="build the dataset here and keep it")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the result file (default: {RESULTS} for the default fleet, else {PARTIAL})",
    )
    args = parser.parse_args()
    if args.out is None:  # another fleet size must not replace the committed result, unless asked
        default = all(getattr(args, k) == parser.get_default(k) for k in ("devices", "intervals"))
        args.out = RESULTS if default else PARTIAL
        args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        location = str(args.keep or Path(tmp) / "fleet")
        started = time.perf_counter()
        rows = synthetic(location, args.devices, args.intervals)
        built_s = time.perf_counter() - started
        started = time.perf_counter()
        table = dataset.read(location, REPORT_COLUMNS)
        bins = dataset.reference_bins(location)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        report = Path(tmp) / "report.html"
        histograms = partial(dataset.read_devices, location, columns=distributions.COLUMNS)  # as the command
        alerts = write_report(
            table, AlertsSection(), report, now=T0 + 60 * args.intervals, bins=bins, histograms=histograms
        )
        render_s = time.perf_counter() - started
        result = {
            "devices": args.devices,
            "summaries": rows,
            "build_s": round(built_s, 2),
            "read_s": round(read_s, 2),
            "render_s": round(render_s, 2),
            "total_s": round(read_s + render_s, 2),
            "report_bytes": report.stat().st_size,
            "alerts": len(alerts),
            "machine": f"{platform.machine()}, {platform.python_version()}",
        }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
