"""Bundle verification: a bundle that is incomplete, tampered with or unknown is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_ttt.artifacts import BundleError, load_bundle
from tests.conftest import legacy_bundle


@pytest.fixture
def bundle(bundle_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_intact_bundle_loads_and_has_a_stable_identity(bundle: Path):
    first, second = load_bundle(bundle), load_bundle(bundle)
    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    assert first.manifest.model.name == "cnn-bn"


@pytest.mark.parametrize(
    "name",
    [
        "eval_model.onnx",
        "training_model.onnx",
        "optimizer_model.onnx",
        "checkpoint",
        "standard_training_model.onnx",
        "parameters.npz",
        "fixed_eval_model.onnx",
        "fixed_training_model.onnx",
    ],
)
def test_tampered_file_is_refused_by_name(bundle: Path, name: str):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}.*SHA-256"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    "name",
    ["checkpoint", "eval_model.onnx", "parameters.npz", "fixed_eval_model.onnx", "fixed_training_model.onnx"],
)
def test_missing_file_is_refused_by_name(bundle: Path, name: str):
    (bundle / name).unlink()
    with pytest.raises(BundleError, match=rf"{name} is missing"):
        load_bundle(bundle)


def test_unknown_schema_version_is_refused(bundle: Path):
    _edit_manifest(bundle, lambda d: d.update(schema_version=99))
    with pytest.raises(BundleError, match=r"manifest\.json: unknown schema_version 99"):
        load_bundle(bundle)


def test_a_schema_1_bundle_without_the_standard_graph_still_loads(bundle: Path, tmp_path: Path):
    old = load_bundle(legacy_bundle(bundle, tmp_path / "old")).manifest
    assert old.schema_version == 1 and old.standard_graph is None
    new = load_bundle(bundle).manifest
    assert new.schema_version == 2 and set(new.standard_graph.gradients) == set(new.trainable)


def test_schema_2_requires_the_standard_graph_and_its_files(bundle: Path):
    _edit_manifest(bundle, lambda d: d.pop("standard_graph"))
    with pytest.raises(BundleError, match="standard_graph is required"):
        load_bundle(bundle)


def test_standard_graph_must_name_a_gradient_per_trainable_parameter(bundle: Path):
    _edit_manifest(bundle, lambda d: d["standard_graph"]["gradients"].popitem())
    with pytest.raises(BundleError, match="one output per trainable parameter"):
        load_bundle(bundle)


def test_standard_graph_files_must_be_listed(bundle: Path):
    _edit_manifest(bundle, lambda d: d["files"].pop("parameters.npz"))
    with pytest.raises(BundleError, match=r"missing required entries: parameters\.npz"):
        load_bundle(bundle)


def test_missing_manifest_and_directory(bundle: Path, tmp_path: Path):
    (tmp_path / "a-file").write_text("x")  # a file named where the directory goes: no "export there"
    with pytest.raises(
        BundleError, match=r"a-file is a file, not an artifact directory\. Fix: name"
    ) as wrong:
        load_bundle(tmp_path / "a-file")
    assert "--force" not in str(wrong.value)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(bundle)


def test_manifest_that_is_not_json(bundle: Path):
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_manifest_with_unknown_key_names_it(bundle: Path):
    _edit_manifest(bundle, lambda d: d["model"].update(colour="blue"))
    with pytest.raises(BundleError, match="colour"):
        load_bundle(bundle)


def test_manifest_trainable_must_be_exactly_the_norm_parameters(bundle: Path):
    _edit_manifest(bundle, lambda d: d["trainable"].append("head.weight"))
    with pytest.raises(BundleError, match="trainable"):
        load_bundle(bundle)


def test_file_entry_outside_the_bundle_is_refused(bundle: Path):
    _edit_manifest(bundle, lambda d: d["files"].update({"../escape": "0" * 64}))
    with pytest.raises(BundleError, match="not a plain file name"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda b: (b / "checkpoint").unlink(),
        lambda b: (b / "eval_model.onnx").write_bytes(b"tampered"),
        lambda b: (b / "manifest.json").write_text("{not json"),
        lambda b: _edit_manifest(b, lambda d: d["model"].update(colour="blue", size="xl")),
        lambda b: (b / "manifest.json").unlink(),
    ],
    ids=["missing file", "tampered file", "not json", "invalid manifest", "no manifest"],
)
def test_every_refusal_is_one_line_that_names_the_export_command(bundle: Path, spoil):
    spoil(bundle)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith(
        f"Fix: re-create the bundle with `edge-ttt export --checkpoint MODEL.pt --out {bundle} --force`"
    )
