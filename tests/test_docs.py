"""Every code block of README.md and docs/*.md runs, as a reader would run it (tests/docs_blocks.py).

Each block runs in a fresh directory laid out like a reader's checkout (the repository's files linked in,
so `python -m train` and `bench/` run from it), with HOME there too and one CPU device (the suite's 8-device
XLA_FLAGS removed), holding what a reader has at that point:
  - `cat.jpg`, `truck.png`: small images; `resnet50.pth`: a torchvision ResNet-50 state dict and
    `~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels.h5`: a Keras ResNet50 weights file, both
    with random weights standing in for the downloaded ones (made when a block names them); each
    pretrained name a block uses (`resnet50.a1_in1k`, ...): timm's model of random weights published into
    the Hugging Face cache the blocks read (tests/hub_cache.py);
  - tfds's CIFAR-10 already prepared: TFDS_DATA_DIR is the offline copy (`offline_cifar10` fixture);
    RESNET_JAX_OFFLINE=1 and HF_HUB_OFFLINE=1: nothing is downloaded.
Placeholders, in python blocks too: DATA_DIR -> that copy; RUN_DIR -> a copy of a finished run of
configs/cifar10_fast.py (shortened as below); CKPT -> a ResNet-18 checkpoint of random weights
(tests/tiny_checkpoint.py); IMAGE_DIR -> train/ and val/ folders of random 32x32 JPEGs, 10 classes;
CIFAR10_FOLDER -> the offline copy as JPEG class folders.

python blocks run as written (placeholders bound), each in a fresh process. bash blocks run one command
line at a time with bash, in order, stopping at the first failure; long jobs are made short visibly and
uniformly: every `python -m train` command gets docs_blocks.TRAIN_SHORT appended
(`--config.num_train_steps=2 --config.num_epochs=-1 --config.eval_every_steps=-1`, batch sizes 8, slices
`train[:64]` and `test[:32]`, no progress bar), each `python bench/X.py` its smallest sizes
(docs_blocks.BENCH_SHORT, `--smoke` where the script has it), `python -m pytest` `--collect-only -q`.
`pip install` lines are checked, not run: the extras they name exist in pyproject.toml.
A block marked `<!-- test: not run (REASON) -->` is not run (and is no skipped test): NOT_RUN lists them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

import docs_blocks as db
import hub_cache
import pytest
from tiny_checkpoint import save_tiny_checkpoint

from resnet_jax import available_pretrained

BLOCKS = db.blocks()
RUN = [b for b in BLOCKS if b.not_run is None]
# Blocks that cannot run offline on a CPU: kept few, and listed here so that they stay visible.
NOT_RUN = {
    ("docs/multihost.md", "one command per host of a TPU pod or a SLURM cluster"),
    ("docs/streaming.md", "needs ImageNet's tar files, 150 GB"),
    ("docs/weights.md", "downloads ImageNet weights from download.pytorch.org and storage.googleapis.com"),
    ("docs/pretrained.md", "downloads from the Hugging Face Hub"),
    ("README.md", "runs the whole notebook: tests/test_notebook.py runs it with short settings"),
    ("docs/pretrained.md", "needs ImageNet validation, 6.4 GB"),
}
HUB_NAMES = available_pretrained()
KERAS_FILE = ".keras/models/resnet50_weights_tf_dim_ordering_tf_kernels.h5"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_every_block_is_collected_and_has_a_runner():
    for page in db.PAGES:
        found = [b for b in BLOCKS if b.page == str(page.relative_to(db.REPO))]
        assert db.fence_lines(page) == 2 * len(found), f"{page.name}: a fence was not parsed as a block"
    assert len(RUN) >= 30, len(RUN)
    for b in BLOCKS:
        assert b.lang in ("python", "bash"), f"{b.id}: ```{b.lang} blocks have no runner"
        if b.lang == "bash" and b.not_run is None:
            for command in db.commands(b.code):
                kind = db.kind(command)
                assert kind, f"{b.id}: no runner for {command!r}: mark the block not run, with the reason"
                if kind in ("train", "bench", "pytest"):
                    assert db.appendable(command), f"{b.id}: flags appended to {command!r} would miss it"
                if kind == "bench":
                    assert db.bench_script(command) in db.BENCH_SHORT, f"{b.id}: no short sizes for {command}"
                unknown = set(re.findall(r"(?<![\w$])[A-Z][A-Z0-9_]*(?:_DIR|_FOLDER)\b(?!=)", command))
                assert unknown <= set(db.PLACEHOLDERS), f"{b.id}: unknown placeholder(s) {unknown}"


def test_blocks_not_run_are_the_listed_few():
    print("\n".join(f"not run: {b.id} ({b.not_run})" for b in BLOCKS if b.not_run))
    assert {(b.page, b.not_run) for b in BLOCKS if b.not_run} == NOT_RUN


def test_pip_lines_name_extras_that_exist():
    pyproject = tomllib.loads((db.REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    pip_lines = [c for b in BLOCKS for c in db.commands(b.code) if db.kind(c) == "pip"]
    assert pip_lines
    for command in pip_lines:
        if " -e " not in f" {command} ":
            continue  # other projects' packages (PyTorch's CPU build)
        named = db.pip_extras(command)
        assert named and set(named) <= extras, f"{command!r}: extras {named}, pyproject has {sorted(extras)}"
    prose = re.findall(r"\.\[([\w-]+)\]", "\n".join(p.read_text() for p in db.PAGES))
    assert set(prose) <= extras, set(prose) - extras


def test_readme_full_tier_command_is_the_one_ci_runs():
    ci = (db.REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = [c for b in BLOCKS if b.page == "README.md" for c in db.commands(b.code)]
    assert ci in readme, f"README.md must give .ci/run's command verbatim: {ci}"
    assert "python -m pytest" in readme  # the fast tier


def test_links_and_anchors_resolve():
    def anchors(path):
        prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # no comments of code
        titles = re.findall(r"^#+ (.+)$", prose, re.M)
        return {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}

    for page in db.PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith("http"):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.name}: link to missing {target}"
            assert not anchor or anchor in anchors(path), f"{page.name}: no heading for {target}"


def test_no_paths_of_the_measuring_machine():
    for page in db.PAGES:
        for bad in ("/work/", "/tmp/", "/home/", "/root/", "owned by"):
            assert bad not in page.read_text(), f"{page.name} names {bad!r}"


# The blocks, run (the full tier).


def write_image_folders(root) -> None:
    """root/train/<class>/ and root/val/<class>/: 16 and 4 random 32x32 JPEGs of each of 10 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg")


