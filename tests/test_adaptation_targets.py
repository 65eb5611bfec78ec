"""The adaptation benchmark's targets and report: pure functions of results, tested on hand-made ones."""

from __future__ import annotations

from benchmarks.adaptation import (
    FAIL,
    NO_FALLBACK_COLUMN,
    NOT_MEASURED,
    PASS,
    TORCH_TENT,
    evaluate_targets,
    markdown,
)
from benchmarks.adaptation.targets import corrupted_names, deployment_names
from firmware_sim.corruptions import CORRUPTIONS, DEPLOYMENT_SHIFTS, SHIFTS


def results(cells: dict[tuple[str, str, str, int, str], float], severity: int = 4) -> list[dict]:
    """Hand-made results: (model, corruption, order, batch, policy) -> accuracy in %."""
    return [
        {
            "model": m,
            "corruption": c,
            "order": o,
            "batch_size": b,
            "policy": p,
            "severity": severity,
            "accuracy": acc / 100,
        }
        for (m, c, o, b, p), acc in cells.items()
    ]


def grid(policies: dict[str, float]) -> dict:
    """Every cnn-bn cell for clean, gain and noise with the given accuracy per policy."""
    return {
        ("cnn-bn", c, o, b, p): acc
        for c in ("clean", "gain", "noise")
        for o in ("recorded", "shuffled")
        for b in (1, 16)
        for p, acc in policies.items()
    }


def test_targets_pass():
    cells = grid({"source": 70.0, "tent": 60.0, TORCH_TENT: 60.5, "steady": 70.0})
    cells[("cnn-bn", "gain", "recorded", 1, "steady")] = 69.2  # 0.8 below source: allowed off clean
    # Tent parity names two orders: the class-sorted stress test is reported, not judged there.
    cells.update(
        {("cnn-bn", "clean", "class-sorted", 1, p): a for p, a in (("tent", 40.0), (TORCH_TENT, 70.0))}
    )
    targets = evaluate_targets(results(cells), default="steady")
    assert [t.status for t in targets] == [PASS, NOT_MEASURED, PASS] + [NOT_MEASURED] * 7, targets
    assert "steady 69.6 vs tent 60.0" in targets[0].details[0]
    # Issue #18's targets need every shift in both device orders: this grid has three shifts.
    assert targets[1].details[0] == "6 of 6 cells within the target"
    assert targets[1].details[1].startswith("not run: recorded: bias, rotation")


def test_targets_fail_and_name_the_cells():
    cells = grid({"source": 70.0, "tent": 60.0, TORCH_TENT: 60.0, "steady": 70.0})
    cells[("cnn-bn", "clean", "shuffled", 16, "steady")] = 69.9  # below source on clean data
    cells[("cnn-bn", "noise", "recorded", 1, "steady")] = 50.0  # far below: target 1 fails too
    cells[("cnn-bn", "gain", "recorded", 1, "steady")] = 50.0
    cells[("cnn-bn", "noise", "shuffled", 16, "tent")] = 90.0  # ORT tent parity broken
    targets = evaluate_targets(results(cells), default="steady")
    assert [t.status for t in targets][:3] == [FAIL, FAIL, FAIL]
    assert targets[0].details == ["steady 50.0 vs tent 75.0"]
    # Target 2 judges batch size 1 only; a failure fails it even before every cell was run.
    assert targets[1].details[:3] == [
        "4 of 6 cells within the target",
        "cnn-bn gain recorded b=1: steady 50.0 vs source 70.0 (-20.00)",
        "cnn-bn noise recorded b=1: steady 50.0 vs source 70.0 (-20.00)",
    ]
    assert targets[2].details[1:] == ["cnn-bn noise shuffled b=16: tent 90.0 vs torch-tent 60.0 (+30.00)"]


def test_tent_parity_leaves_out_cells_where_the_input_guard_refused_windows():
    """Parity checks the tent policy against torch's Tent on the same windows; where the engine's
    guard kept windows from every policy the two saw different streams: listed, not judged."""
    cells = results(grid({"tent": 60.0, TORCH_TENT: 60.0}))
    for r in cells:
        r["counters"] = {"rejected_invalid": 0}
    guarded = next(r for r in cells if r["policy"] == "tent" and r["corruption"] == "noise")
    guarded["accuracy"], guarded["counters"]["rejected_invalid"] = 0.9, 1915
    target = evaluate_targets(cells, default=None)[2]
    assert target.status == PASS
    assert target.details[-1] == (
        f"not judged: cnn-bn noise {guarded['order']} b={guarded['batch_size']}: the input guard "
        "refused 1915 windows that torch-tent adapted on"
    )
    guarded["counters"]["rejected_invalid"] = 0  # the same gap on the same windows fails
    assert evaluate_targets(cells, default=None)[2].status == FAIL


