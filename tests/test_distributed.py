"""Two processes under torchrun (gloo, CPU): sharded content table, resume across world sizes, failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lordkit.data.preprocess import preprocess
from lordkit.data.sources import Options
from lordkit.distributed import Dist, owned_indices
from lordkit.training.checkpoint import ADAM_MOMENTS, ShardedTable, full_states, load_full_states
from test_training import TINY_DATA, TINY_SET

pytestmark = pytest.mark.slow


def test_owned_indices_partition_every_image_once():
    n = 103
    for world in (1, 2, 3, 8):
        shares = [owned_indices(n, Dist(world, r), seed=5) for r in range(world)]
        allidx = np.concatenate(shares)
        assert sorted(allidx.tolist()) == list(range(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert all((np.diff(s) > 0).all() for s in shares)
    a = owned_indices(n, Dist(2, 0), seed=5)
    assert a.tolist() == owned_indices(n, Dist(2, 0), seed=5).tolist()
    assert a.tolist() != owned_indices(n, Dist(2, 0), seed=6).tolist()


@pytest.fixture
def home(tmp_path):
    base = tmp_path / "home"
    preprocess("synthetic", None, base / "data" / "syn", img_size=32, opts=Options(dict(TINY_DATA)),
               show_progress=False)
    return base


def torchrun(home, *args, nproc=2, popen=False):
    env = {**os.environ, "LORDKIT_HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "lordkit", *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def lordkit(home, *args):
    env = {**os.environ, "LORDKIT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "lordkit", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def rows(home, stage="latent"):
    lines = (home / "models" / "m" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == stage]


def wait_for_rows(home, n, proc, timeout=120):
    f = home / "models" / "m" / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if f.exists() and len(f.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no progress: {proc.poll()}")


def _gather_worker(rank: int, world: int, init_file: str) -> None:
    """One rank of a gloo group: trains its own rows of a table one Adam step, gathers the table and
    its moments into image order, and loads them back."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        d, n_imgs, seed = Dist(world, rank), 11, 3  # 11 rows: shares of 6 and 5, so gathering pads
        owned = torch.from_numpy(owned_indices(n_imgs, d, seed))
        table = ShardedTable("weight", n_imgs, seed, d)
        torch.manual_seed(rank)
        local = torch.nn.Embedding(len(owned), 4)  # this rank's rows only
        optimizer = torch.optim.Adam(local.parameters(), lr=0.1)
        local(torch.arange(len(owned))).square().sum().backward()
        optimizer.step()

        # Every row of the table rank 0 writes (and of its Adam moments) is what its owner rank holds.
        model_state, optim_state = full_states(local, optimizer, table)
        moments = optimizer.state[local.weight]
        written = {"weight": model_state["weight"], **{k: optim_state["state"][0][k] for k in ADAM_MOMENTS}}
        for key, full in written.items():
            assert full.shape == (n_imgs, 4), key
            full = full.clone()
            torch.distributed.broadcast(full, src=0)
            mine = local.weight.detach() if key == "weight" else moments[key]
            torch.testing.assert_close(full[owned], mine, rtol=0, atol=0, msg=key)

        # Loading the single-process layout back gives each rank exactly its own rows and moments.
        fresh = torch.nn.Embedding(len(owned), 4)
        fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
        load_full_states(fresh, fresh_optimizer, model_state, optim_state, table)
        torch.testing.assert_close(fresh.weight, local.weight, rtol=0, atol=0)
        for key in ADAM_MOMENTS:
            torch.testing.assert_close(fresh_optimizer.state[fresh.weight][key], moments[key], rtol=0, atol=0)
    finally:
        torch.distributed.destroy_process_group()


def test_gathered_table_holds_every_rank_rows_in_image_order(tmp_path):
    torch.multiprocessing.spawn(_gather_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_two_processes_train_and_stage2_follows(home):
    r = torchrun(home, "train", "-dn", "syn", "-mn", "m", *TINY_SET, "--epochs", "12", "--device", "cpu",
                 "--no-tensorboard")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("stage 1 done") == 1  # rank 0 reports, rank 1 is quiet
    log = rows(home)
    assert {x["world_size"] for x in log} == {2}
    assert np.mean([x["rec"] for x in log[-3:]]) < 0.8 * np.mean([x["rec"] for x in log[:3]])
    # One model dir in the single-process format: the whole table, in image order.
    table = load_file(home / "models" / "m" / "latent.safetensors")["content_embedding.embedding.weight"]
    assert table.shape == (48, 8)
    # Stage 2 on two processes reads it as usual.
    r = torchrun(home, "train-encoders", "-dn", "syn", "-mn", "m", "--epochs", "2", "--device", "cpu", "--no-tensorboard")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (home / "models" / "m" / "amortized.safetensors").exists()


def test_interrupted_two_process_run_resumes_on_one(home):
    proc = torchrun(home, "train", "-dn", "syn", "-mn", "m", *TINY_SET, "--epochs", "60", "--device", "cpu",
                    "--no-tensorboard", popen=True)
    wait_for_rows(home, 6, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "SIGTERM received" in err and "--resume" in err
    ckpt = home / "models" / "m" / "checkpoints" / "latent"
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    assert state["world_size"] == 2 and 0 < state["step"] < 180
    assert load_file(ckpt / "model.safetensors")["content_embedding.embedding.weight"].shape == (48, 8)
    r = lordkit(home, "train", "-dn", "syn", "-mn", "m", "--resume", "--device", "cpu", "--no-tensorboard")
    assert r.returncode == 0, r.stderr[-3000:]
    log = rows(home)
    assert log[-1]["step"] == 180 and log[-1]["world_size"] == 1
    assert (home / "models" / "m" / "latent.safetensors").exists()


def _children(pid):
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def _rank_of(pid):
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_a_killed_rank_fails_the_run_and_keeps_the_last_checkpoint(home):
    proc = torchrun(home, "train", "-dn", "syn", "-mn", "m", *TINY_SET, "--epochs", "100000", "--device", "cpu",
                    "--no-tensorboard", popen=True)
    wait_for_rows(home, 8, proc)
    victims = [c for c in _children(proc.pid) if _rank_of(c) == 1]
    assert victims, "rank 1 not found"
    os.kill(victims[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    ckpt = home / "models" / "m" / "checkpoints" / "latent"
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    weights = load_file(ckpt / "model.safetensors")
    assert state["step"] > 0 and weights["content_embedding.embedding.weight"].shape == (48, 8)
    assert not [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")]
    assert not (home / "models" / "m" / "latent.safetensors").exists()
