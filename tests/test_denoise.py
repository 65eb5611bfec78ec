"""White sensor noise found without labels and smoothed before the model (`edge_ttt.adapt.denoise`),
and its place in input alignment."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.adapt.channel_references import autocovariances, class_references
from edge_ttt.adapt.denoise import (
    LENGTHS,
    SHARES,
    WhiteNoise,
    moving_average,
    noise_variance,
    source_share,
)
from edge_ttt.adapt.guard import InputLimits, check_windows
from edge_ttt.adapt.input_alignment import InputAlignment, InputOptions


def smooth(n: int, channels: int = 3, length: int = 128, rho: float = 0.98, seed: int = 0) -> np.ndarray:
    """Windows of a first-order autoregression of unit variance: smooth motion as the estimator models it."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, channels, length))
    x[:, :, 0] = rng.standard_normal((n, channels))
    for t in range(1, length):
        x[:, :, t] = rho * x[:, :, t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal((n, channels))
    return x


def noisy(x: np.ndarray, std: np.ndarray | float, seed: int = 1) -> np.ndarray:
    return x + np.random.default_rng(seed).standard_normal(x.shape) * np.reshape(std, (1, -1, 1))


def learnt(x: np.ndarray, baseline: float = 0.0) -> WhiteNoise:
    stage = WhiteNoise(baseline=np.full(x.shape[1], baseline))
    stage.update(x)
    return stage


@pytest.mark.parametrize("std", [0.3, 0.7, 1.5])
def test_the_noise_variance_is_found_within_a_tenth(std: float):
    stage = learnt(noisy(smooth(200), std))
    assert np.allclose(stage.variance, std**2, rtol=0.1)


def test_a_clean_smooth_stream_is_left_as_it_is_bit_for_bit():
    x = smooth(100).astype(np.float32)
    stage = learnt(x)
    assert np.all(stage.variance < 0.01)
    assert stage.apply(x) is x


def test_the_estimate_ignores_gain_offset_and_activity():
    x = noisy(smooth(200), 0.5)
    base = learnt(x).variance
    assert np.allclose(learnt(4.0 * x + 7.0).variance, 16.0 * base)
    # a vigorous activity (three times the motion) and a calm one (a tenth): the same sensor noise
    motion = smooth(200, seed=5)
    for scale in (3.0, 0.1):
        assert np.allclose(learnt(noisy(scale * motion, 0.5)).variance, 0.25, rtol=0.15)


def test_a_rough_signal_is_not_all_noise():
    """Lag-1 or lag-2 autocovariance not positive: the lag-1 one bounds the signal's variance."""
    g = np.array([[1.0], [0.6], [-0.1]])
    assert noise_variance(g).tolist() == [pytest.approx(0.4)]
    assert noise_variance(np.array([[1.0], [-0.5], [0.2]])).tolist() == [1.0]


def test_lengths_follow_each_window_and_channel_noise_share():
    motion = smooth(300, channels=3)
    x = noisy(motion, np.array([0.0, 0.6, 2.0]))  # shares about 0, 0.26, 0.8
    stage = learnt(x)
    lengths = stage.lengths(x)
    assert (lengths[:, 0] == LENGTHS[0]).mean() > 0.95
    assert np.median(lengths[:, 1]) == LENGTHS[1]
    assert (lengths[:, 2] == LENGTHS[2]).mean() > 0.95
    share = stage.variance / x.var(axis=2)
    assert np.array_equal(lengths == LENGTHS[2], share >= SHARES[1])
    assert np.array_equal(lengths == LENGTHS[0], share < SHARES[0])


def test_only_the_noisy_channel_is_smoothed_and_the_noise_mostly_goes():
    motion = smooth(100, channels=2)
    x = noisy(motion, np.array([0.0, 1.5])).astype(np.float32)
    stage = learnt(x)
    out = stage.apply(x)
    assert out.dtype == np.float32 and out is not x
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    before = np.mean((x[:, 1] - motion[:, 1]) ** 2)
    after = np.mean((out[:, 1] - motion[:, 1]) ** 2)
    assert after < 0.35 * before
    lengths = stage.lengths(x)[:, 1]
    assert (lengths == LENGTHS[2]).mean() > 0.9
    for length in LENGTHS[1:]:
        rows = lengths == length
        expected = moving_average(x[rows][:, 1:], length)[:, 0]
        np.testing.assert_allclose(out[rows, 1], expected, rtol=1e-5, atol=1e-5)


def test_the_moving_average_keeps_a_constant_and_the_edges():
    x = np.full((2, 1, 16), 3.0)
    assert np.allclose(moving_average(x, 5), 3.0)
    ramp = np.arange(8, dtype=np.float64)[None, None, :]
    assert moving_average(ramp, 3)[0, 0].tolist() == pytest.approx([1 / 3, 1, 2, 3, 4, 5, 6, 20 / 3])


def test_windows_that_are_not_finite_do_not_break_apply():
    x = noisy(smooth(20), 1.0).astype(np.float32)
    stage = learnt(x)
    x[3, 1, 10] = np.nan
    x[4, 0, :] = np.inf
    out = stage.apply(x)
    assert np.isfinite(out[[0, 1, 2, 5]]).all()


def test_state_round_trip_and_a_state_of_other_channels_refused():
    stage = learnt(noisy(smooth(30), 1.0))
    other = WhiteNoise(baseline=np.zeros(3))
    other.load_state(stage.state())
    assert np.array_equal(other.variance, stage.variance) and other.windows == stage.windows == 30
    with pytest.raises(ValueError, match=r"expected \[3, 2\]"):
        WhiteNoise(baseline=np.zeros(2)).load_state(stage.state())


def test_only_noise_beyond_the_source_share_counts():
    """A model trained on noisy windows expects their noise: the source's share is the baseline."""
    motion = smooth(300, channels=1)
    x = noisy(motion, 1.0)  # half the variance is noise
    share = float(source_share(x)[0])  # about 2/3: a window holds less of the slow motion's variance
    assert 0.3 < share < 0.8
    assert not learnt(x, baseline=share).variance.any()  # as noisy as the source: nothing
    assert learnt(x, baseline=0.0).variance[0] == pytest.approx(1.0, rel=0.1)
    louder = noisy(motion, 2.0)  # noise variance 4, less the source's share of the stream's variance
    expected = 4.0 - share * louder.var(axis=2).mean()
    assert learnt(louder, baseline=share).variance[0] == pytest.approx(expected, rel=0.25)


def test_source_share_of_smooth_and_of_white_windows():
    assert np.all(source_share(smooth(100)) < 0.02)
    assert np.all(source_share(np.random.default_rng(2).standard_normal((100, 3, 128))) > 0.95)
    assert source_share(np.zeros((4, 2, 16))).tolist() == [0.0, 0.0]  # flat: no variance, no share


def test_autocovariances_are_about_the_window_mean():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    assert np.allclose(autocovariances(x + 100.0, (0, 1, 2)), autocovariances(x, (0, 1, 2)))


# --- in input alignment -------------------------------------------------------------------------

BARE = InputOptions(momentum=1.0, warmup_windows=0.0, reliable_quantile=1.0, offset_floor=0.0, learn_every=1)


def stage_for(options: InputOptions = BARE, noise_share: np.ndarray | None = None) -> InputAlignment:
    source = smooth(50, seed=9)
    share = source_share(source) if noise_share is None else noise_share
    refs = class_references(source, np.zeros(50, int), 1)
    return InputAlignment(options, refs, np.ones(3), noise_share=share)


def test_alignment_smooths_first_and_the_guard_checks_what_the_model_sees():
    stage = stage_for()
    x = noisy(smooth(40, seed=3), 1.5).astype(np.float32)
    for i in range(len(x)):
        stage.update(x[i : i + 1], np.ones((1, 1)), np.zeros(1))
    seen = stage.apply(x)
    assert stage.smoothed and seen.var() < 0.6 * x.var()
    assert stage.aligned_bounds(x.max(axis=2), x.min(axis=2)) is None  # the guard looks at `seen` itself
    limits = InputLimits(mean=np.zeros(3), std=np.ones(3), range_sigmas=50.0, flat_ratio=1e-3)
    assert check_windows(seen, limits).valid.all()


def test_alignment_without_denoise_leaves_noise_and_saves_no_noise_state():
    stage = stage_for(InputOptions(**{**BARE.__dict__, "denoise": False}))
    x = noisy(smooth(10, seed=3), 1.5).astype(np.float32)
    stage.update(x, np.ones((10, 1)), np.zeros(10))
    assert stage.noise is None and not any(k.startswith("noise/") for k in stage.state())
    assert not stage.smoothed


def test_no_smoothing_without_the_source_share_from_the_bundle():
    """A bundle exported before the share: the model may have been trained on what reads as noise."""
    source = smooth(50, seed=9)
    stage = InputAlignment(BARE, class_references(source, np.zeros(50, int), 1), np.ones(3))
    x = noisy(smooth(10, seed=3), 1.5).astype(np.float32)
    stage.update(x, np.ones((10, 1)), np.zeros(10))
    stage.apply(x)
    assert stage.noise is None and not stage.smoothed


def test_a_state_saved_before_denoise_restores_with_the_noise_afresh():
    stage = stage_for()
    x = noisy(smooth(10, seed=3), 1.5)
    stage.update(x, np.ones((10, 1)), np.zeros(10))
    saved = {k: v for k, v in stage.state().items() if not k.startswith("noise/")}
    again = stage_for()
    again.update(x, np.ones((10, 1)), np.zeros(10))
    again.load_state(saved)
    assert again.noise.windows == 0 and not again.noise.variance.any()
    assert np.array_equal(again.offset, stage.offset)


# --- the source's share, from export to the manifest ---------------------------------------------


def test_export_writes_the_source_share_and_the_manifest_checks_it(bundle_dir):
    import json

    from edge_ttt.manifest import Manifest

    doc = json.loads((bundle_dir / "manifest.json").read_text())
    share = Manifest.model_validate(doc).reference.class_channels.noise_share
    assert len(share) == 6 and all(0.0 <= v <= 1.0 for v in share)
    channels = doc["reference"]["class_channels"]
    bad = {
        "one short": (
            share[:-1],
            r"class_channels needs one offset_spread, log_gain_spread, noise_share a channel",
        ),
        "above 1": ([1.5] * 6, r"noise_share\.0\n  Input should be less than or equal to 1"),
        "below 0": ([-0.1] * 6, r"noise_share\.0\n  Input should be greater than or equal to 0"),
    }
    for value, message in bad.values():
        channels["noise_share"] = value
        with pytest.raises(ValueError, match=message):
            Manifest.model_validate(doc)
    del channels["noise_share"]  # a bundle exported before it still loads (and smooths nothing)
    assert Manifest.model_validate(doc).reference.class_channels.noise_share is None


def test_a_checkpoint_without_the_source_share_is_trained_again(tmp_path):
    pytest.importorskip("torch")
    from export.checkpoint import save_checkpoint
    from export.train import missing_reference
    from tests.model_factory import source_model

    src = source_model("cnn-bn")
    save_checkpoint(tmp_path / "now.pt", src)
    assert missing_reference(tmp_path / "now.pt") == []
    del src.reference["class_channels"]["noise_share"]
    save_checkpoint(tmp_path / "before.pt", src)
    assert missing_reference(tmp_path / "before.pt") == ["class_channels.noise_share"]
    del src.reference["stay"]  # and one from before the estimates' stay rates
    save_checkpoint(tmp_path / "older.pt", src)
    assert missing_reference(tmp_path / "older.pt") == ["stay", "class_channels.noise_share"]
