"""The README's promises: every Python snippet runs as written, and its commands agree with the CLI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from sacvit.cli.train import IMAGENET_RECIPE

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The files the snippets name: a DeiT-S checkpoint and trained demo checkpoints (tiny weights)."""
    from sacvit.io.checkpoint import CheckpointMeta, save_checkpoint

    d = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    save_file(timm.create_model("deit_small_patch16_224").state_dict(), str(d / "deit_small_patch16_224.safetensors"))
    for name, model in (("sacvit", "sacvit_demo_patch8_112"), ("baseline", "deit_demo_patch8_112")):
        net = timm.create_model(model)
        save_checkpoint(d / "runs" / "demo" / name / "last.safetensors", net, CheckpointMeta(
            model_name=model, sac_config=getattr(net, "sac_config", None), class_names=[f"c{i}" for i in range(10)]))
    return d


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_every_python_snippet_runs_as_written(workdir, index):
    proc = subprocess.run([sys.executable, "-c", SNIPPETS[index]], cwd=workdir, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"README snippet {index} failed:\n{SNIPPETS[index]}\n{proc.stderr[-2000:]}"


def test_the_imagenet_recipe_is_the_one_train_help_shows(capsys):
    import sacvit.cli

    assert IMAGENET_RECIPE in README.read_text()
    with pytest.raises(SystemExit):
        sacvit.cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert " ".join(IMAGENET_RECIPE.replace("\\\n", " ").split()) in help_text.replace(" \\ ", " ")
