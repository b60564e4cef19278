"""The programs' XLA:CPU defaults: in effect as XLA reports them, a user's own XLA_FLAGS value wins, the
guard against flags this jaxlib does not know, and the resume command that carries the environment.

XLA's own report is its dump (`--xla_dump_to`): per compiled module, a `.debug_options` file with the
options as XLA parsed them, and the optimised HLO with the fusions YNNPACK runs.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_jax.xla_flags import CPU_DEFAULTS, jaxlib_accepts, set_xla_cpu_defaults, user_flags
from tests.helpers import smoke_command, start_training

REPO = Path(__file__).resolve().parents[1]
FLAG = "xla_cpu_experimental_ynn_fusion_type"
TRAIN_MODULE = "jit_run"  # train.programs.make_train_fn's per-step program


def reported_fusion_types(dump: Path, module: str) -> set[str]:
    """The YNN fusion types XLA used for `module`'s compilations, as its .debug_options files say."""
    files = list(dump.glob(f"*.{module}.debug_options"))  # module '*': every module
    assert files, f"XLA dumped no {module} module in {dump}: {sorted(p.name for p in dump.iterdir())[:20]}"
    types = set()
    for f in files:
        types |= set(re.findall(rf"^{FLAG}: LIBRARY_FUSION_TYPE_(\w+)$", f.read_text(), re.M))
    return {t.lower() for t in types}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without XLA_FLAGS (the suite's own holds the defaults), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, **extra}


@pytest.fixture(scope="module")
def stopped_and_resumed(data_dir, tmp_path_factory):
    """A smoke run with no XLA:CPU setting of its own, stopped by SIGTERM, then resumed by running the line
    it printed in a shell whose environment has none of the run's variables (HOME: an empty directory)."""
    root = tmp_path_factory.mktemp("xla_run")
    workdir, dump, home = root / "run", root / "dump", root / "home"
    home.mkdir()
    xla_flags = f"--xla_dump_to={dump} --xla_dump_hlo_module_re={TRAIN_MODULE}"
    env = clean_env(XLA_FLAGS=xla_flags, RESNET_JAX_CACHE_DIR="off", JAX_PLATFORMS="cpu")
    proc = start_training(smoke_command(workdir, data_dir), workdir, env)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    dump.rename(root / "dump_first")
    line = next(s for s in out.splitlines() if s.startswith("resume with: ")).removeprefix("resume with: ")
    bare = {"PATH": os.environ["PATH"], "HOME": str(home)}
    resumed = subprocess.run(["bash", "-c", line], env=bare, capture_output=True, text=True, timeout=600)
    return {"line": line, "resumed": resumed, "workdir": workdir, "home": home,
            "first_dump": root / "dump_first", "resumed_dump": dump}  # fmt: skip


def default_in_effect(reported: set[str]) -> bool:
    """Whether XLA reported our default; where this jaxlib rejects it, asserts that it was not added."""
    ours = set(CPU_DEFAULTS[FLAG].split(","))
    if jaxlib_accepts(f"--{FLAG}={CPU_DEFAULTS[FLAG]}"):
        return reported == ours
    return reported != ours  # nothing added: XLA's own default, and no abort


@pytest.mark.slow
def test_train_runs_with_the_default_as_xla_reports_it(stopped_and_resumed):
    dump = stopped_and_resumed["first_dump"]
    assert default_in_effect(reported_fusion_types(dump, TRAIN_MODULE))
    optimised = "\n".join(p.read_text() for p in dump.glob(f"*.{TRAIN_MODULE}.*after_optimizations.txt"))
    assert '"kind":"__ynn_fusion"' in optimised  # YNNPACK runs parts of the train step


@pytest.mark.slow
def test_resume_line_carries_the_environment_and_resumes(stopped_and_resumed):
    line, resumed = stopped_and_resumed["line"], stopped_and_resumed["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming from {stopped_and_resumed['workdir']}/checkpoints/" in resumed.stdout
    assert "final: test accuracy" in resumed.stdout
    # The user's variables, once each, and not the default the program added itself.
    for name in ("XLA_FLAGS", "RESNET_JAX_CACHE_DIR", "JAX_PLATFORMS"):
        assert line.count(f" {name}=") == 1, line
    assert FLAG not in line and line.startswith(f"cd {REPO} && "), line
    # They reached the resumed process: XLA dumped its train step where XLA_FLAGS says, with the default
    # added again; the compilation cache stayed off instead of filling $HOME/.cache.
    assert default_in_effect(reported_fusion_types(stopped_and_resumed["resumed_dump"], TRAIN_MODULE))
    assert not (stopped_and_resumed["home"] / ".cache" / "resnet_jax" / "jax").exists()


@pytest.mark.slow
def test_a_users_own_value_wins(stopped_and_resumed, tmp_path):
    from PIL import Image

    dump, mine = tmp_path / "dump", "individual_dot"
    env = clean_env(XLA_FLAGS=f"--{FLAG}={mine} --xla_dump_to={dump}", RESNET_JAX_CACHE_DIR="off")
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    workdir = str(stopped_and_resumed["workdir"])
    done = subprocess.run(
        [sys.executable, "-m", "resnet_jax.predict", "--workdir", workdir, str(image)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert reported_fusion_types(dump, "*") == {mine}


GUARD = """
import json, os, sys
from resnet_jax.xla_flags import set_xla_cpu_defaults
added = set_xla_cpu_defaults(json.loads(sys.argv[1]))
import jax
jax.devices()  # XLA reads XLA_FLAGS here: an unknown flag or value would abort the process
print(json.dumps({"added": added, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}))
"""


@pytest.mark.parametrize(
    ("defaults", "known"),
    [
        pytest.param({"xla_cpu_enable_fast_min_max": "false"}, True, marks=pytest.mark.slow),
        pytest.param({"xla_cpu_no_such_flag": "1"}, False, marks=pytest.mark.slow),
        pytest.param({FLAG: "no_such_fusion_type"}, False, marks=pytest.mark.slow),  # a value XLA rejects
    ],
)
def test_guard_adds_only_what_this_jaxlib_accepts(defaults, known, tmp_path):
    env = clean_env(XLA_FLAGS="--xla_cpu_use_fusion_emitters=true", XDG_CACHE_HOME=str(tmp_path))
    for _ in range(2):  # the second run answers from the cache
        done = subprocess.run(
            [sys.executable, "-c", GUARD, json.dumps(defaults)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.splitlines()[-1])
        assert out["added"] == (defaults if known else {})
        ((name, value),) = defaults.items()
        expected = "--xla_cpu_use_fusion_emitters=true" + (f" --{name}={value}" if known else "")
        assert out["XLA_FLAGS"] == expected
    cached = json.loads((tmp_path / "resnet_jax" / "xla_flags.json").read_text())
    assert list(cached.values()) == [known]


def test_flags_set_by_the_user_a_flags_file_or_after_jax_started_are_left_alone(monkeypatch, tmp_path):
    assert user_flags("--a=1 -b  --c='x y' --d") == {"a", "b", "c", "d"}
    flags_file = tmp_path / "flags.txt"
    flags_file.write_text(f"--{FLAG}=individual_dot\n")
    monkeypatch.setenv("XLA_FLAGS", str(flags_file))  # XLA reads flags from the file named here
    assert set_xla_cpu_defaults() == {} and os.environ["XLA_FLAGS"] == str(flags_file)
    monkeypatch.setenv("XLA_FLAGS", f"--xla_dump_to=/tmp/x --{FLAG}=+dot")
    assert set_xla_cpu_defaults() == {} and os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x --{FLAG}=+dot"
    # Once JAX has started its backend XLA has read XLA_FLAGS: nothing is added, and the caller is told.
    import jax

    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    with pytest.warns(UserWarning, match="before the first JAX computation"):
        assert set_xla_cpu_defaults({"xla_cpu_enable_fast_min_max": "false"}) == {}
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
