"""`rotta`: RoTTA (Yuan et al., CVPR 2023), robust test-time adaptation in dynamic scenarios:
robust batch norm, a category-balanced memory, and a teacher-student update on the memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.augment import strong_augment
from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.cstu import CategoryBalancedMemory, timeliness
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.optim import Adam, Arrays
from edge_ttt.adapt.ort_model import OrtModel, Stats
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.policies.base import Count, NonNegative, Policy, Rate
from edge_ttt.adapt.policies.memory import MemoryPolicy
from edge_ttt.adapt.softmax import softmax_entropy
from edge_ttt.adapt.transforms import triads

Moments = dict[str, tuple[np.ndarray, np.ndarray]]


class Rotta(MemoryPolicy):
    """RoTTA, window by window:

    1. The teacher predicts each window with its robust statistics (no batch moments): these are
       the served predictions.
    2. The window joins the category-balanced memory (`cstu`) under the teacher's class, scored
       by its age and the teacher's uncertainty.
    3. Every `update_every` windows, on the whole memory: the teacher runs it in robust-batch-norm
       training mode (each batch norm normalizes with its statistics moved `alpha` of the way to
       the memory batch's moments, and keeps them), giving soft targets; the student runs a
       strongly augmented copy the same way with its own statistics, and takes one Adam step on
       the cross-entropy to the teacher's targets, each window weighted by its timeliness; the
       teacher's affines move `nu` of the way to the student's.

    A batch of n windows is n windows in turn (predictions of those before a step come from the
    state before it): the same steps as n batches of one, up to float rounding. Without batch
    norms there are no statistics to keep, and the memory's teacher-student steps move the group-
    or layer-norm affines.
    """

    name = "rotta"
    loss = "entropy"
    soft_targets = True
    keeps_stats = True

    @dataclass(frozen=True)
    class Options(Policy.Options):
        """The paper's values (its configs for RoTTA); the augmentation's are this project's."""

        memory: Count = 64  # windows in the memory
        update_every: Count = 64  # windows between two teacher-student steps
        lr: NonNegative = 1e-3  # Adam, the student's affines
        alpha: Rate = 0.05  # robust batch norm: weight of a memory batch's moments
        nu: Rate = 0.001  # teacher <- (1 - nu) teacher + nu student, per step
        lambda_t: NonNegative = 1.0  # memory score: weight of age
        lambda_u: NonNegative = 1.0  # memory score: weight of uncertainty
        seed: int = 0  # of the augmentation

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        spec = model.manifest.model
        self.window_shape = (len(spec.channels), spec.window)
        self.spread = np.asarray(model.manifest.standardization.std, np.float64)
        self.triads = triads(spec.channels)
        self.reset()

    def reset(self) -> None:
        super().reset()
        cfg = self.options
        self.student = self.source_vector.copy()
        self._teach({k: _float64(s) for k, s in self.source_stats.items()})
        self.student_stats: Moments = {k: _float64(s) for k, s in self.source_stats.items()}
        self.opt = Adam(lr=cfg.lr)
        self.memory = CategoryBalancedMemory(
            cfg.memory, self.classes, self.window_shape, cfg.lambda_t, cfg.lambda_u
        )
        self.arrived = 0  # windows offered to the memory
        self.steps = 0  # teacher-student steps taken

    def stats(self) -> Stats:
        """The teacher's robust statistics: what the served predictions normalize with."""
        return self._served

    def _teach(self, stats: Moments) -> None:
        """Set the teacher's statistics, and the float32 copy that every prediction normalizes with
        (they change once per step, not per window)."""
        self.teacher_stats = stats
        self._served = _float32(stats)

    def predict(self, x: np.ndarray) -> Outputs:
        return self.model.forward(x, self.stats())

    def _remember(self, part: np.ndarray, out: Outputs) -> None:
        _, entropy = softmax_entropy(out.logits.astype(np.float64))
        for window, label, h in zip(part, out.logits.argmax(axis=1), entropy, strict=True):
            self.memory.add(window, int(label), float(h))

    def _step(self) -> None:
        """The teacher-student step on the memory (the model holds the teacher's affines before
        and after; the student's are written for its training pass only)."""
        cfg = self.options
        xs, _, ages = self.memory.contents()
        alpha = cfg.alpha
        teacher = self.model.forward(xs, self._served, alpha)
        self._teach(_moved(self.teacher_stats, teacher.moments, alpha))
        probabilities, _ = softmax_entropy(teacher.logits.astype(np.float64))
        weights = timeliness(ages, cfg.memory) / len(xs)
        rng = np.random.default_rng((cfg.seed, self.steps))
        strong = strong_augment(xs, self.spread, self.triads, rng)
        self.model.write_parameters(self.student)
        self.model.discard_gradients()
        student = self.model.forward_backward(
            strong,
            np.zeros(len(xs), np.float32),
            _float32(self.student_stats),
            alpha,
            soft_target=probabilities * weights[:, None],
        )
        grads = self.model.gradient_vector()
        self.model.discard_gradients()
        self.student_stats = _moved(self.student_stats, student.moments, alpha)
        self.student = self.opt.step(self.student, grads).astype(np.float32)
        self._set_params((1.0 - cfg.nu) * self.param_vector + cfg.nu * self.student)
        self.steps += 1

    def state(self) -> Arrays:
        flat = {**prefixed("params", self.params), **prefixed("adam", self.opt.state(self.layout))}
        flat.update(prefixed("student", self.layout.split(self.student)))
        flat.update(prefixed("memory", self.memory.state()))
        for who, stats in (("teacher", self.teacher_stats), ("student", self.student_stats)):
            for k, (m, v) in stats.items():
                flat[f"{who}_mean/{k}"], flat[f"{who}_var/{k}"] = m.copy(), v.copy()
        flat["arrived"], flat["steps"] = np.asarray(self.arrived), np.asarray(self.steps)
        return flat

    def load_state(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.student = self.layout.flatten(unprefixed("student", flat), np.float32)
        self.opt.load_state(unprefixed("adam", flat), self.layout)
        self.memory.load_state(unprefixed("memory", flat))
        self._teach(_loaded(flat, "teacher"))
        self.student_stats = _loaded(flat, "student")
        self.arrived, self.steps = int(flat["arrived"]), int(flat["steps"])


def _float64(stats: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return stats[0].astype(np.float64), stats[1].astype(np.float64)


def _float32(stats: Moments) -> Stats:
    return {k: (m.astype(np.float32), v.astype(np.float32)) for k, (m, v) in stats.items()}


def _moved(stats: Moments, moments: dict, alpha: float) -> Moments:
    """Robust batch norm's update: each batch norm's statistics `alpha` of the way to the
    batch's moments (layers without statistics, group and layer norms, are left out)."""
    return {
        k: ((1 - alpha) * m + alpha * moments[k][0], (1 - alpha) * v + alpha * moments[k][1])
        for k, (m, v) in stats.items()
    }


def _loaded(flat: Arrays, who: str) -> Moments:
    means, variances = unprefixed(f"{who}_mean", flat), unprefixed(f"{who}_var", flat)
    return {k: (np.array(m, np.float64), np.array(variances[k], np.float64)) for k, m in means.items()}