def test_targets_not_measured_without_the_policies():
    targets = evaluate_targets(results(grid({"source": 70.0, TORCH_TENT: 60.0})), default=None)
    assert [t.status for t in targets] == [NOT_MEASURED] * 10
    assert "DEFAULT_POLICY" in targets[0].details[0]


def aux_grid(ttt: float, episodic: float, tent: float) -> dict:
    """cnn-bn-ttt cells for source (70), ttt and ttt-episodic, and cnn-bn cells for tent."""
    cells = {}
    for c in ("clean", "gain", "noise"):
        for o in ("recorded", "shuffled"):
            for b in (1, 16):
                cells.update({("cnn-bn-ttt", c, o, b, p): a for p, a in (("source", 70.0), ("ttt", ttt))})
                cells[("cnn-bn-ttt", c, o, b, "ttt-episodic")] = episodic
                cells[("cnn-bn", c, o, b, "tent")] = tent
    return cells


def test_auxiliary_targets_compare_with_source_of_their_model_and_tent_of_the_plain_one():
    cells = aux_grid(ttt=70.5, episodic=69.5, tent=60.0)
    cells[("cnn-bn-ttt", "gain", "recorded", 1, "ttt-episodic")] = 68.0  # 2 below source at b=1
    cells[("cnn-bn-ttt", "noise", "shuffled", 16, "ttt-episodic")] = 40.0  # off b=1 recorded: not judged
    targets = evaluate_targets(results(cells), default=None)
    online, episodic = targets[3], targets[4]
    assert online.status == PASS and online.details[0] == "3 of 3 cells within 1 point of source"
    assert "mean over corruptions, recorded b=1: ttt 70.5 vs tent 60.0" in online.details
    assert episodic.status == FAIL
    assert episodic.details[:2] == [
        "2 of 3 cells within 1 point of source",
        "cnn-bn-ttt gain recorded b=1: ttt-episodic 68.0 vs source 70.0 (-2.00)",
    ]
    behind = evaluate_targets(results(aux_grid(ttt=70.5, episodic=70.0, tent=71.0)), default=None)[3]
    assert behind.status == FAIL
    assert "not above tent: mean over corruptions, recorded b=1: ttt 70.5 vs tent 71.0" in behind.details


def test_auxiliary_targets_judge_the_label_correlated_stream_and_list_the_others():
    cells = aux_grid(ttt=70.5, episodic=69.5, tent=60.0)
    for c in ("gain", "noise"):  # tent ahead on shuffled batches of 16 only
        cells[("cnn-bn", c, "shuffled", 16, "tent")] = 72.0
    online = evaluate_targets(results(cells), default=None)[3]
    assert online.status == PASS
    assert online.details[1] == "mean over corruptions, recorded b=1: ttt 70.5 vs tent 60.0"
    assert (
        "not judged: mean over corruptions, shuffled b=16: ttt 70.5 vs tent 72.0 (not above tent)"
        in online.details
    )
    assert "not judged: mean over corruptions, recorded b=16: ttt 70.5 vs tent 60.0" in online.details


def shift_grid(policies: dict[str, float], orders: tuple[str, ...] = ("recorded", "class-sorted")) -> dict:
    """Issue #18's cells: cnn-bn, batch size 1, every shift in the given orders."""
    return {("cnn-bn", c, o, 1, p): acc for c in SHIFTS for o in orders for p, acc in policies.items()}


def test_corruption_means_keep_to_the_original_corruptions():
    acc = shift_grid({"source": 70.0})
    assert corrupted_names(acc, "cnn-bn") == [n for n in CORRUPTIONS if n != "clean"]
    assert deployment_names(acc, "cnn-bn") == list(DEPLOYMENT_SHIFTS)


