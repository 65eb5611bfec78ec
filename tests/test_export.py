"""Export: ORT graphs equal the PyTorch models, and only normalization parameters ever move."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from edge_ttt.adapt.ort_model import OrtModel  # noqa: E402
from edge_ttt.adapt.softmax import softmax_entropy  # noqa: E402
from edge_ttt.artifacts import Bundle, load_bundle  # noqa: E402
from edge_ttt.manifest import EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL  # noqa: E402
from edge_ttt.ortapi import training_api  # noqa: E402
from export.bundle import ADAMW, export_bundle  # noqa: E402
from export.checkpoint import SourceModel  # noqa: E402
from export.models import build_model  # noqa: E402
from export.norms import norm_layers  # noqa: E402
from export.onnx_graph import ExportError, check_norm_parameters, to_onnx  # noqa: E402
from tests.conftest import CHANNELS, MODELS  # noqa: E402
from tests.model_factory import CLASSES, LENGTH, randomized_model, source_model, windows  # noqa: E402
from tests.training_module import TrainingModule  # noqa: E402


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory) -> tuple[SourceModel, Bundle]:
    src = source_model(request.param)
    out = tmp_path_factory.mktemp("bundle") / request.param
    export_bundle(src, out)
    return src, load_bundle(out)


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("batch", [1, 7])
def test_eval_logits_equal_torch_with_source_statistics(exported, batch):
    src, bundle = exported
    model = OrtModel(bundle)
    x = windows(batch)
    out = model.forward(x, model.source_stats(), mix=0.0)
    assert out.logits.shape == (batch, CLASSES)
    assert np.abs(out.logits - torch_logits(src.model, x)).max() <= 1e-4


def test_eval_logits_equal_torch_with_supplied_statistics(exported):
    """Batch norms normalize with whatever the runtime supplies; torch gets the same as running stats."""
    src, bundle = exported
    model = OrtModel(bundle)
    if not bundle.manifest.batch_norms:
        # Group and layer norms normalize each window by its own moments: no population
        # statistics exist to supply, so the graph must not pretend to take any.
        assert bundle.manifest.graph.stat_mix is None
        assert "stat_mix" not in {i.name for i in onnx.load(bundle.file(EVAL_MODEL)).graph.input}
        return
    rng = np.random.default_rng(3)
    supplied = {}
    reference = copy.deepcopy(src.model)
    layers = norm_layers(reference)
    for name, (mean, var) in model.source_stats().items():
        new_mean = (mean + rng.normal(0, 0.5, mean.shape)).astype(np.float32)
        new_var = (var * rng.uniform(0.3, 3.0, var.shape)).astype(np.float32)
        supplied[name] = (new_mean, new_var)
        layers[name].running_mean.copy_(torch.from_numpy(new_mean))
        layers[name].running_var.copy_(torch.from_numpy(new_var))
    x = windows(4, seed=5)
    out = model.forward(x, supplied, mix=0.0)
    expected = torch_logits(reference, x)
    assert np.abs(out.logits - expected).max() <= 1e-4
    assert np.abs(out.logits - torch_logits(src.model, x)).max() > 1e-2  # the statistics did matter


def test_batch_statistics_mode_equals_torch_train_mode(exported):
    """stat_mix = 1 is Tent's normalization: the batch's own statistics."""
    src, bundle = exported
    if not bundle.manifest.batch_norms:
        pytest.skip("only batch norms have a batch-statistics mode")
    model = OrtModel(bundle)
    reference = copy.deepcopy(src.model).train()
    x = windows(6, seed=7)
    out = model.forward(x, model.source_stats(), mix=1.0)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert np.abs(out.logits - expected).max() <= 1e-4


def test_moment_outputs_are_the_layer_inputs_moments(exported):
    src, bundle = exported
    model = OrtModel(bundle)
    captured = {}
    hooks = [
        layer.register_forward_hook(lambda m, inp, out, name=name: captured.__setitem__(name, inp[0].numpy()))
        for name, layer in norm_layers(src.model).items()
    ]
    x = windows(3, seed=9)
    try:
        torch_logits(src.model, x)
    finally:
        for h in hooks:
            h.remove()
    out = model.forward(x, model.source_stats())
    for layer in bundle.manifest.norm_layers:
        h = captured[layer.name].astype(np.float64)  # [B, C, T]
        if layer.kind == "batch":
            mean, var = h.mean(axis=(0, 2)), h.var(axis=(0, 2))
        elif layer.kind == "group":
            g = h.reshape(h.shape[0], len(layer.source_mean), -1)
            mean, var = g.mean(axis=2).mean(axis=0), g.var(axis=2).mean(axis=0)
        else:
            mean, var = np.array([h.mean(axis=1).mean()]), np.array([h.var(axis=1).mean()])
        got_mean, got_var = out.moments[layer.name]
        np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got_var, var, rtol=1e-4, atol=1e-5)


def first_adamw_update(grad: torch.Tensor, lr: float) -> torch.Tensor:
    """The first step of ORT's AdamW (mode 1, as in HF transformers): bias correction folded into
    the step size, eps added to sqrt(v) before it; torch.optim.Adam differs for tiny gradients."""
    (b1, b2), eps = ADAMW["betas"], ADAMW["eps"]
    m, v = (1 - b1) * grad, (1 - b2) * grad * grad
    return lr * (1 - b2) ** 0.5 / (1 - b1) * m / (v.sqrt() + eps)


class OrtAdamW(TrainingModule):
    """The bundle's training module stepped by its AdamW optimizer model: what an application of
    ORT's own on-device training would run (the engine's policies step with their own optimizers).
    `model` only assembles the inputs."""

    def __init__(self, model: OrtModel, bundle: Bundle) -> None:
        super().__init__(bundle, model)
        self.optimizer = training_api().Optimizer(str(bundle.file(OPTIMIZER_MODEL)), self.module)

    def step(self, x: np.ndarray, weights: np.ndarray, mix: float, lr: float) -> None:
        self.train(x, weights, self.model.source_stats(), mix)
        self.optimizer.set_learning_rate(lr)
        self.optimizer.step()
        self.lazy_reset_grad()

    def parameters(self, trainable_only: bool = True) -> dict[str, np.ndarray]:
        return {n: p.data.copy() for n, p in self.state.parameters if p.requires_grad or not trainable_only}


@pytest.mark.parametrize("mix", [0.0, 1.0])
def test_one_adaptation_step_equals_torch(exported, mix):
    """Same weighted-entropy loss, same AdamW: gradients and updated norm parameters agree."""
    src, bundle = exported
    if mix == 1.0 and not bundle.manifest.batch_norms:
        pytest.skip("only batch norms have a batch-statistics mode")
    model = OrtModel(bundle)
    x = windows(8, seed=11)
    weights = np.random.default_rng(2).uniform(0.0, 0.25, len(x)).astype(np.float32)
    lr = 1e-2

    reference = copy.deepcopy(src.model).train(mix == 1.0)
    params = [p for layer in norm_layers(reference).values() for p in (layer.weight, layer.bias)]
    for p in reference.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    logits = reference(torch.from_numpy(x))
    logp = torch.log_softmax(logits, dim=1)
    loss = (-(logp.exp() * logp).sum(dim=1) * torch.from_numpy(weights)).sum()

    loss.backward()
    names = [f"{n}.{p}" for n in norm_layers(reference) for p in ("weight", "bias")]
    torch_grads = {n: p.grad.numpy().copy() for n, p in zip(names, params, strict=True)}
    with torch.no_grad():
        for p in params:
            p.sub_(first_adamw_update(p.grad, lr))

    out = model.forward_backward(x, weights, model.source_stats(), mix=mix)
    assert out.loss == pytest.approx(float(loss.detach()), rel=1e-4)
    ort_grads = model.gradients()
    for name in names:
        np.testing.assert_allclose(ort_grads[name], torch_grads[name], rtol=1e-3, atol=1e-6)
    optimizer = OrtAdamW(model, bundle)
    optimizer.step(x, weights, mix, lr)
    updated = optimizer.parameters()
    for name, p in zip(names, params, strict=True):
        assert np.abs(updated[name] - p.detach().numpy()).max() <= 1e-4, name
    assert any(np.abs(updated[n] - src.model.state_dict()[n].numpy()).max() > 1e-3 for n in names)


def test_the_soft_target_term_equals_torchs_soft_cross_entropy(exported):
    """Entropy and soft cross-entropy together (RoTTA's student loss is the second): the loss and
    every gradient equal torch's, with the source statistics, batch size 1 included."""
    src, bundle = exported
    model = OrtModel(bundle)
    assert bundle.manifest.graph.soft_target == "soft_target"
    rng = np.random.default_rng(5)
    for batch in (1, 6):
        x = windows(batch, seed=30 + batch)
        weights = rng.uniform(0.0, 0.5, batch).astype(np.float32)
        target = (rng.dirichlet(np.ones(CLASSES), batch) / batch).astype(np.float32)
        reference = copy.deepcopy(src.model).eval()
        params = [p for layer in norm_layers(reference).values() for p in (layer.weight, layer.bias)]
        for p in reference.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        logp = torch.log_softmax(reference(torch.from_numpy(x)), dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1)
        loss = (entropy * torch.from_numpy(weights)).sum() - (torch.from_numpy(target) * logp).sum()
        loss.backward()
        model.forward_backward(x, weights, model.source_stats())  # its target input left zero
        model.discard_gradients()
        out = model.forward_backward(x, weights, model.source_stats(), soft_target=target)
        assert out.loss == pytest.approx(float(loss.detach()), rel=1e-4)
        got = model.gradients()
        model.discard_gradients()
        names = [f"{n}.{p}" for n in norm_layers(reference) for p in ("weight", "bias")]
        for name, p in zip(names, params, strict=True):
            np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=1e-3, atol=1e-6, err_msg=name)
        # the next pass without soft targets is the entropy alone again (zeroed, not the stale targets)
        alone = model.forward_backward(x, weights, model.source_stats())
        model.discard_gradients()
        assert alone.loss == pytest.approx(float((entropy * torch.from_numpy(weights)).sum()), rel=1e-4)


