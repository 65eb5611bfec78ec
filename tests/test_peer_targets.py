"""Issue #23's targets: the default against the best peer, and the peers' own claims."""

from __future__ import annotations

from benchmarks.adaptation.peer_targets import best_peer, target_default_vs_peers, target_peer_claims
from benchmarks.adaptation.targets import accuracies
from benchmarks.harness import FAIL, NOT_MEASURED, PASS
from firmware_sim.corruptions import CORRUPTIONS
from tests.test_adaptation_targets import results


def peer_grid(policies: dict[str, float], orders=("recorded", "class-sorted"), batch: int = 1) -> dict:
    return {
        ("cnn-bn", c, o, batch, p): acc for c in CORRUPTIONS for o in orders for p, acc in policies.items()
    }


def test_the_default_passes_level_with_the_best_peer_and_fails_a_cell_over_two_points_behind():
    cells = peer_grid({"steady": 70.0, "note": 69.0, "unmix-tns": 70.0})
    assert best_peer(accuracies(results(cells)), "recorded", 1) == ("unmix-tns", 70.0)
    target = target_default_vs_peers(results(cells), "steady")
    assert target.status == PASS, target.details
    cells[("cnn-bn", "gain", "class-sorted", 1, "steady")] = 67.9  # 2.1 behind unmix-tns
    cells[("cnn-bn", "noise", "class-sorted", 1, "steady")] = 72.2  # the mean stays level
    failed = target_default_vs_peers(results(cells), "steady")
    assert failed.status == FAIL
    assert failed.details[-1] == "gain class-sorted: steady 67.9 vs unmix-tns 70.0 (-2.1)"


def test_the_default_fails_when_its_mean_is_behind_and_is_not_measured_without_peers():
    cells = peer_grid({"steady": 70.0, "note": 70.5})
    assert target_default_vs_peers(results(cells), "steady").status == FAIL
    alone = target_default_vs_peers(results(peer_grid({"steady": 70.0})), "steady")
    assert alone.status == NOT_MEASURED


def test_each_peer_must_beat_tent_on_the_class_sorted_stream_at_batch_16():
    peers = {"tent": 40.0, "note": 55.0, "unmix-tns": 60.0, "rotta": 58.0}
    cells = peer_grid(peers, orders=("class-sorted",), batch=16)
    assert target_peer_claims(results(cells)).status == PASS
    cells.update(peer_grid({"note": 39.0}, orders=("class-sorted",), batch=16))
    claims = target_peer_claims(results(cells))
    assert claims.status == FAIL and claims.details[0] == "note 39.0 vs tent 40.0 (-1.0)"
    assert target_peer_claims(results(peer_grid({"tent": 40.0}))).status == NOT_MEASURED