TORCH_WEIGHTS = (
    "import sys, torch, torchvision; torch.save(torchvision.models.resnet50().state_dict(), sys.argv[1])"
)
KERAS_WEIGHTS = """import sys, h5py, keras
from keras.src.legacy.saving import legacy_h5_format
with h5py.File(sys.argv[1], "w") as f:  # the layout of Keras' own ImageNet files
    legacy_h5_format.save_weights_to_hdf5_group(f, keras.applications.ResNet50(weights=None))
"""


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory, offline_cifar10):
    """name -> the path of a session-wide stand-in for a placeholder or a reader's file, made on first use;
    `.env(home)`: the environment the blocks run in."""
    root = tmp_path_factory.mktemp("docs_stand_ins")
    made: dict[str, str] = {}

    def env(home) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
        path = f"{os.path.dirname(sys.executable)}{os.pathsep}{kept.get('PATH', '')}"  # `python` is this one
        data = {"TFDS_DATA_DIR": offline_cifar10("tfds"), "RESNET_JAX_OFFLINE": "1"}
        hub = hub_cache.offline_env(root / "hf")
        return {**kept, **data, **hub, "PATH": path, "HOME": str(home), "MPLBACKEND": "Agg"}

    def run(args: list[str], **extra: str) -> None:
        done = subprocess.run(args, cwd=reader_view(root / "view"), env={**env(root), **extra},
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{args}:\n{(done.stdout + done.stderr)[-3000:]}"

    def get(name: str) -> str:
        if name not in made:
            path = root / name.replace("/", "_")
            if name == "DATA_DIR":
                path = offline_cifar10("tfds")
            elif name == "CIFAR10_FOLDER":
                path = offline_cifar10("folder")
            elif name == "RUN_DIR":
                config = ["--config", "configs/cifar10_fast.py", "--workdir", str(path), *db.TRAIN_SHORT]
                run([sys.executable, "-m", "train", *config])
            elif name == "CKPT":
                save_tiny_checkpoint(path, model_name="resnet18", class_names=None, image_size=None)
            elif name == "IMAGE_DIR":
                write_image_folders(path)
            elif name == "resnet50.pth":
                run([sys.executable, "-c", TORCH_WEIGHTS, str(path)])
            elif name in HUB_NAMES:
                path = hub_cache.publish(root / "hf", name, hub_cache.timm_model(name))
            elif name == KERAS_FILE:
                run([sys.executable, "-c", KERAS_WEIGHTS, str(path)], KERAS_BACKEND="jax")
            else:
                raise KeyError(name)
            if name in ("resnet50.pth", KERAS_FILE):
                os.chmod(path, 0o444)  # the blocks read it; a block that wrote it would fail
            made[name] = str(path)
        return made[name]

    get.env = env
    return get


def reader_view(directory):
    """A directory holding links to the repository's files, as a reader's checkout holds them."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in db.REPO.iterdir():
        if entry.name not in (".git", ".venv", "runs", "ckpts") and not (directory / entry.name).exists():
            (directory / entry.name).symlink_to(entry)
    return directory


def prepare(block, stand_ins, directory):
    """Lays out the block's directory; returns its environment and its placeholders' values."""
    reader_view(directory)
    home = directory / "home"
    home.mkdir()
    values = {}
    for name in db.placeholders_in(block.code):
        value = stand_ins(name)
        if name == "RUN_DIR":  # each block gets its own copy: a block may resume or extend the run
            value = str(shutil.copytree(value, directory / "run_dir", symlinks=True))
        values[name] = value
    for name in HUB_NAMES:
        if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", block.code):
            stand_ins(name)  # published into the Hugging Face cache the blocks read offline
    if "resnet50.pth" in block.code:
        (directory / "resnet50.pth").symlink_to(stand_ins("resnet50.pth"))
    if block.lang == "bash":
        from PIL import Image

        for image, size in (("cat.jpg", (48, 64)), ("truck.png", (40, 30))):  # any size: they are resized
            if image in block.code:
                Image.new("RGB", size, (200, 120, 40)).save(directory / image)
        if KERAS_FILE.rsplit("/", 1)[1] in block.code:
            (home / KERAS_FILE).parent.mkdir(parents=True)
            (home / KERAS_FILE).symlink_to(stand_ins(KERAS_FILE))
    return stand_ins.env(home), values


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs(block, stand_ins, tmp_path):
    env, values = prepare(block, stand_ins, tmp_path / "reader")
    code = db.bind(block.code, values)
    if block.lang == "python":
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "reader", env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{block.id} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        return
    for command in db.commands(code):
        if db.kind(command) == "pip":
            continue  # checked by test_pip_lines_name_extras_that_exist
        run = db.shortened(command)
        done = subprocess.run(["bash", "-c", run], cwd=tmp_path / "reader", env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        output = (done.stdout + done.stderr)[-3000:]
        assert done.returncode == 0, f"{block.id}: `{run}` exited {done.returncode}:\n{output}"
