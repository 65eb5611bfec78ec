"""Training losses of the bundles, weighted per sample by a runtime-supplied vector.

Entropy (every model without an auxiliary head), label-free:
loss = sum_i w_i * H(softmax(logits_i)), with H(p) = -sum_c p_c log p_c.

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


class WeightedEntropy(onnxblock.Block):
    """Appends the weighted-entropy nodes to the graph; built from ops that have gradients."""

    def build(self, logits_name: str) -> str:
        graph = self.base.graph
        graph.input.append(helper.make_tensor_value_info(WEIGHT_INPUT, TensorProto.FLOAT, ["batch"]))
        axes = "entropy.axes_1"
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray([1], dtype=np.int64), axes))
        nodes = [
            helper.make_node("LogSoftmax", [logits_name], ["entropy.logp"], axis=1),
            helper.make_node("Exp", ["entropy.logp"], ["entropy.p"]),
            helper.make_node("Mul", ["entropy.p", "entropy.logp"], ["entropy.plogp"]),
            helper.make_node("ReduceSum", ["entropy.plogp", axes], ["entropy.neg_h"], keepdims=0),
            helper.make_node("Neg", ["entropy.neg_h"], ["entropy.h"]),
            helper.make_node("Mul", ["entropy.h", WEIGHT_INPUT], ["entropy.weighted"]),
            helper.make_node("ReduceSum", ["entropy.weighted"], ["loss"], keepdims=0),
        ]
        graph.node.extend(nodes)
        graph.value_info.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
        return "loss"


class WeightedCrossEntropy(onnxblock.Block):
    """Appends the weighted cross-entropy of the auxiliary head against a target input.

    The target is a float [batch, transformations] input (one-hot rows on the device) rather than
    int64 labels: a product with the log-probabilities needs no OneHot or Gather node, whose
    gradient builders ORT 1.19.2 would have to supply, and the labels need no gradient anyway.
    """

    def __init__(self, transformations: int) -> None:
        super().__init__()
        self.transformations = transformations

    def build(self, logits_name: str) -> str:
        graph = self.base.graph
        graph.input.append(helper.make_tensor_value_info(WEIGHT_INPUT, TensorProto.FLOAT, ["batch"]))
        graph.input.append(
            helper.make_tensor_value_info(
                AUX_TARGET_INPUT, TensorProto.FLOAT, ["batch", self.transformations]
            )
        )
        axes = "aux_ce.axes_1"
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray([1], dtype=np.int64), axes))
        nodes = [
            helper.make_node("LogSoftmax", [logits_name], ["aux_ce.logp"], axis=1),
            helper.make_node("Mul", ["aux_ce.logp", AUX_TARGET_INPUT], ["aux_ce.tlogp"]),
            helper.make_node("ReduceSum", ["aux_ce.tlogp", axes], ["aux_ce.neg_ce"], keepdims=0),
            helper.make_node("Neg", ["aux_ce.neg_ce"], ["aux_ce.ce"]),
            helper.make_node("Mul", ["aux_ce.ce", WEIGHT_INPUT], ["aux_ce.weighted"]),
            helper.make_node("ReduceSum", ["aux_ce.weighted"], ["loss"], keepdims=0),
        ]
        graph.node.extend(nodes)
        graph.value_info.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
        return "loss"
