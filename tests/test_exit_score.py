"""The exit score option: one function behind eager predict, the stage graphs and the records."""

import pytest
import torch

from sacvit import SACConfig
from sacvit.engine.evaluate import collect
from sacvit.model.exit_score import exit_score
from sacvit.model.stages import EEStage, SACStage, geometry, staged_predict

from conftest import make_tiny


def test_scores_by_hand():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    assert torch.allclose(exit_score(logits), torch.tensor([0.6, 0.6]))
    assert torch.allclose(exit_score(logits, "margin"), torch.tensor([0.3, 0.4]))
    sharp = exit_score(logits, "temperature", 0.5)  # p² renormalised: 0.36 / 0.46
    assert torch.allclose(sharp[0], torch.tensor(0.36 / 0.46))
    with pytest.raises(ValueError, match="exit_score"):
        exit_score(logits, "entropy")
    with pytest.raises(ValueError, match="exit_score"):
        SACConfig(exit_score="entropy")


@pytest.mark.parametrize("score", ["margin", "temperature"])
def test_predict_the_stages_and_the_records_compare_eta_with_the_configured_score(score):
    model = make_tiny(exit_score=score, exit_temperature=0.3).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ee = model.forward_ee(x)
        want = exit_score(ee.logits, score, 0.3)
        assert not torch.allclose(want, exit_score(ee.logits))  # it is another score
        eta = float(want.median())
        pred = model.predict(x, eta)
        assert torch.allclose(pred.confidence, want) and torch.equal(pred.stage, (want < eta).long())
        staged = staged_predict(EEStage(model), SACStage(model), x, eta, geometry(model))
        assert torch.equal(staged.stage, pred.stage)
    records = collect(model, list(zip(x, torch.zeros(8, dtype=torch.long))), batch_size=4)
    assert torch.allclose(torch.as_tensor(records.confidence), want)
