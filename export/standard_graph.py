"""Lower ORT's training graph to standard ONNX operators, so that stock onnxruntime runs the step.

`generate_artifacts` builds the backward pass with gradient kernels that only onnxruntime-training
registers (`com.microsoft` ConvGrad, ReluGrad, DivGrad, LogSoftmaxGrad_13, Scale,
InPlaceAccumulatorV2, and a `MaxPoolGrad` in the ONNX domain). Each is replaced here by the
standard operators that compute the same values, node for node; everything else in the graph,
tuned for this backward (see `export.norms`), stays as it is. Why lowering rather than tracing
the backward in torch: docs/export.md.

The result has today's contract minus the accumulation: the same inputs as the training graph
without the gradient buffers and the reset flag (every parameter stays an input, fed from the
bundle's `parameters.npz`), and the same outputs followed by one gradient output per trainable
parameter, the gradient of this pass alone. The device accumulates them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx_graph import MAX_IR_VERSION, ExportError

CONTRIB = "com.microsoft"
# com.microsoft operators that stock onnxruntime registers (inference contrib ops), CPU and CUDA.
ALLOWED_CONTRIB = frozenset({"FusedMatMul"})
# How ORT's training graph names a parameter's accumulation buffer and the reset flag.
ACCUMULATION_BUFFER = "_grad.accumulation.buffer"
LAZY_RESET_GRAD = "lazy_reset_grad"

Dim = int | str | None
Shape = tuple[Dim, ...]


def nonstandard_ops(model: onnx.ModelProto) -> list[str]:
    """The graph's operators outside the ONNX standard (at the model's opset) and `ALLOWED_CONTRIB`."""
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    bad = set()
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        if domain == CONTRIB and node.op_type in ALLOWED_CONTRIB:
            continue
        if domain != "ai.onnx" or not _is_onnx_op(node.op_type, opset["ai.onnx"]):
            bad.add(f"{domain}:{node.op_type}")
    return sorted(bad)


def _is_onnx_op(op_type: str, version: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, version, "")
    except onnx.defs.SchemaError:
        return False
    return True


class _Lowering:
    """New nodes and constants, named under one prefix so that they never clash with ORT's names."""

    def __init__(self, shapes: dict[str, Shape], producers: dict[str, onnx.NodeProto]) -> None:
        self.shapes = shapes
        self.producers = producers
        self._computed = {
            (node.op_type, tuple(node.input)): node.output[0]
            for node in producers.values()
            if node.domain in ("", "ai.onnx")
        }
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"lowered/{self._count}/{hint}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def add(self, op: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.name(op), **attrs))
        return out

    def shape(self, tensor: str) -> Shape:
        try:
            return self.shapes[tensor]
        except KeyError:
            raise ExportError(f"no static shape known for {tensor!r}; cannot lower its gradient") from None

    def existing(self, op: str, inputs: Sequence[str]) -> str | None:
        """The output of a standard node of the graph computing `op(inputs)`, if there is one."""
        return self._computed.get((op, tuple(inputs)))

    def emit(self, op: str, inputs: Sequence[str], steps: list, output: str) -> str:
        """`op(inputs)` into `output`, summed over the `reduction` steps on the way."""
        value = self.add(op, inputs, None if steps else output)
        return self.sum_to(value, steps, output) if steps else value

    def sum_to(self, value: str, steps: list, output: str) -> str:
        for i, (axes, keepdims) in enumerate(steps):
            axes_name = self.const("axes", np.asarray(axes, np.int64))
            value = self.add(
                "ReduceSum", [value, axes_name], output if i == len(steps) - 1 else None, keepdims=keepdims
            )
        return value


def reduction(grad_shape: Shape, target: Shape) -> list[tuple[list[int], int]]:
    """The ReduceSum steps (axes, keepdims) that sum a gradient of `grad_shape` back to the shape
    `target` it was broadcast from: the expanded axes kept, then the leading ones dropped."""
    lead = len(grad_shape) - len(target)
    pairs = list(zip(grad_shape[lead:], target, strict=True))
    if any(g != t and t != 1 for g, t in pairs):
        raise ExportError(f"cannot tell how {target} broadcasts to {grad_shape}")
    steps = []
    expanded = [lead + i for i, (g, t) in enumerate(pairs) if t == 1 and g != 1]
    if expanded:
        steps.append((expanded, 1))
    if lead:
        steps.append((list(range(lead)), 0))
    return steps


