"""`downpour eval`: a run's model.pt and model.json back into a model, scored as the run scored it.

Plain torch, no Ray: the model is rebuilt by name, its state_dict loaded, and the test set scored
by replicas.evaluator.score, the function the run's final evaluation used.
"""

import json
from pathlib import Path
from typing import Optional

import yaml

from ps.common import rundir
from ps.common.errors import UserError


def read_run_model(path: Path) -> tuple[dict, dict, dict]:
    """(model.json, config.yaml, summary.json or {}) of a run directory holding a model.pt."""
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        raise UserError(f"run directory {path} {state}: give the folder `downpour train` printed")
    from replicas.evaluator import META_NAME

    for name in (rundir.MODEL_NAME, META_NAME, rundir.CONFIG_NAME):
        if not (path / name).is_file():
            raise UserError(f"{path} holds no {name}: give the folder of a run that ended with an "
                            "evaluation (`downpour train` writes model.pt and model.json then)")
    try:
        meta = json.loads((path / META_NAME).read_text())
        config = yaml.safe_load((path / rundir.CONFIG_NAME).read_text()) or {}
        summary = rundir.read_summary(path) if (path / rundir.SUMMARY_NAME).is_file() else {}
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read its run files ({exc})") from None
    return meta, config, summary


def load_model(path: Path, meta: dict):
    """The model of model.json with model.pt's parameters, in eval mode."""
    import torch

    from replicas.models import build_model

    model = build_model(meta["model"], meta.get("seed", 0))
    try:
        model.load_state_dict(torch.load(path / rundir.MODEL_NAME))
    except Exception as exc:  # a truncated file, or a state_dict of another model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path / rundir.MODEL_NAME}: cannot load it into model "
                        f"{meta['model']!r} ({first})") from None
    return model.eval()


def score_run(path: Path, data_dir: Optional[str]) -> tuple[float, Optional[float], int, str]:
    """(accuracy, loss, test samples, dataset description) of the run's saved model."""
    from replicas.data import load_dataset
    from replicas.evaluator import EVAL_BATCH, score

    meta, config, summary = read_run_model(path)
    model = load_model(path, meta)
    data = load_dataset(config.get("dataset", "fashion-mnist"), data_dir or config.get("data_dir"),
                        config.get("seed", 0))
    # the run's final evaluation may have used part of the test set (a dry run does)
    n = min(summary.get("test_samples") or len(data.test_labels), len(data.test_labels))
    accuracy, loss = score(model, data.test_images[:n], data.test_labels[:n], EVAL_BATCH)
    described = data.source if data.name == "synthetic" else f"{data.name} in {data.source}"
    return accuracy, loss, n, described