def test_fifty_steps_change_only_norm_parameters(exported):
    src, bundle = exported
    model = OrtModel(bundle)
    optimizer = OrtAdamW(model, bundle)
    before = optimizer.parameters(trainable_only=False)
    trainable = set(bundle.manifest.trainable)
    assert trainable == {f"{n}.{p}" for n in norm_layers(src.model) for p in ("weight", "bias")}
    rng = np.random.default_rng(4)
    for step in range(50):
        batch = 1 if step % 2 else 4  # batch size 1 included
        x = windows(batch, seed=100 + step)
        optimizer.step(x, np.full(batch, 1.0 / batch, np.float32), 0.0, float(rng.uniform(1e-3, 1e-2)))
    after = optimizer.parameters(trainable_only=False)
    frozen = [n for n in before if n not in trainable]
    assert frozen, "a model without frozen parameters would make this test vacuous"
    for name in frozen:
        assert before[name].tobytes() == after[name].tobytes(), f"{name} changed"
    assert all(not np.array_equal(before[n], after[n]) for n in trainable)
    state = src.model.state_dict()
    for name in frozen:  # and the frozen ones are the trained model's own
        np.testing.assert_array_equal(after[name], state[name].numpy())


def test_batch_size_one_runs_through_training_and_eval_graphs(exported):
    _, bundle = exported
    model = OrtModel(bundle)
    x = windows(1, seed=21)
    ev = model.forward(x, model.source_stats())
    tr = model.forward_backward(x, np.ones(1, np.float32), model.source_stats())
    np.testing.assert_allclose(tr.logits, ev.logits, atol=1e-5)
    _, entropy = softmax_entropy(ev.logits.astype(np.float64))
    assert tr.loss == pytest.approx(float(entropy[0]), rel=1e-4)
    assert all(m.shape[0] >= 1 for pair in tr.moments.values() for m in pair)