def _broadcast(a: Shape, b: Shape) -> Shape:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ExportError(f"shapes {a} and {b} do not broadcast statically")
    return tuple(out)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _scale(lo: _Lowering, node: onnx.NodeProto) -> None:
    """Scale(x, s) = x * s, or x / s with scale_down."""
    x, s = node.input
    factor = lo.add("Cast", [s], to=TensorProto.FLOAT)
    lo.add("Div" if _attrs(node).get("scale_down", 0) else "Mul", [x, factor], node.output[0])


def _div_grad(lo: _Lowering, node: onnx.NodeProto) -> None:
    """y = a / b: da = dy / b and db = -dy * a / b^2 = -da * y (y from the forward pass where the
    graph has it), each summed back to its input's shape."""
    dy, a, b = node.input
    da, db = [*node.output, ""][:2]
    sy = _broadcast(lo.shape(a), lo.shape(b))
    to_a, to_b = reduction(sy, lo.shape(a)), reduction(sy, lo.shape(b))
    if not db:
        lo.emit("Div", [dy, b], to_a, da)
        return
    dy_over_b = lo.add("Div", [dy, b], None if to_a or not da else da)
    if da and to_a:
        lo.sum_to(dy_over_b, to_a, da)
    y = lo.existing("Div", [a, b])
    product = lo.add("Mul", [dy_over_b, y]) if y else lo.add("Div", [lo.add("Mul", [dy_over_b, a]), b])
    lo.emit("Neg", [product], to_b, db)


def _conv_grad(lo: _Lowering, node: onnx.NodeProto) -> None:
    """The input gradient of a convolution with frozen weights is the transposed convolution with
    the same weights; output_padding restores lengths a stride rounded down."""
    dy, x, w = node.input
    if any(node.output[1:]):
        raise ExportError(f"{node.name}: a convolution's weight gradient is requested; only norms train")
    attrs = {k: v for k, v in _attrs(node).items() if k != "auto_pad"}
    if _attrs(node).get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExportError(f"{node.name}: auto_pad convolutions are not lowered")
    kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1] * len(attrs["kernel_shape"]))
    dilations = attrs.get("dilations", [1] * len(kernel))
    pads = attrs.get("pads", [0] * 2 * len(kernel))
    spatial = lo.shape(x)[2:]
    padding = []
    for i, length in enumerate(spatial):
        if not isinstance(length, int):
            raise ExportError(f"{node.name}: the input length must be static")
        out = (length + pads[i] + pads[i + len(kernel)] - dilations[i] * (kernel[i] - 1) - 1) // strides[
            i
        ] + 1
        full = (out - 1) * strides[i] - pads[i] - pads[i + len(kernel)] + dilations[i] * (kernel[i] - 1) + 1
        padding.append(length - full)
    if any(padding):
        attrs["output_padding"] = padding
    lo.add("ConvTranspose", [dy, w], node.output[0], **attrs)


def _relu_grad(lo: _Lowering, node: onnx.NodeProto) -> None:
    """dx = dy where relu's input (or output) is positive, else 0."""
    dy, y = node.input
    zero = lo.const("zero", np.zeros((), np.float32))
    lo.add("Where", [lo.add("Greater", [y, zero]), dy, zero], node.output[0])


def _log_softmax_grad(lo: _Lowering, node: onnx.NodeProto) -> None:
    """y = log_softmax(x): dx = dy - exp(y) * sum(dy) along the axis."""
    dy, y = node.input
    axis = lo.const("axis", np.asarray([_attrs(node).get("axis", -1)], np.int64))
    total = lo.add("ReduceSum", [dy, axis], keepdims=1)
    probs = lo.existing("Exp", [y]) or lo.add("Exp", [y])
    lo.add("Sub", [dy, lo.add("Mul", [probs, total])], node.output[0])