def test_no_harm_covers_every_shift_in_both_device_orders():
    cells = shift_grid({"source": 70.0, "steady": 69.1})
    cells.update({(*key[:4], "steady"): 70.0 for key in cells if key[1] == "clean"})
    targets = evaluate_targets(results(cells), default="steady")
    assert targets[1].status == PASS and targets[1].details == [
        f"{2 * len(SHIFTS)} of {2 * len(SHIFTS)} cells within the target"
    ]
    # Another severity is not the target's: a harmful severity-3 cell changes nothing.
    worse = results({("cnn-bn", "wrist", "recorded", 1, "steady"): 10.0}, severity=3)
    assert evaluate_targets(results(cells) + worse, default="steady")[1].status == PASS
    # Shuffled is judged when it was run.
    cells[("cnn-bn", "mount", "shuffled", 1, "source")] = 60.0
    cells[("cnn-bn", "mount", "shuffled", 1, "steady")] = 58.5
    cells[("cnn-bn", "clean", "class-sorted", 1, "steady")] = 69.9
    failed = evaluate_targets(results(cells), default="steady")[1]
    assert failed.status == FAIL
    assert failed.details[1:] == [
        "cnn-bn clean class-sorted b=1: steady 69.9 vs source 70.0 (-0.10)",
        "cnn-bn mount shuffled b=1: steady 58.5 vs source 60.0 (-1.50)",
    ]
    del cells[("cnn-bn", "creep", "class-sorted", 1, "steady")]
    cells[("cnn-bn", "clean", "class-sorted", 1, "steady")] = 70.0
    cells[("cnn-bn", "mount", "shuffled", 1, "steady")] = 60.0
    missing = evaluate_targets(results(cells), default="steady")[1]
    assert missing.status == NOT_MEASURED and missing.details[-1] == "not run: class-sorted: creep"


def test_gain_over_source_is_the_mean_over_the_seven_original_corruptions():
    cells = shift_grid({"source": 60.0, "steady": 71.0})
    cells.update({key: 0.0 for key in cells if key[1] in DEPLOYMENT_SHIFTS and key[4] == "steady"})
    gain = evaluate_targets(results(cells), default="steady")[5]
    assert gain.status == PASS and gain.details == ["steady 71.0 vs source 60.0: +11.0"]
    cells.update({key: 70.8 for key in cells if key[2] == "recorded" and key[4] == "steady"})
    assert evaluate_targets(results(cells), default="steady")[5].details == [
        "steady 70.8 vs source 60.0: +10.8"
    ]
    assert evaluate_targets(results(cells), default="steady")[5].status == FAIL
    del cells[("cnn-bn", "drift", "recorded", 1, "steady")]
    assert evaluate_targets(results(cells), default="steady")[5].status == NOT_MEASURED


def norm_free_grid(steady: float) -> dict:
    """cnn-gn and tcn-ln cells of every shift in both device orders: source 60, steady `steady`."""
    cells = {}
    for model in ("cnn-gn", "tcn-ln"):
        for (_, c, o, b, p), a in shift_grid({"source": 60.0, "steady": steady}).items():
            cells[(model, c, o, b, p)] = a
    return cells


def test_models_without_batch_norm_need_the_gain_and_no_cell_below_source():
    cells = norm_free_grid(68.0)
    target = evaluate_targets(results(cells), default="steady")[7]
    assert target.status == PASS
    assert target.details == [
        "cnn-gn: steady 68.0 vs source 60.0: +8.0",
        "tcn-ln: steady 68.0 vs source 60.0: +8.0",
    ]
    cells[("tcn-ln", "mount", "class-sorted", 1, "steady")] = 58.9
    failed = evaluate_targets(results(cells), default="steady")[7]
    assert failed.status == FAIL
    assert failed.details[-1] == "tcn-ln mount class-sorted b=1: steady 58.9 vs source 60.0 (-1.10)"
    low = evaluate_targets(results(norm_free_grid(67.9)), default="steady")[7]
    assert low.status == FAIL and "cnn-gn: gain +7.9 below +8.0" in low.details
    del cells[("cnn-gn", "rate", "recorded", 1, "steady")]
    assert evaluate_targets(results(cells), default="steady")[7].details[-1] == "not run in full: cnn-gn"


def test_unit_error_is_judged_on_every_model_the_default_ran_on():
    cells = {
        (m, "unit", o, 1, p): a
        for m in ("cnn-bn", "cnn-gn")
        for o in ("recorded", "class-sorted")
        for p, a in (("source", 20.0), ("steady", 75.0))
    }
    assert evaluate_targets(results(cells), default="steady")[8].status == PASS
    cells[("cnn-bn", "unit", "class-sorted", 1, "steady")] = 69.9
    target = evaluate_targets(results(cells), default="steady")[8]
    assert target.status == FAIL and target.details[0] == "3 of 4 cells at or above"
    assert (
        evaluate_targets(results({("cnn-bn", "gain", "recorded", 1, "steady"): 80.0}), "steady")[8].status
        == NOT_MEASURED
    )


