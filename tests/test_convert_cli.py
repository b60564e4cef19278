"""`python -m resnet_jax.convert --from torchvision`: a checkpoint that loads and predicts as torchvision
does; bad input is one line, exit 1, with nothing on disk changed."""

import numpy as np
import pytest
from convert_helpers import TOL, max_diff, run_cli, torch_logits, torch_modules, torchvision_net
from flax import traverse_util

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"


def test_cli_torchvision_writes_loadable_checkpoint(tmp_path):
    torch, _ = torch_modules()
    from resnet_jax.checkpoint import load_checkpoint, load_meta
    from resnet_jax.convert import from_torchvision

    net = torchvision_net("resnet18", 10, (64, 80))
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    weights = ("--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "r18.pth"))
    done = run_cli(*weights, "--out", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr

    model, variables = load_checkpoint(tmp_path / "ckpt")
    meta = load_meta(tmp_path / "ckpt")
    assert meta["origin"] == "torchvision"
    assert meta["model"] == "resnet18" and meta["model_kwargs"] == {"num_classes": 10}
    assert meta["preprocess"] == {
        "kind": "mean_std",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    _, in_memory = from_torchvision(net.state_dict(), "resnet18")
    flat = traverse_util.flatten_dict
    assert flat(variables).keys() == flat(in_memory).keys()
    assert all(np.array_equal(variables_v, flat(in_memory)[k]) for k, variables_v in flat(variables).items())
    x = np.random.default_rng(4).normal(size=(2, 64, 80, 3)).astype(np.float32)
    assert max_diff(model.apply(variables, x, train=False), torch_logits(net, x)) <= TOL

    # --overwrite replaces a checkpoint step directory this project wrote.
    again = run_cli(*weights, "--out", str(tmp_path / "ckpt"), "--overwrite")
    assert again.returncode == 0, again.stderr


def test_cli_errors(tmp_path, capsys):
    torch, _ = torch_modules()
    from resnet_jax.convert.__main__ import main

    torch.save(torchvision_net("resnet18", 10, (32, 32)).state_dict(), tmp_path / "r18.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")

    def fails(*args: str) -> str:
        assert main(["--out", str(tmp_path / "out"), *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ")
        return err

    assert "cannot read" in fails(
        "--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "junk.pth")
    )
    assert "no such file" in fails(
        "--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "x.pth")
    )
    err = fails("--from", "torchvision", "--arch", "resnet50", "--weights", str(tmp_path / "r18.pth"))
    # The way out first, then the counts and at most ten keys of each kind.
    first, counts, *rest = err.splitlines()
    assert "fit torchvision's resnet18" in first and "--arch resnet18" in first, err
    assert counts.endswith(" mis-shaped:"), err
    assert "  mis-shaped fc.weight: got shape (10, 512), expected (10, 2048)" in rest
    assert len(rest) <= 3 * 11, err
    assert "unknown Keras arch 'resnet18'" in fails(
        "--from", "keras", "--arch", "resnet18", "--weights", str(tmp_path / "r18.pth")
    )
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    err = fails("--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "r18.pth"))
    assert "exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    # Files that are not torch checkpoints: one line each, no traceback.
    (tmp_path / "text.pth").write_text("hello, this is text\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    whole = (tmp_path / "r18.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    for name in ("text.pth", "empty.pth", "truncated.pth"):
        err = fails(
            "--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / name), "--overwrite"
        )
        assert err.count("\n") == 1 and f"cannot read {tmp_path / name} as a torch state dict" in err, err
    assert not any((tmp_path / "out").iterdir())


def test_cli_overwrite_never_deletes_what_is_not_a_checkpoint(tmp_path, capsys):
    torch, _ = torch_modules()
    from resnet_jax.convert.__main__ import main

    torch.save(torchvision_net("resnet18", 10, (32, 32)).state_dict(), tmp_path / "r18.pth")
    weights = ["--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "r18.pth")]
    # A folder of the user's files, one of them in a subfolder named like a checkpoint item.
    folder = tmp_path / "thesis"
    (folder / "state").mkdir(parents=True)
    (folder / "chapter1.tex").write_text("Chapter 1\n")
    (folder / "state" / "notes.txt").write_text("notes\n")
    workdir = tmp_path / "run"  # a training run's workdir: a checkpoints directory, not one step
    assert main([*weights, "--out", str(workdir / "checkpoints" / "0")]) == 0
    capsys.readouterr()
    for out, says in (
        (folder, "holds files that are not a checkpoint's (chapter1.tex)"),
        (workdir, "holds files that are not a checkpoint's (checkpoints)"),
        (tmp_path / "r18.pth", "is a file"),
    ):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        assert main([*weights, "--out", str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: refusing to replace {out}: it"), err
        assert says in err, err
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (folder / "chapter1.tex").read_text() == "Chapter 1\n"
    assert (folder / "state" / "notes.txt").read_text() == "notes\n"
    # An empty folder and a step directory of this project are replaced.
    (tmp_path / "empty").mkdir()
    assert main([*weights, "--out", str(tmp_path / "empty"), "--overwrite"]) == 0
    assert main([*weights, "--out", str(workdir / "checkpoints" / "0"), "--overwrite"]) == 0