def test_zero_weight_gives_zero_loss_and_gradient(exported):
    _, bundle = exported
    model = OrtModel(bundle)
    out = model.forward_backward(windows(3), np.zeros(3, np.float32), model.source_stats())
    assert out.loss == 0.0
    assert all(not g.any() for g in model.gradients().values())


def test_graphs_have_no_pow_and_no_chained_unsqueezes(exported):
    """The norm layers export lean (export/norms.py): at batch size 1 every node costs. Pow's
    gradient runs another Pow on the whole tensor, and an Unsqueeze per new axis costs a node
    forward and a Squeeze backward where one Reshape each would do."""
    _, bundle = exported
    for name in (TRAINING_MODEL, EVAL_MODEL):
        nodes = onnx.load(bundle.file(name)).graph.node
        producer = {out: node.op_type for node in nodes for out in node.output}
        assert "Pow" not in {node.op_type for node in nodes}, name
        chained = [
            node.name
            for node in nodes
            if node.op_type in ("Unsqueeze", "Squeeze") and producer.get(node.input[0]) == node.op_type
        ]
        assert not chained, (name, chained)


def test_manifest_describes_the_bundle(exported):
    src, bundle = exported
    m = bundle.manifest
    assert m.model.name == src.name and m.model.window == LENGTH and m.model.channels == list(CHANNELS)
    assert set(m.files) >= {"training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint"}
    assert "manifest.json" not in m.files
    assert {"torch", "onnx", "onnxruntime", "edge_ttt"} <= set(m.versions)
    np.testing.assert_allclose(m.standardization.mean, src.model.standardize.mean.numpy(), rtol=1e-6)
    for ref in m.reference.channels:
        assert sum(ref.hist_share) == pytest.approx(1.0)
    assert m.reference.entropy.value == sorted(m.reference.entropy.value)
    for layer in m.norm_layers:
        assert (layer.stat_inputs is not None) == (layer.kind == "batch")


