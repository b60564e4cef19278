"""The bench scripts run (tiny --smoke sizes) and their reference model and FLOP counts are right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

BLOCKED = ("tensorflow", "tensorflow_datasets", "ml_collections")


def _start(args: list[str], prelude: str = "") -> subprocess.Popen:
    """Starts a bench script in a fresh process (its own thread and device setup)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = "\n".join(
        [
            "import runpy, sys",
            prelude,
            f"sys.argv = {args!r}",
            f"runpy.run_path({args[0]!r}, run_name='__main__')",
        ]
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.Popen]:
    """Every smoke run, started at once so the module's wall time is the longest run, not their sum."""
    cpu = [str(BENCH / "cpu.py"), "--model", "resnet20", "--smoke", "--framework"]
    procs = {
        "jax": _start([*cpu, "jax"]),
        "torch": _start([*cpu, "torch"]),
        "matmul": _start([str(BENCH / "matmul_peak.py"), "--smoke"]),
        "gpu": _start(
            [str(BENCH / "gpu.py"), "--smoke", "--part", "jax"],
            f"sys.modules.update(dict.fromkeys({BLOCKED!r}))",
        ),
    }
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()


def _output(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    return out


@pytest.fixture(scope="module")
def smoke_records(runs) -> dict[str, dict]:
    return {fw: common.parse_records(_output(runs[fw]))[0] for fw in ("jax", "torch")}


def test_torch_resnet20_is_the_papers():
    torch_ref = pytest.importorskip("torch_ref")
    model = torch_ref.create("resnet20")
    # He et al. 2015, Table 6: ResNet-20 has 0.27M parameters; 19 conv layers + 1 FC layer.
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 0.27
    convs = [m for m in model.modules() if isinstance(m, torch_ref.nn.Conv2d)]
    assert len(convs) == 19 and all(c.bias is None for c in convs)
    assert [c.out_channels for c in convs] == [16] * 7 + [32] * 6 + [64] * 6
    out = model(torch_ref.torch.zeros(2, 3, 32, 32))
    assert tuple(out.shape) == (2, 10)


def test_forward_flops_match_torchvision_published_count():
    torch_ref = pytest.importorskip("torch_ref")
    import torchvision

    # torchvision's weight metadata lists resnet50 at 4.09 G multiply-adds ("GFLOPS") at 224x224.
    published = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"]
    flops = torch_ref.forward_flops(torch_ref.create("resnet50"), 224)
    assert flops / 2 / 1e9 == pytest.approx(published, abs=0.005)
    # ResNet-20: the paper's layout gives 40.55 M multiply-adds (the commonly quoted "41 M").
    macs = torch_ref.forward_flops(torch_ref.create("resnet20"), 32) / 2
    assert macs / 1e6 == pytest.approx(40.55, abs=0.01)


def test_matmul_peak_smoke(runs):
    records = common.parse_records(_output(runs["matmul"]))
    assert {(r["lib"], r["dtype"]) for r in records} == set(__import__("matmul_peak").CASES)
    assert all(r["flop_s"] > 0 and r["threads"] >= 1 for r in records)


def test_cpu_smoke_measures_every_figure(smoke_records):
    jax_r, torch_r = smoke_records["jax"], smoke_records["torch"]
    figures = [jax_r[k] for k in ("train_program", "train_step", "eval")]
    figures += [torch_r[k] for k in ("train_step", "eval")]
    for r in figures:  # a median of its windows, and no faster than the machine could possibly run
        assert r["img_s_min"] <= r["img_s"] <= r["img_s_max"] < 1e7
    # A timed step excludes compilation: it is faster than the first step, which compiles.
    assert jax_r["train_step"]["img_s"] > jax_r["batch"] / jax_r["first_step_s"]
    assert jax_r["threads"] == torch_r["threads"] == torch_r["torch_threads"]
    assert jax_r["devices"] == ["cpu:0"]  # the test conftest's 8 fake devices were not inherited
    assert jax_r["peak_rss_mib"] > 100 and torch_r["peak_rss_mib"] > 100
    assert jax_r["compile_s"] > 0 and jax_r["first_step_s"] > jax_r["compile_s"]


def test_xla_flop_count_of_our_resnet20_matches_the_formula():
    import cpu

    import resnet_jax

    # XLA's count of our forward pass is within 10% of the conv/FC formula (same architecture), so the
    # fraction-of-peak figures, which use the formula, describe the program XLA runs.
    flops = cpu.jax_forward_flops(resnet_jax.create_model("resnet20"), 2, 32)
    assert flops == pytest.approx(2 * 40.55e6, rel=0.1)


def test_run_all_tables(smoke_records):
    import run_all

    peaks = [{"lib": "jax", "dtype": "float32", "flop_s": 1e11, "loadavg": "0.00 0.00 0.00"}]
    text = run_all.tables(peaks, list(smoke_records.values()))
    ratio = smoke_records["jax"]["train_program"]["img_s"] / smoke_records["torch"]["train_step"]["img_s"]
    assert f"ours / PyTorch float32 eager = {ratio:.2f}" in text
    assert "| resnet20 | float32 | 2 |" in text


def test_gpu_bench_runs_without_tensorflow_or_ml_collections(runs):
    text = _output(runs["gpu"])
    assert "project step (train.steps.train_step)" in text  # the project's own step, not a stand-in
    assert text.count('"img_s"') == 3  # resnet50 train and eval, resnet20 training loop
