"""notebooks/quickstart.ipynb runs top to bottom on a CPU with small sizes (a failing cell fails the test).

The notebook's `parameters` cell is followed by an injected one, as papermill does: a few dozen steps
of ResNet-20 on a small fake dataset, and an unreachable weights host so that the torchvision import
takes its offline path (probing without hanging, saying why it skips).
"""

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

nbformat = pytest.importorskip("nbformat", reason="needs the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="needs the test extra: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
UNREACHABLE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never routed


def test_stored_without_outputs_and_with_one_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1


def _install_cell():
    nb = json.loads(NOTEBOOK.read_text())
    return next("".join(c["source"]) for c in nb["cells"] if "REPO_URL = " in "".join(c["source"]))


def test_repository_url_is_the_same_in_readme_notebook_and_pyproject():
    import tomllib

    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_repo = url.removeprefix("https://github.com/")
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", owner_repo), url
    badge = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/quickstart.ipynb"
    assert badge in (REPO / "README.md").read_text()
    assert f'REPO_URL = "{url}"' in _install_cell()


def test_install_cell_off_a_checkout_fails_in_one_line_on_a_placeholder_url(tmp_path, monkeypatch):
    cell = _install_cell()
    if "OWNER/REPO" not in cell:
        cell = re.sub(r'REPO_URL = ".*"', 'REPO_URL = "https://github.com/OWNER/REPO"', cell)
    monkeypatch.chdir(tmp_path)  # not inside a checkout: the cell would clone
    with pytest.raises(RuntimeError, match="REPO_URL is a placeholder"):
        exec(compile(cell, "install-cell", "exec"), {})
    assert list(tmp_path.iterdir()) == []  # nothing cloned or installed


def test_offline_error_names_the_notebooks_data_dir(tmp_path, monkeypatch):
    """Run offline without the data, the notebook's data cell fails in one line naming DATA_DIR, the knob
    the notebook has (not the training program's --config.data_dir)."""
    from train.data import tfds_data

    nb = json.loads(NOTEBOOK.read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if "tfds_data.get_builder(" in "".join(c["source"]))
    monkeypatch.setenv("RESNET_JAX_OFFLINE", "1")
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(tfds_data.DatasetUnavailableError) as e:
        exec(compile(cell, "data-cell", "exec"), {"DATASET": "cifar10", "DATA_DIR": str(tmp_path)})
    message = str(e.value)
    assert "\n" not in message and "--config" not in message, message
    assert "from DATA_DIR" in message and "point DATA_DIR (or TFDS_DATA_DIR) at a directory" in message
    assert f"put cifar-10-binary.tar.gz in {tmp_path}/downloads/manual/" in message


def test_notebook_runs(tmp_path, monkeypatch):
    from train.data.testing import write_fake_dataset

    data_dir = tmp_path / "data"
    dataset = write_fake_dataset(str(data_dir), num_train=64, num_test=32)
    params = {
        "TRAIN_STEPS": 24,
        "FINETUNE_STEPS": 8,
        "BATCH_SIZE": 16,
        "EVAL_BATCH_SIZE": 16,
        "LOG_EVERY": 4,
        "DATASET": dataset,
        "DATA_DIR": str(data_dir),
        "WORKDIR": str(tmp_path / "runs" / "quickstart"),
        "WEIGHTS_HOST": UNREACHABLE,
    }
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    # The kernel inherits this environment: one CPU device (not the suite's 8), and a compilation cache
    # shared by the notebook's commands, as a user's would be.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "RESNET_JAX_VERBOSE"):  # the notebook quiets the libraries itself
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("RESNET_JAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    client.execute()
    print(f"notebook executed in {time.perf_counter() - start:.0f} s")

    def text(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    outputs = "\n".join(text(c) for c in nb.cells if c.cell_type == "code")
    assert "final: test accuracy" in outputs  # training and fine-tuning finished
    assert "with flip test-time augmentation" in outputs  # train.eval --hflip
    assert f"Skipped: {UNREACHABLE} is not reachable" in outputs
    # No library start-up logs in the cells, from the kernel (TensorFlow reads the TFRecords for the
    # prediction grid) or from the commands it runs.
    for noise in ("absl::InitializeLog()", "oneDNN custom operations", "Unable to initialize backend"):
        assert noise not in outputs, outputs[-3000:]
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2, "the curves and the prediction grid were not drawn inline"
    assert (tmp_path / "runs" / "quickstart_finetune" / "checkpoints").is_dir()
