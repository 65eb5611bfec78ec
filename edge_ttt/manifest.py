"""The artifact manifest, schema v2: what a bundle contains and how its graphs are wired.

Written by `edge-ttt export` on the host, read and verified by the device. The contract is
documented in docs/manifest.md; a manifest with an unknown `schema_version` is refused. Version 1
(no standard-operator training graph) is still read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
STANDARD_TRAINING_MODEL = "standard_training_model.onnx"
PARAMETERS = "parameters.npz"
# Optional (bundles exported from 2026-12-06 on), listed in `files` only, so that readers from
# before them still load such a bundle: the eval graph and the standard training graph at
# stat_mix 0, without the mix (docs/manifest.md, "Fixed-statistics graphs").
FIXED_EVAL_MODEL = "fixed_eval_model.onnx"
FIXED_TRAINING_MODEL = "fixed_training_model.onnx"
REQUIRED_FILES = (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT)
# How far a stream's sample period may be from the model's, relative to the model's: a sensor's
# clock is off by a fraction of a percent, and a frame states its period in whole nanoseconds.
RATE_TOLERANCE = 0.01
Share = Annotated[float, Field(ge=0.0, le=1.0)]  # a share of windows or of variance


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Strict):
    name: str
    classes: list[str] = Field(min_length=2)
    channels: list[str] = Field(min_length=1)
    window: int = Field(gt=0, description="samples per window")
    hop: int = Field(gt=0, description="samples between window starts")
    sample_rate_hz: float = Field(gt=0)


class Standardization(_Strict):
    """Per-channel constants of the model's first layer: (x - mean) / std."""

    mean: list[float]
    std: list[float]


class GraphInfo(_Strict):
    input: str = "x"
    logits: str = "logits"
    stat_mix: str | None = Field(description="scalar input mixing batch (1) and supplied (0) statistics")
    sample_weight: str = "sample_weight"
    soft_target: str | None = Field(
        None,
        description="[batch, classes] input of the entropy loss's soft cross-entropy term (`rotta`); "
        "absent: exported before it, or a model with an auxiliary head",
    )
    loss: str = "loss"


class NormLayer(_Strict):
    """One normalization layer: its parameters, graph ports and source statistics."""

    name: str
    kind: Literal["batch", "group", "layer"]
    channels: int
    eps: float
    weight: str
    bias: str
    stat_inputs: tuple[str, str] | None = Field(description="(mean, var) inputs; batch norms only")
    moment_outputs: tuple[str, str]
    source_mean: list[float]
    source_var: list[float]
    length: int | None = Field(
        None, ge=1, description="time samples of the layer's input per window; absent: exported before it"
    )


class AuxiliaryInfo(_Strict):
    """The self-supervised task the training graph's loss belongs to (models with an auxiliary head).

    The loss is the cross-entropy of the `logits` output against the `target` input
    ([batch, len(transformations)], one-hot rows), weighted by `graph.sample_weight`; label k is
    `transformations[k]`, a name in `edge_ttt.adapt.transforms.TRANSFORMS`.
    """

    transformations: list[str] = Field(min_length=2)
    logits: str = "aux_logits"
    target: str = "aux_target"


class StandardGraph(_Strict):
    """The training step in standard ONNX operators (schema 2), which stock onnxruntime runs.

    `model` has the training graph's inputs without its gradient accumulation buffers and reset
    flag, and its outputs followed by the gradient of every trainable parameter for this pass
    alone (`gradients`: parameter -> output name). `parameters` is a NumPy `.npz` holding every
    parameter that the eval graph and `model` take as inputs, by name.
    """

    model: str = STANDARD_TRAINING_MODEL
    parameters: str = PARAMETERS
    gradients: dict[str, str]


class OptimizerInfo(_Strict):
    kind: Literal["adamw"]
    betas: tuple[float, float]
    eps: float
    weight_decay: float


class ChannelReference(_Strict):
    """Source distribution of one input channel, for drift scores on the device."""

    name: str
    mean: float
    var: float
    hist_edges: list[float] = Field(description="inner bin edges; the outer bins are open-ended")
    hist_share: list[float] = Field(description="share of source samples per bin, len(edges) + 1")

    @model_validator(mode="after")
    def _bins(self) -> ChannelReference:
        if len(self.hist_share) != len(self.hist_edges) + 1:
            raise ValueError(f"channel {self.name}: hist_share needs len(hist_edges) + 1 values")
        if any(b <= a for a, b in zip(self.hist_edges, self.hist_edges[1:], strict=False)):
            raise ValueError(f"channel {self.name}: hist_edges must increase strictly")
        return self


