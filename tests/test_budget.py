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
from lordkit.training.budget import BudgetError, Timing, fit_plan, parse_duration, steps_seconds

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


def test_plan_is_the_most_steps_that_fit_with_the_schedule_scaled():
    section = LordConfig().replace(latent={"n_epochs": 300, "noise_warmup_epochs": 100.0,
                                           "sample_every_epochs": 10}).latent
    t = Timing(step_s=0.05, timed_steps=20, checkpoint_s=0.1, sample_s=0.4)
    plan = fit_plan("latent", section, budget_s=120.0, spent_s=10.0, steps_per_epoch=30, timing=t, now=1e9)
    total, n = plan["total_steps"], plan["n_epochs"]
    left = 120.0 * (1 - budget.MARGIN_FRACTION) - 10.0

    def cost(steps):
        epochs = -(-steps // 30)
        return steps_seconds(steps, 30, max(1, round(10 * epochs / 300)), t)

    assert cost(total) <= left + 1e-9 < cost(total + 1)
    assert (n - 1) * 30 < total <= n * 30 and total % 30  # these figures leave part of an epoch
    assert plan["steps_per_epoch"] == 30 and plan["planned_steps"] == total
    assert plan["noise_warmup_epochs"] == pytest.approx(100.0 * total / 30 / 300)
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


@pytest.mark.parametrize("done, total, left_s, want", [
    (20, 100, 80.0, 100),  # the rest fits exactly
    (20, 100, 79.5, 100),  # within the slack
    (20, 100, 50.0, 69),  # behind: as many as fit, less a slack
    (20, 100, 0.5, 21),  # none more fits: stop after the next step
    (20, 100, -30.0, 21),  # past the deadline already
    (20, 70, 80.0, 99),  # shortened, then ahead again: as many as fit less a slack
    (20, 70, 500.0, 100),  # ... never more than the plan's
    (20, 70, 52.5, 70),  # ahead by less than two slacks: left as it is
    (20, 100, 500.0, 100),  # a run on time is never lengthened past its plan
])
def test_deadline_fits_the_steps_left(done, total, left_s, want):
    assert budget.Deadline.fit(done, total, 100, 1.0, left_s, 1.0) == want


def test_a_passing_slowdown_shortens_a_run_and_its_end_lengthens_it_again():
    """The deadline's rule followed through a simulated run: steps of 0.1 s planned to fill 600 s, a
    spell three times slower from 60 to 120 s; the run ends within its budget and within 5% of it,
    and no longer than planned."""
    budget_s, step_s, at = 600.0, 0.1, 600.0 * (1 - budget.MARGIN_FRACTION)
    planned = total = int(at / step_s)
    slack_s, window_s = budget.Deadline.SLACK_FRACTION * budget_s, budget.Deadline.WINDOW_FRACTION * budget_s
    now, step, marks, changes = 0.0, 0, [(0.0, 0)], []
    while step < total:
        now += step_s * (3 if 60 <= now < 120 else 1)
        step += 1
        if step % 50 == 0:  # a loss read
            older = [(t, s) for t, s in marks if t <= now - window_s]
            t0, s0 = older[-1] if older else marks[0]
            if now - t0 >= window_s:
                new = budget.Deadline.fit(step, total, planned, (now - t0) / (step - s0), at - now, slack_s)
                if new != total:
                    changes.append((step, total, new))
                    total = new
            marks.append((now, step))
    assert [c for c in changes if c[2] < c[1]] and [c for c in changes if c[2] > c[1]]  # shortened, then lengthened
    assert 0.95 * budget_s <= now <= budget_s and total <= planned


def _deadline_with(monkeypatch, fit):
    """budget.deadline as shipped, with Deadline.fit replaced and the pace read from the first step on:
    the run's refitting without depending on how fast the machine is."""
    real = budget.deadline
    monkeypatch.setattr(budget.Deadline, "WINDOW_FRACTION", 0.0)

    def make(*args, **kw):
        d = real(*args, **kw)
        if d is not None:
            monkeypatch.setattr(d, "fit", fit)
        return d

    for module in ("lordkit.training.latent", "lordkit.training.amortized"):
        monkeypatch.setattr(f"{module}.deadline", make)


@pytest.mark.parametrize("to_steps", [4, 6])
def test_a_run_behind_its_budget_is_shortened_and_recorded(data, tmp_path, fixed_timing, monkeypatch, to_steps):
    from lordkit.modeldir import checkpoint_progress, load_config, stage_settings, stage_weights

    # The tiny set has 3 steps an epoch and its plan 3 epochs; at the end of the first, the rest is cut.
    _deadline_with(monkeypatch, lambda done, total, most, step_s, left_s, slack_s: to_steps if done >= 3 else total)
    m = tmp_path / "m"
    cfg = tiny_cfg("latent.n_epochs=200", "latent.lr_min=1e-5")
    result = train_latent(data, m, cfg, time_budget_s=BUDGET_S, announce=lambda p: None, **quiet())
    saved = load_config(m)
    plan = saved.latent.plan
    epochs = -(-to_steps // 3)
    assert plan["n_epochs"] == saved.latent.n_epochs == epochs and result["plan"] == plan
    assert plan["refits"][0]["from_steps"] == plan["planned_steps"] == 9 and plan["refits"][-1]["to_steps"] == to_steps
    assert result["steps"] == plan["total_steps"] == to_steps
    rows = metrics(m, "latent")
    assert rows[-1]["step"] == plan["total_steps"]
    assert rows[-1]["lr"] == pytest.approx(1e-5, abs=1e-9)  # the cosine decay ends at the shortened end
    assert (m / "samples" / f"latent-epoch-{epochs:04d}.png").is_file()
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
    assert r2["plan"]["total_steps"] == to_steps and load_config(m).amortized.n_epochs == epochs


def test_a_run_ahead_of_its_budget_is_lengthened(data, tmp_path, fixed_timing, monkeypatch):
    # Cut to 5 steps at the end of the first epoch, then given 7 at the next loss read (mid-epoch).
    most_seen = set()

    def fit(done, total, most, step_s, left_s, slack_s):
        most_seen.add(most)
        return {3: 5, 4: 7}.get(done, total)

    _deadline_with(monkeypatch, fit)
    m = tmp_path / "m"
    result = train_latent(data, m, tiny_cfg("latent.n_epochs=200", "latent.lr_min=1e-5"), time_budget_s=BUDGET_S,
                          announce=lambda p: None, **quiet())
    plan = result["plan"]
    assert [(r["at_step"], r["from_steps"], r["to_steps"]) for r in plan["refits"]] == [(3, 9, 5), (4, 5, 7)]
    assert most_seen == {2 * 9}  # a run may grow to twice its plan's steps
    assert result["steps"] == plan["total_steps"] == 7 and plan["n_epochs"] == 3
    rows = metrics(m, "latent")
    assert [r["step"] for r in rows if "loss" in r][-1] == 7 and rows[-1]["lr"] == pytest.approx(1e-5, abs=1e-9)
    assert sorted(p.name for p in (m / "samples").glob("latent-*.png")) == [
        f"latent-epoch-{e:04d}.png" for e in (1, 2, 3)]


class Killed(BaseException):
    """A process killed outright, as far as the code after the raise is concerned."""


def test_a_run_killed_while_it_is_shortened_resumes_to_the_same_weights(data, tmp_path, fixed_timing, monkeypatch):
    _deadline_with(monkeypatch, lambda done, total, most, step_s, left_s, slack_s: 5 if done >= 3 else total)
    cfg = tiny_cfg("latent.n_epochs=200")
    run = dict(time_budget_s=BUDGET_S, announce=lambda p: None)
    whole = train_latent(data, tmp_path / "a", cfg, **run, **quiet())
    assert whole["plan"]["refits"][0] == {**whole["plan"]["refits"][0], "from_steps": 9, "to_steps": 5}

    # Killed after config.json has the new length, before the checkpoint under it.
    real = budget.Deadline.refit

    def refit_then_die(self, total_steps, step):
        real(self, total_steps, step)
        raise Killed

    monkeypatch.setattr(budget.Deadline, "refit", refit_then_die)
    with pytest.raises(Killed):
        train_latent(data, tmp_path / "b", cfg, **run, **quiet())
    monkeypatch.setattr(budget.Deadline, "refit", real)
    resumed = train_latent(data, tmp_path / "b", cfg, resume=True, **quiet())
    assert resumed["steps"] == whole["steps"]
    a, b = load_file(tmp_path / "a" / "latent.safetensors"), load_file(tmp_path / "b" / "latent.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_run_on_time_is_not_shortened(data, tmp_path, fixed_timing):
    # FAKE_STEP_S makes the plan expect 300 s an epoch; the real epochs are far quicker.
    result = train_latent(data, tmp_path / "m", tiny_cfg("latent.n_epochs=200"), time_budget_s=BUDGET_S,
                          announce=lambda p: None, **quiet())
    assert "refits" not in result["plan"] and result["steps"] == result["plan"]["total_steps"]


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


@pytest.mark.parametrize("steps", ["abc", 0, -5, True, 2.5])
def test_a_plan_edited_into_nonsense_is_refused_on_loading(steps):
    doc = LordConfig().to_json()
    doc["amortized"]["plan"] = {"total_steps": steps}
    with pytest.raises(LordkitError, match="amortized.plan.total_steps must be a whole number"):
        LordConfig.from_json(doc)


def test_a_command_counts_its_budget_from_its_process_start():
    import subprocess
    import sys

    from lordkit import clock
    from lordkit.cli.app import main

    code = ("import time; time.sleep(1.0); from lordkit import clock; clock.mark_process_start(); "
            "print(time.monotonic() - clock.command_start())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert age >= 1.0  # the sleep before the mark counts
    with pytest.raises(SystemExit):  # a command run in-process (args given) marks nothing
        main(["--version"])
    assert clock._started is None