def test_export_refuses_a_model_without_normalization():
    model = torch.nn.Sequential(torch.nn.Conv1d(6, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    with pytest.raises(ExportError, match="no normalization layer"):
        to_onnx(model, 6, 32)


def test_export_refuses_a_graph_whose_norm_parameter_vanished():
    proto, names = to_onnx(randomized_model("cnn-bn"), len(CHANNELS), LENGTH)
    victim = next(i for i in proto.graph.initializer if i.name == "block2.norm.weight")
    victim.name = "folded_constant_17"
    with pytest.raises(ExportError, match=r"block2\.norm\.weight"):
        check_norm_parameters(proto, names)


def test_export_does_not_touch_the_callers_model():
    model = randomized_model("cnn-bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_onnx(model, len(CHANNELS), LENGTH)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_equal_fresh_norm_layers_stay_separate_parameters(tmp_path: Path):
    """Freshly built norm layers have equal weights; the exporter must not merge them into one."""
    model = build_model("cnn-bn", len(CHANNELS), CLASSES).eval()
    proto, names = to_onnx(model, len(CHANNELS), LENGTH)
    initializers = {i.name for i in proto.graph.initializer}
    assert set(names.trainable) <= initializers


def test_refuses_to_overwrite_a_bundle_without_force(tmp_path: Path):
    src = source_model("cnn-gn")
    export_bundle(src, tmp_path / "b")
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(src, tmp_path / "b")
    export_bundle(src, tmp_path / "b", force=True)
    assert load_bundle(tmp_path / "b").manifest.model.name == "cnn-gn"


def test_force_replaces_a_bundle_and_nothing_else(tmp_path: Path):
    """`--out . --force` in the wrong directory must not delete it."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("a user's file")
    for out in (work, work / "notes.txt"):
        for force in (True, False):  # without it, the message must not send one to --force
            with pytest.raises(
                FileExistsError, match="which export does not replace, --force or not"
            ) as info:
                export_bundle(source_model("cnn-gn"), out, force=force)
            assert "pass --force" not in str(info.value)
    assert (work / "notes.txt").read_text() == "a user's file"


def test_export_keeps_the_runtimes_log_lines_out_of_the_terminal(tmp_path: Path, capfd):
    """ORT's C++ logger writes ~40 INFO lines to fd 2 while generating artifacts; they go to export.log."""
    export_bundle(source_model("cnn-bn"), tmp_path / "b")
    err = capfd.readouterr().err
    assert "onnxruntime" not in err, err[:500]
    assert "GraphTransformer" in (tmp_path / "b" / "export.log").read_text()


def test_averages_over_time_and_channels_are_matmuls(exported):
    """Every full-tensor average in the norm layers and the pooling before the head is a MatMul
    with a constant vector (export/norms.py): ORT's gradient of a ReduceMean is seven bookkeeping
    nodes, a MatMul's one. What is left for ReduceMean is the batch axis (dynamic) and averages
    of the small tensors those MatMuls produce."""
    _, bundle = exported
    for name in (TRAINING_MODEL, EVAL_MODEL):
        nodes = onnx.load(bundle.file(name)).graph.node
        producer = {out: node.op_type for node in nodes for out in node.output}
        means = [node for node in nodes if node.op_type == "ReduceMean"]
        assert means, name
        for node in means:
            axes = [list(a.ints) for a in node.attribute if a.name == "axes"]
            assert axes == [[0]] or producer.get(node.input[0]) == "MatMul", (name, node.name, axes)
