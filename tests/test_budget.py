"""--time-budget: parsing, the fitted plan (consistent, stored, followed step for step), resume keeps it.

Nothing here asserts on wall time: the plan's own figures are checked against each other, and the
run's step count against the plan."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lordkit.config import LordConfig
from lordkit.errors import LordkitError
from lordkit.training import TrainingInterrupted, train_amortized, train_latent
from lordkit.training import budget
from lordkit.training.budget import BudgetError, Timing, fit_plan, parse_duration, stage_seconds

from conftest import one_line_error
from test_training import TINY_DATA, TINY_SET, data, interrupt_at, metrics, quiet, tiny_cfg  # noqa: F401

DATA_OPTS = [a for k, v in TINY_DATA.items() for a in ("--opt", f"{k}={v}")]
BUDGET_S = 1000.0  # with FAKE_STEP_S: 3 epochs of 3 steps fit, however loaded the machine is
FAKE_STEP_S = 100.0


@pytest.fixture
def fixed_timing(monkeypatch):
    """The timed steps run for real (and are put back), but report FAKE_STEP_S, so that the plan does
    not depend on how busy the machine is: 3 epochs of the tiny set fit in BUDGET_S."""
    real = budget.time_steps

    def time_steps(*args, **kw):
        _, n = real(*args, **{**kw, "min_s": 0.0})
        return FAKE_STEP_S, n

    monkeypatch.setattr(budget, "time_steps", time_steps)
    monkeypatch.setattr(budget, "time_checkpoint", lambda model, optimizer: 0.0)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                           ("45", 45), (" 2M ", 120), ("1d", 86400), ("10min", 600), ("0.5s", 0.5)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "0s", "abc", "", "-5m", "5x", "1h30", "m", "nan", "1e9999"])
def test_bad_durations_are_refused(text):
    with pytest.raises(BudgetError, match="--time-budget"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["0", "abc", "-1m"])
@pytest.mark.parametrize("command", ["train", "train-encoders", "demo"])
def test_cli_refuses_a_bad_budget_in_one_line(cli, command, value):
    args = ["-dn", "syn", "-mn", "m"] if command != "demo" else []
    line = one_line_error(cli(command, *args, "--time-budget", value))
    assert "--time-budget" in line


def test_plan_is_the_most_epochs_that_fit_with_the_schedule_scaled():
    section = LordConfig().replace(latent={"n_epochs": 300, "noise_warmup_epochs": 100.0,
                                           "sample_every_epochs": 10}).latent
    t = Timing(step_s=0.05, timed_steps=20, checkpoint_s=0.1, sample_s=0.4)
    plan = fit_plan("latent", section, budget_s=120.0, spent_s=10.0, steps_per_epoch=30, timing=t, now=1e9)
    n = plan["n_epochs"]
    left = 120.0 * (1 - budget.MARGIN_FRACTION) - 10.0
    assert stage_seconds(n, 30, plan["sample_every_epochs"], t) <= left
    every_next = max(1, round(10 * (n + 1) / 300))
    assert stage_seconds(n + 1, 30, every_next, t) > left
    assert plan["total_steps"] == 30 * n and plan["steps_per_epoch"] == 30
    assert plan["noise_warmup_epochs"] == pytest.approx(100.0 * n / 300)
    assert plan["sample_every_epochs"] == max(1, round(10 * n / 300))
    assert plan["expected_s"] <= 120.0 and plan["configured_n_epochs"] == 300
    with pytest.raises(BudgetError, match="does not fit one epoch"):
        fit_plan("latent", section, budget_s=5.0, spent_s=1.0, steps_per_epoch=300, timing=t)


def test_fitted_plan_is_stored_and_followed_and_trains_like_an_unbudgeted_run(data, tmp_path, fixed_timing):
    cfg = tiny_cfg("latent.n_epochs=200", "latent.noise_warmup_epochs=50", "latent.sample_every_epochs=4")
    seen = []
    result = train_latent(data, tmp_path / "a", cfg, time_budget_s=BUDGET_S, announce=seen.append, **quiet())
    plan = result["plan"]
    assert seen == [plan]
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["latent"]
    assert saved["plan"] == plan
    assert saved["n_epochs"] == plan["n_epochs"] == 3
    assert saved["noise_warmup_epochs"] == pytest.approx(50.0 * plan["n_epochs"] / 200)
    assert saved["sample_every_epochs"] == plan["sample_every_epochs"]
    assert result["steps"] == plan["total_steps"] == plan["n_epochs"] * plan["steps_per_epoch"]
    assert metrics(tmp_path / "a", "latent")[-1]["step"] == plan["total_steps"]
    assert plan["step_s"] > 0 and plan["timed_steps"] >= budget.MIN_TIMED_STEPS

    # The timed steps are put back: the same epochs without a budget give the same weights.
    same = cfg.replace(latent={k: plan[k] for k in budget.SCHEDULE_FIELDS})
    train_latent(data, tmp_path / "b", same, **quiet())
    a, b = load_file(tmp_path / "a" / "latent.safetensors"), load_file(tmp_path / "b" / "latent.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)

    # Stage 2 fits its own budget; a run without one drops the old plan.
    r2 = train_amortized(data, tmp_path / "a", time_budget_s=BUDGET_S, announce=lambda p: None, **quiet())
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["amortized"]
    assert saved["plan"] == r2["plan"] and r2["steps"] == r2["plan"]["total_steps"] == saved["n_epochs"] * 3
    train_amortized(data, tmp_path / "a", force=True, changes={"n_epochs": 1}, **quiet())
    assert json.loads((tmp_path / "a" / "config.json").read_text())["amortized"]["plan"] == {}


def test_a_resumed_run_keeps_its_plan(data, tmp_path, fixed_timing):
    m = tmp_path / "m"
    cfg = tiny_cfg("latent.n_epochs=100")
    with pytest.raises(TrainingInterrupted):
        train_latent(data, m, cfg, time_budget_s=BUDGET_S, announce=lambda p: None, **quiet(on_step=interrupt_at(4)))
    plan = json.loads((m / "config.json").read_text())["latent"]["plan"]
    seen = []
    result = train_latent(data, m, cfg, resume=True, time_budget_s=600.0, announce=seen.append, **quiet())
    assert seen == []  # nothing timed or fitted again
    assert json.loads((m / "config.json").read_text())["latent"]["plan"] == plan
    assert result["steps"] == plan["total_steps"] and result["plan"] == plan


@pytest.mark.parametrize("done, n_epochs, epoch_s, left_s, want", [
    (2, 10, 1.0, 8.0, 10),  # the rest fits exactly
    (2, 10, 1.0, 7.95, 10),  # within a tenth of an epoch
    (2, 10, 1.0, 5.5, 7),  # behind: as many more as fit
    (2, 10, 1.0, 0.5, 2),  # none more fits: stop at the end of this one
    (2, 10, 1.0, -30.0, 2),  # past the deadline already
    (1, 10, 60.0, -1.0, 1),
])
def test_deadline_fits_the_epochs_left(done, n_epochs, epoch_s, left_s, want):
    assert budget.Deadline.fit(done, n_epochs, epoch_s, left_s) == want


def _deadline_with(monkeypatch, fit):
    """budget.deadline as shipped, with Deadline.fit replaced: the run's shortening without depending on
    how fast the machine is."""
    real = budget.deadline

    def make(*args, **kw):
        d = real(*args, **kw)
        if d is not None:
            monkeypatch.setattr(d, "fit", fit)
        return d

    for module in ("lordkit.training.latent", "lordkit.training.amortized"):
        monkeypatch.setattr(f"{module}.deadline", make)


@pytest.mark.parametrize("to_epochs", [1, 2])
def test_a_run_behind_its_budget_is_shortened_and_recorded(data, tmp_path, fixed_timing, monkeypatch, to_epochs):
    from lordkit.modeldir import checkpoint_progress, load_config, stage_settings, stage_weights

    _deadline_with(monkeypatch, lambda done, n, epoch_s, left_s: to_epochs if done >= 1 else n)
    m = tmp_path / "m"
    cfg = tiny_cfg("latent.n_epochs=200", "latent.lr_min=1e-5")
    result = train_latent(data, m, cfg, time_budget_s=BUDGET_S, announce=lambda p: None, **quiet())
    saved = load_config(m)
    plan = saved.latent.plan
    assert plan["n_epochs"] == saved.latent.n_epochs == to_epochs and result["plan"] == plan
    assert plan["shortened"][0]["from_epochs"] == 3 and plan["shortened"][-1]["to_epochs"] == to_epochs
    assert result["steps"] == plan["total_steps"] == to_epochs * plan["steps_per_epoch"]
    rows = metrics(m, "latent")
    assert rows[-1]["step"] == plan["total_steps"]
    if to_epochs > 1:  # shortened with steps to go: the cosine decay ends at the shortened end
        assert rows[-1]["lr"] == pytest.approx(1e-5, abs=1e-9)
    assert (m / "samples" / f"latent-epoch-{to_epochs:04d}.png").is_file()
    # The last checkpoint is written under the shortened settings: it finishes the stage by itself.
    progress = checkpoint_progress(m, "latent")
    assert progress["total_steps"] == plan["total_steps"] and progress["settings"] == stage_settings(saved, "latent")
    weights = (m / "latent.safetensors").read_bytes()
    (m / "latent.safetensors").unlink()
    assert stage_weights(m, "latent").read_bytes() == weights
    with pytest.raises(LordkitError, match="complete"):
        train_latent(data, m, cfg, resume=True, **quiet())
    # Stage 2 keeps a deadline of its own.
    r2 = train_amortized(data, m, time_budget_s=BUDGET_S, announce=lambda p: None, **quiet())
    assert r2["plan"]["n_epochs"] == to_epochs and load_config(m).amortized.n_epochs == to_epochs


class Killed(BaseException):
    """A process killed outright, as far as the code after the raise is concerned."""


def test_a_run_killed_while_it_is_shortened_resumes_to_the_same_weights(data, tmp_path, fixed_timing, monkeypatch):
    _deadline_with(monkeypatch, lambda done, n, epoch_s, left_s: 2 if done >= 1 else n)
    cfg = tiny_cfg("latent.n_epochs=200")
    run = dict(time_budget_s=BUDGET_S, announce=lambda p: None)
    whole = train_latent(data, tmp_path / "a", cfg, **run, **quiet())
    assert whole["plan"]["shortened"][0] == {**whole["plan"]["shortened"][0], "from_epochs": 3, "to_epochs": 2}

    # Killed after config.json has the new length, before the checkpoint under it.
    real = budget.Deadline.shorten

    def shorten_then_die(self, n_epochs, step):
        real(self, n_epochs, step)
        raise Killed

    monkeypatch.setattr(budget.Deadline, "shorten", shorten_then_die)
    with pytest.raises(Killed):
        train_latent(data, tmp_path / "b", cfg, **run, **quiet())
    monkeypatch.setattr(budget.Deadline, "shorten", real)
    resumed = train_latent(data, tmp_path / "b", cfg, resume=True, **quiet())
    assert resumed["steps"] == whole["steps"]
    a, b = load_file(tmp_path / "a" / "latent.safetensors"), load_file(tmp_path / "b" / "latent.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_run_on_time_is_not_shortened(data, tmp_path, fixed_timing):
    # FAKE_STEP_S makes the plan expect 300 s an epoch; the real epochs are far quicker.
    result = train_latent(data, tmp_path / "m", tiny_cfg("latent.n_epochs=200"), time_budget_s=BUDGET_S,
                          announce=lambda p: None, **quiet())
    assert "shortened" not in result["plan"] and result["steps"] == result["plan"]["total_steps"]


def test_cli_prints_and_stores_the_plan_and_refuses_epochs_with_a_budget(cli, base, fixed_timing):
    assert cli("preprocess", "-di", "synthetic", "-dn", "syn", "--img-size", "32", *DATA_OPTS).exit_code == 0
    r = cli("train", "-dn", "syn", "-mn", "m", *TINY_SET, "--device", "cpu", "--no-tensorboard",
            "--time-budget", "1000s")
    assert r.exit_code == 0, r.output
    plan = json.loads((base / "models" / "m" / "config.json").read_text())["latent"]["plan"]
    assert f"-> {plan['n_epochs']} epochs" in r.stdout and "time budget 16m40s" in r.stdout
    assert f"stage 1 done: {plan['total_steps']} steps" in r.stdout
    line = one_line_error(cli("train-encoders", "-dn", "syn", "-mn", "m", "--epochs", "2", "--time-budget", "1m"))
    assert "give one of them" in line


def test_long_unbudgeted_cpu_run_is_announced(data, tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "ESTIMATE_ABOVE_STEPS", 1)
    monkeypatch.setattr(budget, "LONG_RUN_S", 0.0)
    seen = []
    train_latent(data, tmp_path / "m", tiny_cfg("latent.n_epochs=1"), announce=seen.append, **quiet())
    assert len(seen) == 1 and seen[0]["total_steps"] == 3 and seen[0]["step_s"] > 0

    from lordkit.cli.train import _announcer

    lines = []
    monkeypatch.setattr("lordkit.cli.train.say", lines.append)
    _announcer("latent", "celeba")(seen[0])
    _announcer("latent", "small")(seen[0])
    assert "--time-budget" in lines[0] and "--preset small" in lines[0]
    assert "--time-budget" in lines[1] and "--preset small" not in lines[1]


def test_plan_cannot_be_set_by_hand():
    with pytest.raises(LordkitError, match="written by --time-budget"):
        LordConfig().apply_overrides(["latent.plan=x"])
