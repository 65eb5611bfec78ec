"""Training losses of the bundles, weighted per sample by a runtime-supplied vector.

Entropy (every model without an auxiliary head), label-free, plus a cross-entropy against soft
targets that the runtime supplies (RoTTA's teacher predictions, weighted by age):
loss = sum_i w_i * H(softmax(logits_i)) - sum_i sum_c t_ic log softmax(logits_i)_c,
with H(p) = -sum_c p_c log p_c and `soft_target` t, [batch, classes]. With t = 0 (what every
entropy policy feeds) the loss and its gradients are the entropy's alone; with w = 0 they are the
soft cross-entropy's, whose per-sample weights the runtime folds into t.

Auxiliary cross-entropy (models with an auxiliary head, `WeightedCrossEntropy`): the device
builds transformed copies of a window and knows their labels, so it feeds the targets itself:
loss = sum_i w_i * sum_k -t_ik log softmax(aux_logits_i)_k.

The weights are a graph input (`sample_weight`, [batch]) so the runtime decides, per step and
without re-exporting, which samples count and how much: 1/B for Tent's mean, 0 to exclude an
unreliable window, EATA-style re-weighting, 1/n over the samples SAR's filter keeps.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxruntime.training import onnxblock

WEIGHT_INPUT = "sample_weight"
AUX_TARGET_INPUT = "aux_target"
SOFT_TARGET_INPUT = "soft_target"


class _WeightedPerSample(onnxblock.Block):
    """sum_i w_i * loss_i with `sample_weight` as the weights; subclasses add the per-sample loss
    nodes (`per_sample`), named under their `prefix`."""

    prefix: str

    def per_sample(self, graph: onnx.GraphProto, logits_name: str, axes: str) -> tuple[list, str]:
        """Extra inputs on `graph`, and the nodes computing a [batch] loss; returns (nodes, output)."""
        raise NotImplementedError

    def total(self, graph: onnx.GraphProto, weighted: str) -> list:
        """The nodes from the weighted per-sample losses to the scalar `loss`: their sum."""
        return [helper.make_node("ReduceSum", [weighted], ["loss"], keepdims=0)]

    def build(self, logits_name: str) -> str:
        graph = self.base.graph
        graph.input.append(helper.make_tensor_value_info(WEIGHT_INPUT, TensorProto.FLOAT, ["batch"]))
        axes = f"{self.prefix}.axes_1"
        nodes, per_sample = self.per_sample(graph, logits_name, axes)
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray([1], dtype=np.int64), axes))
        weighted = f"{self.prefix}.weighted"
        nodes.append(helper.make_node("Mul", [per_sample, WEIGHT_INPUT], [weighted]))
        nodes += self.total(graph, weighted)
        graph.node.extend(nodes)
        graph.value_info.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
        return "loss"


class WeightedEntropy(_WeightedPerSample):
    """The weighted entropy of the logits plus their cross-entropy against `soft_target`; built
    from ops that have gradients."""

    prefix = "entropy"

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def per_sample(self, graph: onnx.GraphProto, logits_name: str, axes: str) -> tuple[list, str]:
        nodes = [
            helper.make_node("LogSoftmax", [logits_name], ["entropy.logp"], axis=1),
            helper.make_node("Exp", ["entropy.logp"], ["entropy.p"]),
            helper.make_node("Mul", ["entropy.p", "entropy.logp"], ["entropy.plogp"]),
            helper.make_node("ReduceSum", ["entropy.plogp", axes], ["entropy.neg_h"], keepdims=0),
            helper.make_node("Neg", ["entropy.neg_h"], ["entropy.h"]),
        ]
        return nodes, "entropy.h"

    def total(self, graph: onnx.GraphProto, weighted: str) -> list:
        """The weighted entropies' sum minus the sum of the soft targets' log-likelihoods."""
        graph.input.append(
            helper.make_tensor_value_info(SOFT_TARGET_INPUT, TensorProto.FLOAT, ["batch", self.classes])
        )
        return [
            helper.make_node("ReduceSum", [weighted], ["entropy.sum"], keepdims=0),
            helper.make_node("Mul", ["entropy.logp", SOFT_TARGET_INPUT], ["soft_ce.tlogp"]),
            helper.make_node("ReduceSum", ["soft_ce.tlogp"], ["soft_ce.neg_sum"], keepdims=0),
            helper.make_node("Sub", ["entropy.sum", "soft_ce.neg_sum"], ["loss"]),
        ]


class WeightedCrossEntropy(_WeightedPerSample):
    """The weighted cross-entropy of the auxiliary head against a target input.

    The target is a float [batch, transformations] input (one-hot rows on the device) rather than
    int64 labels: a product with the log-probabilities needs no OneHot or Gather node, whose
    gradient builders ORT 1.19.2 would have to supply, and the labels need no gradient anyway.
    """

    prefix = "aux_ce"

    def __init__(self, transformations: int) -> None:
        super().__init__()
        self.transformations = transformations

    def per_sample(self, graph: onnx.GraphProto, logits_name: str, axes: str) -> tuple[list, str]:
        graph.input.append(
            helper.make_tensor_value_info(
                AUX_TARGET_INPUT, TensorProto.FLOAT, ["batch", self.transformations]
            )
        )
        nodes = [
            helper.make_node("LogSoftmax", [logits_name], ["aux_ce.logp"], axis=1),
            helper.make_node("Mul", ["aux_ce.logp", AUX_TARGET_INPUT], ["aux_ce.tlogp"]),
            helper.make_node("ReduceSum", ["aux_ce.tlogp", axes], ["aux_ce.neg_ce"], keepdims=0),
            helper.make_node("Neg", ["aux_ce.neg_ce"], ["aux_ce.ce"]),
        ]
        return nodes, "aux_ce.ce"