def test_the_default_is_judged_against_itself_without_alignment_on_the_batch_norm_model():
    cells = {
        ("cnn-bn", c, o, 1, p): 70.0
        for c in ("bias", "mount")
        for o in ("recorded", "class-sorted")
        for p in ("steady", "steady-unaligned")
    }
    cells[("cnn-bn", "mount", "recorded", 1, "steady")] = 90.0  # gains are fine
    cells[("cnn-bn", "bias", "class-sorted", 1, "steady")] = 69.5  # 0.5 below: allowed
    assert evaluate_targets(results(cells), default="steady")[9].status == PASS
    cells[("cnn-bn", "bias", "class-sorted", 1, "steady")] = 69.4
    target = evaluate_targets(results(cells), default="steady")[9]
    assert target.status == FAIL
    assert target.details[1] == "cnn-bn bias class-sorted b=1: steady 69.4 vs steady-unaligned 70.0 (-0.60)"


def device_results(served_errors: tuple[float, float], orders=("recorded", "class-sorted")) -> list[dict]:
    """steady and source cells for every shift: steady serves 80% on both devices with the given
    estimate errors (points); the source cells measure 60% and estimate themselves at 70%."""
    out = results(shift_grid({"source": 60.0, "steady": 80.0}, orders))
    for r in out:
        steady = r["policy"] == "steady"
        r["devices"] = [
            {
                "device": device,
                "windows": 10,
                "accuracy": 0.8 if steady else 0.6,
                "estimated_accuracy": 0.8 + error / 100 if steady else 0.7,
                "source_estimated_accuracy": None,
            }
            for device, error in zip(("dev0", "dev1"), served_errors, strict=True)
        ]
    return out


def test_estimate_error_is_judged_per_stream_and_device():
    target = evaluate_targets(device_results((4.0, -6.0)), default="steady")[6]
    streams = 2 * len(SHIFTS)
    assert target.status == PASS
    assert target.details[0] == (
        f"MAE 5.00 points over {2 * streams} (stream, device) pairs of {streams} streams; "
        "mean signed error (estimated - true) -1.00"
    )
    assert target.details[1:3] == ["recorded: MAE 5.00", "class-sorted: MAE 5.00"]
    assert target.details[3].startswith("largest error: ") and target.details[3].endswith(
        "dev1, estimated 74.0 vs true 80.0"
    )
    assert target.details[-1].endswith(f"MAE 10.00 points over {2 * streams} pairs, mean signed error +10.00")
    failing = evaluate_targets(device_results((4.0, -10.0)), default="steady")[6]
    assert failing.status == FAIL and failing.details[0].startswith("MAE 7.00 points")
    one_order = evaluate_targets(device_results((0.0, 0.0), orders=("recorded",)), default="steady")[6]
    assert one_order.status == NOT_MEASURED


def test_report_marks_the_suites_and_gives_both_means_and_the_estimates():
    cells = shift_grid({"source": 60.0, "steady": 80.0, NO_FALLBACK_COLUMN: 70.0}, orders=("recorded",))
    cells.update({key: 50.0 for key in cells if key[1] in DEPLOYMENT_SHIFTS and key[4] == "source"})
    res = results(cells)
    for r in res:
        r.update(ms_per_window=1.0, estimated_accuracy=0.55 if r["policy"] == "source" else 0.75)
        r["counters"] = {"windows": 100, "fallbacks": 2, "windows_on_source": 25}
    meta = {
        "command": "python -m benchmarks.adaptation",
        "date_utc": "2026-12-03T00:00:00+00:00",
        "git_commit": "abc",
        "git_dirty": False,
        "wall_s": 60.0,
        "jobs": 1,
        "cpus": 2,
        "severity": 4,
        "default_policy": "steady",
        "fallback": {"horizon": 256, "margin": 0.02, "min_windows": 32},
        "models": {"cnn-bn": {"source_val_accuracy": 0.8, "bundle_sha256": "f" * 64}},
    }
    report = markdown(res, evaluate_targets(res, "steady"), meta)
    assert "| order | batch | suite | shift | source | steady | steady-no-fallback |" in report
    assert "| recorded | 1 | original | gain | 60.0 | 80.0 | 70.0 |" in report
    assert "| recorded | 1 | deployment | mount | 50.0 | 80.0 | 70.0 |" in report
    assert "| recorded | 1 | original | **mean over corruptions** | 60.0 | 80.0 | 70.0 |" in report
    assert "| recorded | 1 | deployment | **mean over deployment shifts** | 50.0 | 80.0 | 70.0 |" in report
    assert "mount 180° x (upside down) (every triad turned by)" in report and "wrist (mirrored" in report
    assert "with its fallback to source (horizon 256, margin 0.02, min_windows 32)" in report
    assert "| recorded | 1 | unit | 80.0 | 75.0 | 2 | 25.0 | 50.0 | 55.0 | 70.0 |" in report
