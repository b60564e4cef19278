"""Export to torchvision: a model of ours, written as a .safetensors state dict, loads strictly into
torchvision's and timm's ResNets, which then compute our logits; what torchvision cannot represent is
refused in one line.

Our models here have random weights, BatchNorm affine parameters and running statistics measured on a
random batch, then perturbed (as trained nets have), so a wrong layout or a wrong statistic moves the
logits far past 1e-4.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convert_helpers import TOL, max_diff, run_cli, torch_logits, torch_modules
from flax import traverse_util
from tiny_checkpoint import save_tiny_checkpoint

from resnet_jax import create_model
from resnet_jax.checkpoint import make_meta, save_checkpoint
from resnet_jax.convert import from_torchvision, to_torchvision, torchvision_arch
from resnet_jax.preprocess import IMAGENET_MEAN_STD

HW = (64, 80)


def trained_looking(model, seed: int = 0) -> dict:
    """Variables for `model`: random BN scales and biases (each block's last scale small), running
    statistics of a random batch, perturbed."""
    rng = np.random.default_rng(seed)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *HW, 3)), train=False)
    last_bn = "bn3" if model.block == "bottleneck" else "bn2"

    def affine(path, value):
        module, leaf = path[-2:]
        if not (module.startswith("bn") or module.endswith("_bn")):
            return value
        if leaf == "bias":
            return rng.normal(0.0, 0.2, value.shape).astype(np.float32)
        return rng.uniform(*((0.1, 0.5) if module == last_bn else (0.5, 1.5)), value.shape).astype(np.float32)

    flat = traverse_util.flatten_dict(variables["params"])
    params = traverse_util.unflatten_dict({p: jnp.asarray(affine(p, v)) for p, v in flat.items()})
    # Momentum 0: the running statistics become the batch's (a frozen-BN model would keep its own).
    calibrate = model.clone(norm="batch", norm_frozen_up_to="none", bn_momentum=0.0)
    batch = rng.normal(size=(4, *HW, 3)).astype(np.float32)
    _, updated = calibrate.apply({**variables, "params": params}, batch, train=True, mutable=["batch_stats"])

    def perturb(path, value):
        if path[-1] == "mean":
            return value + 0.1 * jnp.asarray(rng.normal(size=value.shape), jnp.float32)
        return value * jnp.asarray(rng.uniform(0.8, 1.25, value.shape), jnp.float32)

    stats = traverse_util.flatten_dict(updated["batch_stats"])
    return {
        "params": params,
        "batch_stats": traverse_util.unflatten_dict({p: perturb(p, v) for p, v in stats.items()}),
    }


# A basic-block and a bottleneck net fine-tuned to 10 classes: every BN frozen, and the BNs up to stage 3.
# A basic-block net in the fast tier, a bottleneck net (grouped convs) in the full tier.
CASES = [
    ("resnet18", {"norm": "frozen_batch"}),
    pytest.param("resnext50_32x4d", {"norm_frozen_up_to": "stage3"}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,options", CASES)
def test_export_loads_strictly_into_torchvision_and_timm_with_our_logits(
    tmp_path, monkeypatch, arch, options
):
    torch, models = torch_modules()
    timm = pytest.importorskip("timm", reason="timm not installed (pip install 'resnet-jax-flax[test]')")
    import safetensors.numpy
    import safetensors.torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # timm reads the file; nothing may come from the network
    model = create_model(arch, num_classes=10, **options)
    variables = trained_looking(model)
    assert torchvision_arch(model) == arch
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(to_torchvision(model, variables), str(path))
    x = np.random.default_rng(1).normal(size=(2, *HW, 3)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x, train=False))

    net = getattr(models, arch)(weights=None, num_classes=10)
    state_dict = safetensors.torch.load_file(path)
    assert state_dict.keys() == net.state_dict().keys()
    net.load_state_dict(state_dict, strict=True)
    assert max_diff(torch_logits(net.eval(), x), ours) <= TOL, max_diff(torch_logits(net, x), ours)
    tracked = [v for k, v in state_dict.items() if k.endswith("num_batches_tracked")]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(tracked) == len(bns) and all(v.dtype == torch.int64 and v.shape == () for v in tracked)

    overlay = {"file": str(path), "num_classes": 10}
    timm_net = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10)
    assert max_diff(torch_logits(timm_net.eval(), x), ours) <= TOL

    # The statistics matter: fresh ones give other logits, so the match above checks them.
    fresh = {**variables, "batch_stats": jax.tree.map(jnp.ones_like, variables["batch_stats"])}
    assert max_diff(model.apply(fresh, x, train=False), ours) > 100 * TOL
    # Importing the file gives back our arrays bit for bit.
    imported, back = from_torchvision(safetensors.numpy.load_file(path), arch)
    assert imported.num_classes == 10
    flat, flat_back = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(back)
    assert flat.keys() == flat_back.keys()
    assert all(np.array_equal(flat[k], flat_back[k]) for k in flat)


def test_bfloat16_computation_exports_its_float32_parameters():
    model = create_model("resnet18", num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    float32 = to_torchvision(model, variables)
    bfloat16 = to_torchvision(model.clone(dtype=jnp.bfloat16), variables)
    assert float32.keys() == bfloat16.keys()
    assert all(np.array_equal(float32[k], bfloat16[k]) for k in float32)
    assert all(v.dtype == np.float32 for k, v in float32.items() if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize(
    "name,options,says",
    [
        ("resnet20", {}, "cifar_stem=True (torchvision's stem is a 7x7/2 conv"),
        ("resnet20", {}, "shortcut='zero_pad' (torchvision's blocks change shape through 1x1 conv"),
        ("resnet18", {"norm": "group"}, "norm='group' (torchvision's ResNets have BatchNorm"),
        ("resnet50", {"head_hidden": 256}, "head_hidden=256 (torchvision's head is one Linear layer)"),
        ("resnet50", {"stride_in_1x1": True}, "stride_in_1x1=True (torchvision puts a bottleneck's stride"),
        ("resnet50", {"conv_bias": True}, "conv_bias=True (torchvision's convs have no bias)"),
        ("resnet18", {"bn_epsilon": 1e-3}, "bn_epsilon=0.001 (torchvision's BatchNorm2d has eps=1e-5"),
        ("resnet18", {"param_dtype": "bfloat16"}, "param_dtype=bfloat16 (torchvision's weights are float32"),
        ("resnet50v2", {}, "preact_bottleneck blocks (3, 4, 6, 3) of widths (256, 512, 1024, 2048)"),
        ("wrn16_8", {}, "are none of torchvision's resnet18, resnet34"),
    ],
)
def test_what_torchvision_cannot_represent_is_one_line(name, options, says):
    with pytest.raises(ValueError) as info:
        to_torchvision(create_model(name, **options), {})
    message = str(info.value)
    assert message.startswith("cannot export this model to torchvision: ") and "\n" not in message
    assert says in message, message


def test_variables_must_fit_and_be_float32():
    model = create_model("resnet18", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with pytest.raises(ValueError, match="variables hold bfloat16 arrays; torchvision's weights are float32"):
        to_torchvision(model, jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables))
    with pytest.raises(ValueError, match=r"variables do not fit the model: 2 shape mismatch\n"):
        to_torchvision(model.clone(num_classes=5), variables)
    with pytest.raises(ValueError, match=r"must hold 'params' and 'batch_stats'; missing \['batch_stats'\]"):
        to_torchvision(model, {"params": variables["params"]})


@pytest.mark.slow
def test_cli_exports_a_saved_checkpoint(tmp_path, capsys):
    _, models = torch_modules()
    import safetensors
    import safetensors.torch

    from resnet_jax.convert.__main__ import main

    model = create_model("resnet18", num_classes=10, norm="frozen_batch")
    variables = trained_looking(model, seed=3)
    classes = [f"class{i}" for i in range(10)]
    meta = make_meta(
        "resnet18", model, preprocess=IMAGENET_MEAN_STD, origin="resnet-jax", step=7, class_names=classes
    )
    save_checkpoint(tmp_path / "run" / "checkpoints" / "7", variables, meta)
    out = tmp_path / "r18.safetensors"
    export = ["--to", "torchvision", "--checkpoint", str(tmp_path / "run")]
    assert main([*export, "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"wrote {out}: torchvision resnet18, 10 classes" in printed
    assert "load with: torchvision.models.resnet18(num_classes=10).load_state_dict(" in printed

    net = models.resnet18(weights=None, num_classes=10)
    net.load_state_dict(safetensors.torch.load_file(out), strict=True)
    x = np.random.default_rng(2).normal(size=(2, *HW, 3)).astype(np.float32)
    assert max_diff(torch_logits(net.eval(), x), model.apply(variables, x, train=False)) <= TOL
    with safetensors.safe_open(str(out), "np") as f:
        info = f.metadata()
    assert (info["arch"], info["num_classes"], info["step"]) == ("resnet18", "10", "7")
    assert json.loads(info["preprocess"]) == IMAGENET_MEAN_STD
    assert json.loads(info["class_names"]) == classes

    # Bad input: one line, exit 1, nothing written or changed.
    written = out.read_bytes()
    save_tiny_checkpoint(tmp_path / "cifar")  # a ResNet-20: CIFAR stem, zero-pad shortcuts
    for args, says in (
        ([*export, "--out", str(out)], f"--out {out} exists; pass --overwrite to replace it"),
        ([*export, "--out", str(tmp_path / "r18.pth")], "name the file *.safetensors"),
        ([*export, "--step", "3", "--out", str(tmp_path / "a.safetensors")], "no checkpoint of step 3"),
        (
            [
                "--to",
                "torchvision",
                "--checkpoint",
                str(tmp_path / "cifar"),
                "--out",
                str(tmp_path / "c.safetensors"),
            ],
            "cannot export this model to torchvision: its basic blocks (3, 3, 3)",
        ),
    ):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert out.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar", "r18.safetensors", "run"]
    # --overwrite replaces the file; a --from option with --to is a usage error.
    assert main([*export, "--step", "7", "--out", str(out), "--overwrite"]) == 0
    with pytest.raises(SystemExit) as info:
        main([*export, "--weights", "x.pth", "--out", str(out)])
    assert info.value.code == 2 and "--weights does not go with --to" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_unsupported_model_is_one_line_on_stderr(tmp_path):
    save_tiny_checkpoint(tmp_path / "cifar")  # a ResNet-20
    done = run_cli(
        "--to",
        "torchvision",
        "--checkpoint",
        str(tmp_path / "cifar"),
        "--out",
        str(tmp_path / "m.safetensors"),
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: cannot export this model to torchvision: ")
    assert not (tmp_path / "m.safetensors").exists()
