"""The per-channel features input alignment compares (a window's mean and lag-1 autocovariance),
and the source references export stores for it: per class, and the spread between the source
devices (`reference.class_channels`). Pure numpy; `edge_ttt.adapt.input_alignment` uses them on
the device, `export.reference` at export."""

from __future__ import annotations

import numpy as np


def autocovariances(x: np.ndarray, lags: tuple[int, ...]) -> np.ndarray:
    """Per lag, window and channel, the autocovariance about the window mean, [lags, n, C].

    >>> autocovariances(np.array([[[1.0, -1.0, 1.0, -1.0]]]), (0, 1, 2))[:, 0, 0].tolist()
    [1.0, -1.0, 1.0]
    """
    x = np.asarray(x, np.float64)
    c = x - x.mean(axis=2, keepdims=True)
    return np.stack([(c[:, :, lag:] * c[:, :, : c.shape[2] - lag]).mean(axis=2) for lag in lags])


def window_features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window and channel: the mean, and the lag-1 autocovariance about that mean.

    >>> m, ac = window_features(np.array([[[1.0, 3.0, 1.0, 3.0]]]))
    >>> float(m[0, 0]), float(ac[0, 0])
    (2.0, -1.0)
    """
    x = np.asarray(x, np.float64)
    return x.mean(axis=2), autocovariances(x, (1,))[0]


def class_references(x: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The source references, [classes, channels] each: the mean of `window_features` over each
    class's windows (a class without windows gets the overall mean). Export stores them."""
    mean, autocov = window_features(np.nan_to_num(x))
    labels = np.asarray(labels)
    pick = [labels == c if np.any(labels == c) else np.ones(len(labels), bool) for c in range(classes)]
    return np.stack([mean[p].mean(axis=0) for p in pick]), np.stack([autocov[p].mean(axis=0) for p in pick])


def device_spread(
    x: np.ndarray, labels: np.ndarray, devices: np.ndarray, references: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the largest |offset| and |log gain| of one device's windows against the class
    references (each device's class means and autocovariances over the classes it has): how far
    apart the devices the model was trained on already are.

    >>> x = np.zeros((4, 1, 8)); x[2:] += 0.5
    >>> refs = class_references(x, np.zeros(4, int), 1)
    >>> [v.tolist() for v in device_spread(x, np.zeros(4, int), np.array([0, 0, 1, 1]), refs)]
    [[0.25], [0.0]]
    """
    mean, autocov = window_features(np.nan_to_num(x))
    ref_mean, ref_autocov = references
    offsets, log_gains = [np.zeros(mean.shape[1])], [np.zeros(mean.shape[1])]
    for device in np.unique(devices):
        mine = devices == device
        present = [c for c in range(len(ref_mean)) if np.any(mine & (labels == c))]
        own = [
            (mean[mine & (labels == c)].mean(axis=0), autocov[mine & (labels == c)].mean(axis=0))
            for c in present
        ]
        offsets.append(np.mean([m - ref_mean[c] for (m, _), c in zip(own, present, strict=True)], axis=0))
        seen, expected = np.mean([a for _, a in own], axis=0), np.mean(ref_autocov[present], axis=0)
        ok = (seen > 0) & (expected > 0)  # no positive autocovariance: no gain to measure
        log_gains.append(0.5 * np.log(np.where(ok, seen, 1.0) / np.where(ok, expected, 1.0)))
    return np.abs(offsets).max(axis=0), np.abs(log_gains).max(axis=0)
