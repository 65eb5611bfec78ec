"""The standard-operator training graph computes what ORT's training graph computes, with only
operators that stock onnxruntime runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

torch = pytest.importorskip("torch")

from edge_ttt.artifacts import Bundle, load_bundle  # noqa: E402
from edge_ttt.manifest import CHECKPOINT, EVAL_MODEL, TRAINING_MODEL  # noqa: E402
from edge_ttt.ortapi import training_api  # noqa: E402
from export.bundle import export_bundle  # noqa: E402
from export.onnx_graph import MAX_IR_VERSION  # noqa: E402
from export.standard_graph import ACCUMULATION_BUFFER, LAZY_RESET_GRAD, nonstandard_ops  # noqa: E402
from tests.conftest import MODELS  # noqa: E402
from tests.model_factory import graph_inputs, source_model  # noqa: E402

RTOL = 1e-5


@pytest.fixture(scope="module", params=[*MODELS, "cnn-bn-ttt"])
def bundle(request, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("bundle") / request.param
    export_bundle(source_model(request.param), out)
    return load_bundle(out)


def session(path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def checkpoint_parameters(bundle: Bundle) -> dict[str, np.ndarray]:
    state = training_api().CheckpointState.load_checkpoint(str(bundle.file(CHECKPOINT)))
    return {name: np.asarray(p.data) for name, p in state.parameters}


def run(s: onnxruntime.InferenceSession, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    feeds = {i.name: values[i.name] for i in s.get_inputs()}
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds), strict=True))


def assert_close(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Equal within RTOL of the tensor's own scale (single small entries cancel to noise)."""
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def test_the_graphs_a_device_runs_use_only_standard_operators(bundle: Bundle):
    spec = bundle.manifest.standard_graph
    for name in (spec.model, EVAL_MODEL):
        proto = onnx.load(bundle.file(name))
        assert nonstandard_ops(proto) == [], name
        assert proto.ir_version <= MAX_IR_VERSION
    # The check sees what stock onnxruntime refuses in ORT's own training graph.
    assert {"com.microsoft:ConvGrad", "com.microsoft:InPlaceAccumulatorV2"} & set(
        nonstandard_ops(onnx.load(bundle.file(TRAINING_MODEL)))
    )


def test_the_parameters_file_holds_the_checkpoints_values(bundle: Bundle):
    with np.load(bundle.file(bundle.manifest.standard_graph.parameters), allow_pickle=False) as saved:
        stored = dict(saved)
    expected = checkpoint_parameters(bundle)
    assert sorted(stored) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(stored[name], value, err_msg=name)
    assert {i.name for i in session(bundle.file(EVAL_MODEL)).get_inputs()} >= set(stored)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("mix", [0.0, 1.0])
def test_standard_graph_equals_the_training_graph(bundle: Bundle, batch: int, mix: float):
    """Logits, moments, loss and every gradient within RTOL; logits also equal the eval graph's."""
    m = bundle.manifest
    if mix and m.graph.stat_mix is None:
        pytest.skip("only batch norms have a statistics mix")
    values = graph_inputs(bundle, batch, mix)
    params = checkpoint_parameters(bundle)
    buffers = {f"{p}{ACCUMULATION_BUFFER}": np.zeros_like(params[p]) for p in m.trainable}
    reference = run(
        session(bundle.file(TRAINING_MODEL)),
        {**values, **params, **buffers, LAZY_RESET_GRAD: np.ones(1, bool)},
    )
    with np.load(bundle.file(m.standard_graph.parameters), allow_pickle=False) as saved:
        stored = dict(saved)
    got = run(session(bundle.file(m.standard_graph.model)), {**values, **stored})
    ports = [m.graph.loss, m.graph.logits, *(n for layer in m.norm_layers for n in layer.moment_outputs)]
    for name in ports:
        assert_close(got[name], reference[name], name)
    for param, output in m.standard_graph.gradients.items():
        expected = buffers[f"{param}{ACCUMULATION_BUFFER}"]  # where ORT's accumulator wrote it
        assert np.abs(expected).max() > 0, param
        assert_close(got[output], expected, param)
    evaluated = run(session(bundle.file(EVAL_MODEL)), {**values, **stored})
    assert_close(got[m.graph.logits], evaluated[m.graph.logits], "eval logits")