def _max_pool_grad(lo: _Lowering, node: onnx.NodeProto) -> None:
    """Each pooled gradient goes back to the input element its max came from, at MaxPool's
    indices (flat positions in the whole input). Where windows do not overlap each element gets
    at most one, and MaxUnpool places them; where they overlap the gradients must add up, which a
    scatter-add along time does (the indices modulo the length are positions in time)."""
    dy, indices = node.input
    x = lo.producers[indices].input[0]
    attrs = _attrs(node)
    x_shape = lo.add("Shape", [x])
    if all(s >= k for s, k in zip(attrs.get("strides", []), attrs["kernel_shape"], strict=True)):
        pool = {k: v for k, v in attrs.items() if k in ("kernel_shape", "strides", "pads")}
        lo.add("MaxUnpool", [dy, indices, x_shape], node.output[0], **pool)
        return
    shape = lo.shape(x)
    if len(shape) != 3 or not isinstance(shape[2], int):
        raise ExportError(f"{node.name}: only 1-D overlapping max pooling over a static length is lowered")
    zeros = lo.add("ConstantOfShape", [x_shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
    time = lo.add("Mod", [indices, lo.const("length", np.asarray(shape[2], np.int64))])
    lo.add("ScatterElements", [zeros, time, dy], node.output[0], axis=2, reduction="add")


_LOWER: dict[tuple[str, str], Callable[[_Lowering, onnx.NodeProto], None]] = {
    (CONTRIB, "Scale"): _scale,
    (CONTRIB, "DivGrad"): _div_grad,
    (CONTRIB, "ConvGrad"): _conv_grad,
    (CONTRIB, "ReluGrad"): _relu_grad,
    (CONTRIB, "LogSoftmaxGrad_13"): _log_softmax_grad,
    ("", "MaxPoolGrad"): _max_pool_grad,
}


def _static_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes by tensor name from onnx's shape inference (it passes over ops it does not know)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes: dict[str, Shape] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in dims
            )
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def lower_operators(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with each training kernel replaced by standard operators; fails naming any
    operator left outside the standard."""
    graph = model.graph
    lo = _Lowering(_static_shapes(model), {out: node for node in graph.node for out in node.output})
    for node in graph.node:
        rewrite = _LOWER.get((node.domain, node.op_type))
        if rewrite is None:
            lo.nodes.append(node)
        else:
            rewrite(lo, node)
    lowered = helper.make_graph(
        lo.nodes, graph.name, graph.input, graph.output, initializer=[*graph.initializer, *lo.initializers]
    )
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB, 1)]
    out = helper.make_model(lowered, opset_imports=opsets, producer_name="edge-ttt export")
    out.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(out)
    bad = nonstandard_ops(out)
    if bad:
        raise ExportError(f"the lowered graph still has non-standard operators: {', '.join(bad)}")
    return out


def _without_accumulators(
    training: onnx.ModelProto, trainable: Sequence[str]
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The training graph with each gradient an output instead of an input to its accumulator."""
    graph = training.graph
    gradients = {}
    nodes = []
    for node in graph.node:
        if node.domain == CONTRIB and node.op_type == "InPlaceAccumulatorV2":
            gradients[node.input[0].removesuffix(ACCUMULATION_BUFFER)] = node.input[1]
        else:
            nodes.append(node)
    if sorted(gradients) != sorted(trainable):
        raise ExportError(
            f"the training graph accumulates gradients of {sorted(gradients)}, not {sorted(trainable)}"
        )
    dropped = {f"{p}{ACCUMULATION_BUFFER}" for p in trainable} | {LAZY_RESET_GRAD}
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    accumulated = {
        out for node in graph.node if node.op_type == "InPlaceAccumulatorV2" for out in node.output
    }
    outputs = [o for o in graph.output if o.name not in accumulated]
    outputs += [helper.make_tensor_value_info(gradients[p], TensorProto.FLOAT, shapes[p]) for p in trainable]
    stripped = helper.make_graph(
        nodes,
        graph.name,
        [i for i in graph.input if i.name not in dropped],
        outputs,
        initializer=graph.initializer,
        value_info=graph.value_info,
    )
    model = helper.make_model(stripped, opset_imports=training.opset_import)
    model.ir_version = training.ir_version
    return model, {p: gradients[p] for p in trainable}


def lower(training: onnx.ModelProto, trainable: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The standard-operator graph of ORT's training graph, and each trainable parameter's
    gradient output name."""
    stripped, gradients = _without_accumulators(training, trainable)
    return lower_operators(stripped), gradients