class EntropyQuantiles(_Strict):
    """Quantiles of prediction entropy (nats) on held-out source windows, to calibrate thresholds."""

    q: list[float]
    value: list[float]


class ClassChannels(_Strict):
    """Input alignment's references (`edge_ttt.adapt.input_alignment`): per class and channel,
    the source training windows' mean and lag-1 autocovariance, [classes][channels] each; per
    channel, the largest offset and |log gain| of one source device against them all."""

    mean: list[list[float]]
    autocov: list[list[float]]
    offset_spread: list[float]
    log_gain_spread: list[float]
    noise_share: list[Share] | None = Field(
        None, description="per channel, the training windows' white-noise share; absent: no smoothing"
    )


class MountingReference(_Strict):
    """The source postures for the mounting search (`edge_ttt.adapt.mounting`)."""

    triad: list[int] = Field(min_length=3, max_length=3, description="channel indices of the gravity triad")
    postures: list[list[float]] = Field(min_length=1, description="per (device, class): the triad's mean")
    classes: list[int] = Field(description="the class of each posture")
    posture_level: float = Field(ge=0.0)


class DriftLimits(_Strict):
    """In-distribution PSI per interval size (`edge_ttt.drift.calibration`): each source device held
    out against the others, the `quantile` of its intervals' PSI per channel."""

    windows: list[int] = Field(min_length=1, description="interval sizes in windows, increasing")
    quantile: float = Field(gt=0.0, le=1.0)
    psi: list[list[float]] = Field(description="[size][channel], non-increasing in the size")
    intervals: list[int] = Field(description="held-out intervals behind each size")
    devices: int = Field(ge=2, description="source devices held out in turn")

    @model_validator(mode="after")
    def _shape(self) -> DriftLimits:
        if any(b <= a for a, b in zip(self.windows, self.windows[1:], strict=False)) or self.windows[0] < 1:
            raise ValueError("drift_limits.windows must be positive and increase strictly")
        if len(self.psi) != len(self.windows) or len(self.intervals) != len(self.windows):
            raise ValueError("drift_limits needs one psi row and one interval count per size")
        if len({len(row) for row in self.psi}) != 1:
            raise ValueError("drift_limits.psi rows must have one value per channel")
        return self


class ClassMoments(_Strict):
    """One batch norm's input on the source data, per class: mean and population variance."""

    mean: list[list[float]] = Field(description="[classes][channels]")
    var: list[list[float]] = Field(description="[classes][channels]")


class Reference(_Strict):
    channels: list[ChannelReference]
    entropy: EntropyQuantiles
    samples: int
    val_windows: int
    val_accuracy: float
    class_prior: list[float] | None = Field(
        None, description="share of each class among the training windows; absent: not recorded"
    )
    class_channels: ClassChannels | None = Field(
        None, description="input alignment's references; absent: exported before it, no alignment"
    )
    mounting: MountingReference | None = Field(
        None, description="absent: no x/y/z triads, one source device, or exported before it"
    )
    drift_limits: DriftLimits | None = Field(
        None, description="absent: one source device, or exported before it (sampling limits only)"
    )
    class_norms: dict[str, ClassMoments] | None = Field(
        None, description="per batch norm; absent: exported before it (`steady` without class correction)"
    )
    stay: list[Share] | None = Field(None, min_length=1, description="per lag 1, 2, ...: held-out stay rate")

    @model_validator(mode="after")
    def _limits_per_channel(self) -> Reference:
        if self.drift_limits is not None and len(self.drift_limits.psi[0]) != len(self.channels):
            raise ValueError("reference.drift_limits.psi needs one value per reference channel")
        return self


