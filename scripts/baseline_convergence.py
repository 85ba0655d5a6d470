"""Does more training help the demo's baseline? Fine-tune it for N epochs instead of the preset's.

    .venv/bin/python scripts/baseline_convergence.py --reference runs/full --epochs 8 --out runs/full_baseline8

Fine-tunes the plain ViT from the stand-in with the demo's recipe for ``--epochs`` epochs of the
``--reference`` run's training images (its ``demo_config.json``), then prints its held-out curve
and its test-split top-1 paired against the reference run's reported baseline (its fine-tune, or
the stand-in when that was better on held-out data; bootstrap interval and McNemar's exact test).
Writes OUT/result.json. The training cache of the reference run is reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sacvit.demo import DemoConfig
from sacvit.demo.evidence import Evidence, paired, plain_row
from sacvit.demo.pipeline import evaluation_datasets
from sacvit.demo.runs import PLAIN_MODEL, fine_tune
from sacvit.standin import standin_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="a finished `sacvit demo` folder, e.g. runs/full")
    p.add_argument("--epochs", type=int, required=True, help="fine-tuning epochs of the longer run, e.g. 8")
    p.add_argument("--out", required=True, help="output folder, e.g. runs/full_baseline8")
    args = p.parse_args(argv)
    ref = Path(args.reference)
    if not (ref / "demo_config.json").is_file() or not (ref / "baseline" / "last.safetensors").is_file():
        print(f"{ref} is not a finished `sacvit demo` folder (no demo_config.json / baseline)", file=sys.stderr)
        return 2
    saved = json.loads((ref / "demo_config.json").read_text())
    saved.pop("recipe", None)  # the demo's recipe (sacvit.demo.Recipe) is used as it is
    cfg = dataclasses.replace(DemoConfig(**saved), out=args.out, ablations=False, bench=False,
                              overrides={**saved.get("overrides", {}), "epochs": args.epochs})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "cache").exists():
        (out / "cache").symlink_to((ref / "cache").resolve())
    longer = fine_tune(cfg, "baseline", PLAIN_MODEL, standin_path(cfg.standin))
    reference = ref / "baseline" / "last.safetensors"  # the reported baseline: the better on held-out data
    summary = ref / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("baseline_selection", {}).get("chosen") == "stand-in":
        reference = standin_path(cfg.standin)
    ev = Evidence(out, evaluation_datasets(cfg), cfg.seed)  # the demo's splits, per-image results cached
    result = {"epochs": args.epochs, "reference": str(ref)}
    for split in ("holdout", "test"):
        for name, ckpt in (("reference", reference), ("longer", longer)):
            row = plain_row(name, "baseline", ev.plain(ckpt, split), gmacs=float("nan"))
            result[f"{split}_{name}"] = {"top1": row["top1"], "low": row["top1_low"], "high": row["top1_high"]}
    result["test_longer_vs_reference"] = paired(ev.plain(reference, "test"), ev.plain(longer, "test"), cfg.seed)
    metrics = (out / "baseline" / "metrics.jsonl").read_text().splitlines()
    result["holdout_curve"] = [json.loads(line).get("val_top1") for line in metrics]
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
