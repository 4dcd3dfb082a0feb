"""model.json beside model.pt, and `downpour eval RUN_DIR`: the saved model scores exactly as the run did."""

import json
import os

import pytest
import torch

from ps.cli import main
from replicas import data
from replicas.evaluator import CLASSES, score
from replicas.models import build_model


def test_score_matches_a_hand_computed_accuracy_and_loss():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    synthetic = data.synthetic(seed=3, train_size=10, test_size=30)
    images, labels = synthetic.test_images, synthetic.test_labels
    with torch.no_grad():
        logits = model(torch.from_numpy(data.normalise(images)))
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item()
    expected_acc = (logits.argmax(1).numpy() == labels).mean()
    accuracy, loss = score(model, images, labels, batch=7)  # batches of 7: 4 full and one of 2
    assert accuracy == pytest.approx(expected_acc, abs=1e-12)
    assert loss == pytest.approx(expected_loss, rel=1e-5)


def test_eval_on_a_run_dir_without_model_json_exits_2(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"")
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "holds no model.json" in err[0]


def test_eval_on_a_corrupt_model_pt_exits_2(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    (tmp_path / "model.json").write_text(json.dumps({"model": "mlp", "seed": 0}))
    (tmp_path / "config.yaml").write_text("dataset: synthetic\n")
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "model.pt: cannot load it into model 'mlp'" in err[0], err


# Ray-using tests stay last, as in test_cli.py.

@pytest.mark.ray
def test_eval_prints_the_summary_test_accuracy_exactly(ray_session, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--model", "mlp", "--replicas", "1", "--shards", "2",
                 "--steps", "30", "--batch-size", "32", "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()

    assert main(["eval", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = dict(line.split(" ", 1) for line in lines[:2])
    assert float(printed["test_accuracy"]) == summary["test_accuracy"]
    assert float(printed["test_loss"]) == summary["test_loss"]
    assert f"on {summary['test_samples']} test samples" in lines[2]

    meta = json.loads((run / "model.json").read_text())
    model = build_model("mlp", 0)
    assert meta["model"] == "mlp" and meta["input_shape"] == [1, 28, 28]
    assert meta["classes"] == list(CLASSES) and len(meta["classes"]) == 10
    assert (meta["normalise"]["mean"], meta["normalise"]["std"]) == (data.MEAN, data.STD)
    assert meta["parameters"] == sum(p.numel() for p in model.parameters()) == 203_530
    assert meta["software"]["torch"] == torch.__version__
    assert len(meta["shard_versions"]) == 2

    # the load snippet in model.json works as written, from the run directory
    cwd, scope = os.getcwd(), {}
    os.chdir(run)
    try:
        exec(meta["load"], scope)
    finally:
        os.chdir(cwd)
    saved = torch.load(run / "model.pt")
    assert all(torch.equal(v, saved[k]) for k, v in scope["model"].state_dict().items())