def kernel_case(
    name: str,
) -> tuple[list[onnx.NodeProto], dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """One training kernel in a small graph: its nodes, input and output shapes, chosen to reach
    the lowering's corners (a stride that drops samples, broadcasting across ranks, overlapping
    pooling windows)."""
    ms = "com.microsoft"
    make = onnx.helper.make_node
    if name == "conv-stride":
        attrs = {"kernel_shape": [4], "strides": [2], "pads": [1, 2], "dilations": [1], "group": 1}
        nodes = [make("ConvGrad", ["dy", "x", "w"], ["dx", "", ""], domain=ms, **attrs)]
        return nodes, {"dy": (2, 4, 7), "x": (2, 3, 14), "w": (4, 3, 4)}, {"dx": (2, 3, 14)}
    if name == "conv-depthwise":
        attrs = {"kernel_shape": [3], "strides": [1], "pads": [4, 4], "dilations": [4], "group": 3}
        nodes = [make("ConvGrad", ["dy", "x", "w"], ["dx", "", ""], domain=ms, **attrs)]
        return nodes, {"dy": (2, 3, 11), "x": (2, 3, 11), "w": (3, 1, 3)}, {"dx": (2, 3, 11)}
    if name == "div":
        nodes = [make("DivGrad", ["dy", "a", "b"], ["da", "db"], domain=ms)]
        return nodes, {"dy": (2, 3, 5), "a": (2, 3, 5), "b": (1, 5)}, {"da": (2, 3, 5), "db": (1, 5)}
    if name == "div-a":
        nodes = [make("DivGrad", ["dy", "a", "b"], ["da"], domain=ms)]
        return nodes, {"dy": (2, 3, 5), "a": (2, 1, 5), "b": (2, 3, 5)}, {"da": (2, 1, 5)}
    if name == "max-pool":
        attrs = {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}
        nodes = [
            make("MaxPool", ["x"], ["y", "indices"], **attrs),
            make("MaxPoolGrad", ["dy", "indices"], ["dx"], **attrs),
        ]
        return nodes, {"x": (2, 3, 10), "dy": (2, 3, 5)}, {"dx": (2, 3, 10)}
    if name == "max-pool-disjoint":  # stride = kernel, and a last sample no window covers
        attrs = {"kernel_shape": [2], "strides": [2]}
        nodes = [
            make("MaxPool", ["x"], ["y", "indices"], **attrs),
            make("MaxPoolGrad", ["dy", "indices"], ["dx"], **attrs),
        ]
        return nodes, {"x": (2, 3, 11), "dy": (2, 3, 5)}, {"dx": (2, 3, 11)}
    if name == "relu":
        return [make("ReluGrad", ["dy", "y"], ["dx"], domain=ms)], {"dy": (2, 7), "y": (2, 7)}, {"dx": (2, 7)}
    if name == "log-softmax":
        nodes = [make("LogSoftmaxGrad_13", ["dy", "y"], ["dx"], domain=ms, axis=1)]
        return nodes, {"dy": (3, 4), "y": (3, 4)}, {"dx": (3, 4)}
    assert name == "scale"
    nodes = [
        make("Size", ["x"], ["n"]),
        make("Scale", ["x", "n"], ["down"], domain=ms, scale_down=1),
        make("Scale", ["x", "n"], ["up"], domain=ms, scale_down=0),
    ]
    return nodes, {"x": (2, 3)}, {"down": (2, 3), "up": (2, 3)}


@pytest.mark.parametrize(
    "case",
    [
        "conv-stride",
        "conv-depthwise",
        "div",
        "div-a",
        "max-pool",
        "max-pool-disjoint",
        "relu",
        "log-softmax",
        "scale",
    ],
)
def test_each_training_kernel_lowers_to_what_it_computes(case: str, tmp_path):
    from export.standard_graph import lower_operators

    nodes, shapes, outputs = kernel_case(case)
    helper, f = onnx.helper, onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        case,
        [helper.make_tensor_value_info(n, f, s) for n, s in shapes.items()],
        [helper.make_tensor_value_info(n, f, s) for n, s in outputs.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    kernel = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    rng = np.random.default_rng(0)
    values = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    paths = tmp_path / "kernel.onnx", tmp_path / "lowered.onnx"
    onnx.save(kernel, paths[0])
    lowered = lower_operators(kernel)
    assert nonstandard_ops(lowered) == [] and nonstandard_ops(kernel) != []
    onnx.save(lowered, paths[1])
    expected, got = run(session(paths[0]), values), run(session(paths[1]), values)
    for name in outputs:
        assert got[name].shape == expected[name].shape, name
        assert_close(got[name], expected[name], name)
