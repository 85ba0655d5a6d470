"""Stage graphs: eager stages, torch.compile(fullgraph=True) and the ONNX export all equal predict."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from deploy_helpers import save_tiny, tiny_sacvit

import sacvit
from sacvit.cli import main
from sacvit.deploy import export_onnx
from sacvit.engine.evaluate import SAC_ONLY
from sacvit.model.stages import CompiledSACViT, EEStage, SACStage, geometry, staged_predict
from sacvit.runtime import OnnxSACViT

THRESHOLDS = (0.0, 0.5, SAC_ONLY)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def assert_same(ref, got, tol: float = 1e-5) -> None:
    assert (ref.logits - got.logits).abs().max() < tol
    assert torch.equal(ref.stage, got.stage) and torch.equal(ref.box, got.box)
    assert torch.allclose(ref.gmacs, got.gmacs) and torch.allclose(ref.confidence, got.confidence, atol=1e-6)


@pytest.mark.parametrize("sac", [{}, {"alpha": 0.78}, {"window_policy": "center", "reuse_non_target": False},
                                 {"exit_score": "margin"}])
def test_eager_stages_equal_predict(x, sac):
    model = tiny_sacvit(**sac)
    ee, sc, geo = EEStage(model), SACStage(model), geometry(model)
    stages = set()
    for thr in THRESHOLDS:
        ref = model.predict(x, thr)
        assert_same(ref, staged_predict(ee, sc, x, thr, geo), 1e-6)
        stages.update(ref.stage.tolist())
        assert_same(model.predict(x[:1], thr), staged_predict(ee, sc, x[:1], thr, geo), 1e-6)
    assert stages == {0, 1}


def test_stages_refuse_what_has_no_static_graph():
    with pytest.raises(ValueError, match="adaptive"):
        EEStage(tiny_sacvit(cluster_mode="adaptive", adaptive_sizes=(2, 3, 4)))
    with pytest.raises(ValueError, match="random"):
        SACStage(tiny_sacvit(window_policy="random"))


@pytest.mark.slow
def test_compiled_stages_equal_eager(x):
    """``fullgraph=True`` fails on any graph break (the cached EE position embedding used to be one)."""
    torch._dynamo.reset()
    model = tiny_sacvit()
    # inductor on the bench path (η > 1: EE and SAC on the whole batch, one compilation each)
    compiled = CompiledSACViT(model)
    assert_same(model.predict(x, SAC_ONLY), compiled.predict(x, SAC_ONLY))
    # every exit pattern and batch size: dynamo's full graphs, run without code generation (fast)
    traced = CompiledSACViT(model, backend="eager")
    for thr in THRESHOLDS:
        assert_same(model.predict(x, thr), traced.predict(x, thr))
        assert_same(model.predict(x[:1], thr), traced.predict(x[:1], thr))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = sacvit.from_pretrained(save_tiny(tmp_path_factory.mktemp("ckpt") / "last.safetensors"))
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(model, out)
    return model, out


@pytest.mark.slow
def test_onnx_runtime_matches_pytorch(exported, x):
    model, out = exported
    runtime = OnnxSACViT(out, threads=1)
    stages = set()
    for thr in THRESHOLDS:
        for batch in (x, x[:1], x[:3]):
            ref = model.predict(batch, thr)
            assert_same(ref, runtime.predict(batch, thr), 1e-4)
            stages.update(ref.stage.tolist())
    assert stages == {0, 1}
    assert runtime.class_names == model.class_names and runtime.preprocess == model.preprocess
    assert runtime.sac_config == model.model.sac_config and runtime.threshold == model.threshold
    assert_same(model.predict(x), runtime.predict(x.numpy()), 1e-4)  # default η, NumPy input


@pytest.mark.slow
def test_export_folder_describes_itself(exported):
    model, out = exported
    info = json.loads((out / "sacvit.json").read_text())
    assert info["sac_config"]["threshold"] == model.threshold
    assert info["geometry"]["num_target"] == 36 and info["geometry"]["num_non_target"] == 7  # 3×3 window, s = 2
    for name, inputs in (("ee.onnx", ["image"]), ("sac.onnx", ["image", "tokens", "embed", "gca", "window"])):
        graph = onnx.load(out / name).graph
        assert [i.name for i in graph.input] == inputs
        batch = graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value  # a dynamic batch axis
        tokens = graph.input[1].type.tensor_type.shape.dim[1] if name == "sac.onnx" else None
        assert tokens is None or tokens.dim_value == 16  # static token counts
    with pytest.raises(ValueError, match="bad input|expected 3 channels"):
        OnnxSACViT(out).predict(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        OnnxSACViT(out).predict(torch.full((1, 3, 32, 32), float("nan")))


@pytest.mark.slow
def test_export_cli(tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "last.safetensors")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "onnx")]) == 0
    out, _ = capsys.readouterr()
    assert "onnxruntime matches PyTorch" in out
    with pytest.raises(ValueError, match="not a sacvit ONNX export"):
        OnnxSACViT(tmp_path)
    adaptive = save_tiny(tmp_path / "adaptive.safetensors", tiny_sacvit(cluster_mode="adaptive",
                                                                         adaptive_sizes=(2, 3, 4)))
    assert main(["export", "--checkpoint", str(adaptive), "--out", str(tmp_path / "no")]) == 2
    assert "adaptive" in capsys.readouterr().err


@pytest.mark.slow
def test_the_exit_score_travels_with_the_export(tmp_path, x):
    """A checkpoint whose η is compared with the margin: the ONNX EE graph computes the margin and
    the runtime's exits equal eager predict's."""
    path = save_tiny(tmp_path / "last.safetensors", tiny_sacvit(exit_score="margin"))
    model = sacvit.from_pretrained(path)
    export_onnx(model, tmp_path / "onnx")
    runtime = OnnxSACViT(tmp_path / "onnx", threads=1)
    assert runtime.sac_config.exit_score == "margin"
    for thr in (0.2, 0.5):
        assert_same(model.predict(x, thr), runtime.predict(x, thr), 1e-4)
