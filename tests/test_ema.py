"""train.ema_decay: the weight average against a plain recursion, swapped in and out exactly,
saved as the best model, and resumed mid-epoch to the same numbers as an uninterrupted run."""
from __future__ import annotations


import pytest
import torch

from mmrec.training.ema import WeightAverage
from tests.resuming import interrupted_copy


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    m[1].bias.requires_grad_(False)   # frozen: never averaged, never touched
    return m


def test_average_follows_the_warm_up_recursion_and_skips_frozen_weights():
    m = _model()
    ema = WeightAverage(m, decay=0.8)
    assert set(ema.shadow) == {"0.weight", "0.bias", "1.weight"}
    w = m[0].weight
    want = w.detach().clone().double()
    for n in range(40):
        with torch.no_grad():
            w.add_(torch.randn_like(w))
        d = min(0.8, (1 + n) / (10 + n))       # 0.1, 0.18, ..., then 0.8 from n = 31 on
        want = d * want + (1 - d) * w.detach().double()
        ema.update()
    torch.testing.assert_close(ema.shadow["0.weight"].double(), want, rtol=1e-5, atol=1e-5)   # a float32 shadow
    assert ema.updates == 40 and ema.rate() == 0.8


def test_swapped_in_holds_the_average_then_restores_the_trained_weights_bit_for_bit():
    m = _model()
    ema = WeightAverage(m, decay=0.9)
    for _ in range(4):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
    live = {n: p.detach().clone() for n, p in m.named_parameters()}
    with ema.swapped_in():
        assert torch.equal(m[0].weight, ema.shadow["0.weight"])
        assert not torch.equal(m[0].weight, live["0.weight"])
        assert torch.equal(m[1].bias, live["1.bias"])
    for n, p in m.named_parameters():
        assert torch.equal(p, live[n])
    with pytest.raises(RuntimeError), ema.swapped_in():   # restored on an error too
        raise RuntimeError("evaluation failed")
    assert torch.equal(m[0].weight, live["0.weight"])


def test_state_round_trip_and_decay_checked():
    a, b = WeightAverage(_model(), 0.9), WeightAverage(_model(), 0.9)
    a.shadow["0.weight"].add_(1.0)
    a.updates = 7
    b.load_state_dict(a.state_dict())
    assert b.updates == 7 and torch.equal(b.shadow["0.weight"], a.shadow["0.weight"])
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(_model(), 1.0)


# ------------------------------------------------------------------------- end to end (tiny)
EMA = ["train.ema_decay=0.9", "train.epochs=2", "train.max_steps_per_epoch=6", "eval.every_epochs=2",
       "train.checkpoint_every_steps=3", "train.keep_checkpoints=100", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, tiny_overrides):
    from mmrec.config import load_config
    from mmrec.training.trainer import train
    run_dir = tmp_path_factory.mktemp("ema") / "run"
    return train(load_config("configs/tiny.yaml", tiny_overrides + EMA + [f"run_dir={run_dir}"]))


def test_the_saved_model_is_the_average_and_evaluates_to_the_reported_metrics(ema_run):
    from safetensors.torch import load_file
    from mmrec.export import evaluate_run
    run_dir, metrics = ema_run
    assert metrics["best_epoch"] == 2
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    states = [torch.load(p, weights_only=False) for p in last.glob("custom_checkpoint_*.pkl")]
    avg = next(s for s in states if isinstance(s, dict) and "shadow" in s)
    assert avg["updates"] == 12
    saved = load_file(str(run_dir / "model/model.safetensors"))
    live = load_file(str(last / "model.safetensors"))
    name = next(n for n in avg["shadow"] if n.startswith("user_embedding"))
    assert torch.equal(saved[name], avg["shadow"][name].to(saved[name].dtype))
    assert not torch.equal(saved[name], live[name])      # the checkpoint keeps training's weights
    assert evaluate_run(run_dir)["test"] == pytest.approx(metrics["test"], abs=1e-9)


def test_resume_mid_epoch_with_the_average_is_exact(ema_run, tmp_path):
    from mmrec.config import load_config
    from mmrec.training.trainer import train
    run_dir, metrics = ema_run
    resumed = tmp_path / "resumed"
    state = interrupted_copy(run_dir, resumed, step=3)
    assert state["epoch"] == 0 and state["batch"] == 3
    _, again = train(load_config(resumed / "config.yaml"), resume_dir=resumed)
    assert again["val"] == metrics["val"] and again["test"] == metrics["test"]
