"""Label-free training loss: per-sample prediction entropy, weighted by a runtime-supplied vector.

loss = sum_i w_i * H(softmax(logits_i)), with H(p) = -sum_c p_c log p_c.

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
