"""Windowing rules: closed-form counts, gaps, chunk invariance, reset, and live-stream ordering."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_ttt.recordlog import RecordedLog
from edge_ttt.stream.window import WindowBatch, Windower, windows_from_log

P = 20_000_000  # 50 Hz
T0 = 1_704_067_200_000_000_000


def stream(n: int, channels: int = 2, t0: int = T0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = t0 + np.arange(n, dtype=np.int64) * P
    values = np.arange(n * channels, dtype=np.float32).reshape(n, channels)
    label = (np.arange(n) % 5).astype(np.int32)
    return t, values, label


def reference(t, values, label, length, hop, period):
    """Per-sample loop straight from the rules in docs/log-format.md: the oracle for the fast path."""
    xs, ends, labels, gaps = [], [], [], 0
    run: list[int] = []
    for i in range(len(t)):
        if run:
            step = t[i] - t[run[-1]]
            if step <= 0 or step > 2 * period:
                gaps += 1
                run = []
        run.append(i)
        offset = len(run) - 1
        if offset >= length - 1 and (offset - (length - 1)) % hop == 0:
            rows = run[-length:]
            xs.append(values[rows].T)
            ends.append(t[i])
            labels.append(-1 if label is None else label[i])
    return xs, ends, labels, gaps


def assert_batches_equal(a: WindowBatch, b: WindowBatch) -> None:
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.t_end_ns, b.t_end_ns)
    np.testing.assert_array_equal(a.label, b.label)


@pytest.mark.parametrize(
    ("n", "length", "hop"),
    [
        (0, 4, 2),
        (3, 4, 2),
        (4, 4, 2),
        (5, 4, 2),
        (10, 4, 2),
        (11, 4, 3),
        (100, 1, 1),
        (100, 7, 20),
        (9, 10, 1),
    ],
)
def test_closed_form_window_count(n: int, length: int, hop: int) -> None:
    t, values, label = stream(n)
    w = Windower(length, hop, P, 2)
    batch = w.push(t, values, label)
    expected = (n - length) // hop + 1 if n >= length else 0
    assert len(batch) == expected
    assert batch.x.shape == (expected, 2, length) and batch.x.dtype == np.float32
    assert batch.t_end_ns.dtype == np.int64 and batch.label.dtype == np.int32
    assert w.gaps == 0


def test_windows_are_channel_first_and_labelled_by_last_sample() -> None:
    t, values, label = stream(10)
    batch = Windower(4, 3, P, 2).push(t, values, label)
    for k in range(len(batch)):
        rows = slice(3 * k, 3 * k + 4)
        np.testing.assert_array_equal(batch.x[k], values[rows].T)
        assert batch.t_end_ns[k] == t[3 * k + 3]
        assert batch.label[k] == label[3 * k + 3]


def test_no_labels_gives_minus_one() -> None:
    t, values, _ = stream(8)
    batch = Windower(4, 4, P, 2).push(t, values)
    assert batch.label.tolist() == [-1, -1]


def test_gap_splits_runs_and_is_counted() -> None:
    t, values, label = stream(20)
    t[10:] += 5 * P  # a 6-period step between sample 9 and 10
    w = Windower(4, 2, P, 2)
    batch = w.push(t, values, label)
    assert w.gaps == 1
    assert len(batch) == 2 * ((10 - 4) // 2 + 1)
    # No window mixes both sides of the gap (values encode the row: row i holds 2i, 2i + 1).
    first_rows = (batch.x[:, 0, 0] // 2).astype(int)
    last_rows = (batch.x[:, 0, -1] // 2).astype(int)
    assert np.all((first_rows < 10) == (last_rows < 10))


def test_two_periods_continue_a_run_three_do_not() -> None:
    t, values, _ = stream(8)
    t[4:] += P  # step of exactly 2 periods (one dropped sample)
    w = Windower(8, 1, P, 2)
    assert len(w.push(t, values)) == 1 and w.gaps == 0

    t[4:] += 1  # now just over 2 periods
    w = Windower(8, 1, P, 2)
    assert len(w.push(t, values)) == 0 and w.gaps == 1


@pytest.mark.parametrize("step", [0, -P])
def test_duplicate_or_backwards_time_ends_the_run(step: int) -> None:
    t, values, _ = stream(8)
    t[4:] += step - P
    w = Windower(4, 1, P, 2)
    batch = w.push(t, values)
    assert w.gaps == 1
    assert len(batch) == 2  # one window per 4-sample run


def test_gap_between_chunks_is_detected() -> None:
    t, values, _ = stream(12)
    w = Windower(4, 1, P, 2)
    w.push(t[:6], values[:6])
    t2 = t[6:] + 10 * P
    batch = w.push(t2, values[6:])
    assert w.gaps == 1
    assert len(batch) == 3 and batch.t_end_ns[0] == t2[3]


def test_gap_detected_after_skipped_samples_when_hop_exceeds_length() -> None:
    # With hop > length nothing is buffered between windows, yet the last time is still tracked.
    t, values, _ = stream(6)
    w = Windower(2, 5, P, 2)
    w.push(t[:4], values[:4])
    w.push(t[4:] + 10 * P, values[4:])
    assert w.gaps == 1


def test_reset_ends_the_run_without_counting_a_gap() -> None:
    t, values, _ = stream(6)
    w = Windower(4, 1, P, 2)
    assert len(w.push(t[:3], values[:3])) == 0
    w.reset()
    assert len(w.push(t[3:], values[3:])) == 0  # 3 + 3 samples, but never 4 in one run
    assert w.gaps == 0
    assert len(w.push(np.array([t[5] + P]), values[:1])) == 1  # the run begun after reset continues


def test_buffer_stays_bounded() -> None:
    n, length = 3000, 16
    t, values, label = stream(n)
    w = Windower(length, 5, P, 2)
    total = 0
    for i in range(n):
        total += len(w.push(t[i : i + 1], values[i : i + 1], label[i : i + 1]))
        assert len(w._buf_t) < length
    assert total == (n - length) // 5 + 1


def test_empty_push() -> None:
    w = Windower(4, 2, P, 3)
    batch = w.push(np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.float32))
    assert len(batch) == 0 and batch.x.shape == (0, 3, 4)


@pytest.mark.parametrize(
    "args",
    [(0, 1, P, 2), (4, 0, P, 2), (4, 1, 0, 2), (4, 1, -P, 2), (4, 1, P, 0), (4.0, 1, P, 2), (True, 1, P, 2)],
)
def test_constructor_validates(args: tuple) -> None:
    with pytest.raises(ValueError):
        Windower(*args)


def test_push_validates_shapes() -> None:
    w = Windower(4, 2, P, 2)
    with pytest.raises(ValueError):
        w.push(np.zeros(3, dtype=np.int64), np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        w.push(np.zeros(3, dtype=np.float64), np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        w.push(np.zeros(3, dtype=np.int64), np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.int32))


def test_concat() -> None:
    t, values, label = stream(12)
    a = Windower(4, 4, P, 2).push(t[:6], values[:6], label[:6])
    b = Windower(4, 4, P, 2).push(t[6:], values[6:], label[6:])
    both = WindowBatch.concat([a, b])
    assert len(both) == len(a) + len(b)
    assert len(WindowBatch.concat([], channels=2, length=4)) == 0
    with pytest.raises(ValueError):
        WindowBatch.concat([])
    with pytest.raises(ValueError):
        WindowBatch.concat([a, WindowBatch.empty(3, 4)])
    with pytest.raises(ValueError):
        WindowBatch.concat([a], length=5)


# Steps in periods: mostly regular (runs must outlive several windows for the buffer to matter),
# sometimes a dropped sample, gaps, duplicates and reversals.
STEPS = st.sampled_from([1] * 30 + [2, 2, 3, 50, 0, -1])


@settings(max_examples=200, deadline=None, database=None)  # hermetic: no .hypothesis dir
@given(
    steps=st.lists(STEPS, min_size=0, max_size=200),
    length=st.integers(1, 12),
    hop=st.integers(1, 15),
    cut_fractions=st.lists(st.floats(0, 1), max_size=12),
    with_label=st.booleans(),
)
def test_chunked_push_equals_one_push_and_the_reference(
    steps, length, hop, cut_fractions, with_label
) -> None:
    n = len(steps)
    t = T0 + np.cumsum(np.asarray(steps, dtype=np.int64) * P)
    values = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    label = (np.arange(n) % 7).astype(np.int32) if with_label else None

    whole = Windower(length, hop, P, 3)
    once = whole.push(t, values, label)

    chunked = Windower(length, hop, P, 3)
    bounds = [0, *sorted(int(f * n) for f in cut_fractions), n]
    parts = [
        chunked.push(t[a:b], values[a:b], None if label is None else label[a:b])
        for a, b in itertools.pairwise(bounds)
    ]
    pieces = WindowBatch.concat(parts, channels=3, length=length)
    assert_batches_equal(once, pieces)
    assert whole.gaps == chunked.gaps

    xs, ends, labels, gaps = reference(t, values, label, length, hop, P)
    assert gaps == whole.gaps
    assert once.t_end_ns.tolist() == ends
    assert once.label.tolist() == labels
    if xs:
        np.testing.assert_array_equal(once.x, np.stack(xs))
    else:
        assert len(once) == 0


def make_two_device_log() -> RecordedLog:
    t_a, v_a, l_a = stream(10, t0=T0)
    t_b, v_b, l_b = stream(9, t0=T0 + P // 2)  # b's samples fall between a's
    t_c, v_c, l_c = stream(10, t0=T0)  # c ties with a
    return RecordedLog(
        # Deliberately not sorted: windows_from_log must not depend on row order.
        device_id=np.array(["c"] * 10 + ["b"] * 9 + ["a"] * 10, dtype=object),
        t_ns=np.concatenate([t_c, t_b, t_a[::-1]]),
        values=np.concatenate([v_c + 1000, v_b + 500, v_a[::-1]]),
        label=np.concatenate([l_c, l_b, l_a[::-1]]),
        channels=("x", "y"),
        sample_rate_hz=50.0,
        class_names=None,
    )


def test_windows_from_log_is_live_stream_ordered() -> None:
    log = make_two_device_log()
    batch, devices = windows_from_log(log, length=4, hop=2)
    assert len(batch) == len(devices) == 4 + 3 + 4
    keys = list(zip(batch.t_end_ns.tolist(), devices.tolist(), strict=True))
    assert keys == sorted(keys)
    assert devices[:3].tolist() == ["a", "c", "b"]  # a and c tie on time; ids break the tie

    # Same windows as pushing each device alone.
    for device in ("a", "b", "c"):
        sub = log.select(log.device_id == device)
        order = np.argsort(sub.t_ns)
        alone = Windower(4, 2, log.period_ns, 2).push(sub.t_ns[order], sub.values[order], sub.label[order])
        mine = devices == device
        np.testing.assert_array_equal(batch.x[mine], alone.x)
        np.testing.assert_array_equal(batch.t_end_ns[mine], alone.t_end_ns)
        np.testing.assert_array_equal(batch.label[mine], alone.label)


def test_windows_from_log_empty_and_unlabelled() -> None:
    log = make_two_device_log()
    empty, devices = windows_from_log(log.select(np.zeros(len(log), dtype=bool)), 4, 2)
    assert len(empty) == 0 and empty.x.shape == (0, 2, 4) and len(devices) == 0

    unlabelled = RecordedLog(
        device_id=log.device_id,
        t_ns=log.t_ns,
        values=log.values,
        label=None,
        channels=log.channels,
        sample_rate_hz=log.sample_rate_hz,
        class_names=None,
    )
    batch, _ = windows_from_log(unlabelled, 4, 2)
    assert len(batch) == 11 and np.all(batch.label == -1)
