"""CUDA checks (run by scripts/gpu_check.sh on a GPU machine; skipped where there is no GPU)."""

import warnings

import pytest
import torch

from conftest import make_tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _syncs(fn) -> list[str]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
            torch.cuda.set_sync_debug_mode(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]


def test_cuda_predict_equals_cpu(images):
    cpu = make_tiny()
    gpu = make_tiny().cuda()
    with torch.no_grad():
        threshold = float(cpu.forward_ee(images).logits.softmax(-1).amax(-1).median())
    for t in (0.0, threshold, 2.0):
        a, b = cpu.predict(images, t), gpu.predict(images.cuda(), t)
        assert torch.equal(a.stage, b.stage.cpu()) and torch.equal(a.box, b.box.cpu())
        assert torch.allclose(a.logits, b.logits.cpu(), atol=1e-4)


def test_training_forward_never_syncs_and_predict_syncs_once(images):
    model = make_tiny().cuda().train()
    x = images.cuda()
    assert _syncs(lambda: model(x)) == []
    assert _syncs(lambda: model(x, full_window=True)) == []
    model.eval()
    with torch.no_grad():
        threshold = float(model.forward_ee(x).logits.softmax(-1).amax(-1).median())
    assert len(_syncs(lambda: model.predict(x, threshold))) == 1  # the exit decision


def test_bf16_autocast_predict(images):
    model = make_tiny().cuda()
    ref = model.predict(images.cuda(), 2.0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = model.predict(images.cuda(), 2.0)
    assert torch.isfinite(got.logits.float()).all()
    assert (got.logits.float() - ref.logits).abs().max() < 0.15