class Manifest(_Strict):
    schema_version: Literal[1, 2]
    model: ModelInfo
    standardization: Standardization
    graph: GraphInfo
    norm_layers: list[NormLayer] = Field(min_length=1)
    trainable: list[str] = Field(min_length=1)
    auxiliary: AuxiliaryInfo | None = Field(
        None, description="absent: the training loss is the weighted entropy of the logits"
    )
    standard_graph: StandardGraph | None = Field(
        None, description="schema 2 only (required there): the standard-operator training step"
    )
    optimizer: OptimizerInfo
    reference: Reference
    files: dict[str, str] = Field(description="file name -> SHA-256 hex digest")
    versions: dict[str, str]
    created_utc: str

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = len(self.model.channels)
        if len(self.standardization.mean) != n or len(self.standardization.std) != n:
            raise ValueError("standardization needs one mean and one std per channel")
        prior = self.reference.class_prior
        if prior is not None and len(prior) != len(self.model.classes):
            raise ValueError("reference.class_prior needs one share per class")
        per_class = self.reference.class_channels
        if per_class is not None and any(
            len(rows) != len(self.model.classes) or any(len(row) != n for row in rows)
            for rows in (per_class.mean, per_class.autocov)
        ):
            raise ValueError("reference.class_channels needs [classes][channels] values for mean and autocov")
        mount = self.reference.mounting
        if mount is not None and (
            not all(0 <= i < n for i in mount.triad)
            or any(len(p) != 3 for p in mount.postures)
            or len(mount.classes) != len(mount.postures)
            or not all(0 <= c < len(self.model.classes) for c in mount.classes)
        ):
            raise ValueError("reference.mounting needs 3 channel indices, postures of 3 values, a class each")
        c = per_class
        per_channel = () if c is None else (c.offset_spread, c.log_gain_spread, c.noise_share)
        if any(v is not None and len(v) != n for v in per_channel):
            raise ValueError(
                "reference.class_channels needs one offset_spread, log_gain_spread, noise_share a channel"
            )
        self._check_class_norms()
        if [c.name for c in self.reference.channels] != self.model.channels:
            raise ValueError("reference.channels must list model.channels in order")
        params = {p for layer in self.norm_layers for p in (layer.weight, layer.bias)}
        if set(self.trainable) != params:
            raise ValueError("trainable must be exactly the norm layers' weights and biases")
        if (self.schema_version >= 2) != (self.standard_graph is not None):
            raise ValueError("standard_graph is required from schema_version 2 on, and absent before")
        required = list(REQUIRED_FILES)
        if self.standard_graph is not None:
            required += [self.standard_graph.model, self.standard_graph.parameters]
            if set(self.standard_graph.gradients) != set(self.trainable):
                raise ValueError("standard_graph.gradients must name one output per trainable parameter")
        missing = [f for f in required if f not in self.files]
        if missing:
            raise ValueError(f"files is missing required entries: {', '.join(missing)}")
        return self

    def _check_class_norms(self) -> None:
        norms = self.reference.class_norms
        if norms is None:
            return
        channels = {layer.name: layer.channels for layer in self.norm_layers if layer.kind == "batch"}
        if set(norms) != set(channels):
            raise ValueError("reference.class_norms needs one entry per batch norm layer, and no other")
        for name, moments in norms.items():
            for rows in (moments.mean, moments.var):
                if len(rows) != len(self.model.classes) or any(len(row) != channels[name] for row in rows):
                    raise ValueError(
                        f"reference.class_norms.{name} needs [classes][channels] values for mean and var"
                    )

    @property
    def fixed_eval(self) -> str | None:
        """`FIXED_EVAL_MODEL` where the bundle has it: the eval graph's outputs at `stat_mix` 0
        from `x`, the statistics and the parameters (no mix, no loss, no training inputs)."""
        return FIXED_EVAL_MODEL if FIXED_EVAL_MODEL in self.files else None

    @property
    def fixed_training(self) -> str | None:
        """`FIXED_TRAINING_MODEL` where the bundle has it (batch-norm bundles of schema 2): the
        standard training graph at `stat_mix` 0, its ports less the mix, the same gradient outputs."""
        return FIXED_TRAINING_MODEL if FIXED_TRAINING_MODEL in self.files else None

    @property
    def batch_norms(self) -> list[NormLayer]:
        return [layer for layer in self.norm_layers if layer.stat_inputs is not None]


def sample_period_ns(sample_rate_hz: float) -> int:
    """The sample period in whole nanoseconds, as frames state it."""
    return round(1e9 / sample_rate_hz)


def check_fits(
    model_channels: Sequence[str], model_rate_hz: float, *, channels: Sequence[str] | int, period_ns: float
) -> Literal["channels", "rate"] | None:
    """What keeps a stream from fitting the model, or None when it fits.

    `channels` are the stream's channel names (same names, same order as the model's) or, where a
    stream does not name them, their number. The caller words the refusal for its reader.

    >>> check_fits(["ax", "ay"], 50.0, channels=2, period_ns=20_100_000) is None
    True
    >>> check_fits(["ax", "ay"], 50.0, channels=["ay", "ax"], period_ns=20_000_000)
    'channels'
    >>> check_fits(["ax", "ay"], 50.0, channels=2, period_ns=10_000_000)
    'rate'
    """
    if isinstance(channels, int):
        if channels != len(model_channels):
            return "channels"
    elif list(channels) != list(model_channels):
        return "channels"
    expected = sample_period_ns(model_rate_hz)
    if abs(period_ns - expected) > RATE_TOLERANCE * expected:
        return "rate"
    return None
