"""resnet_jax.pretrained: timm's weights through huggingface_hub's real code path, offline, and local files.

Each model is timm's own, with random weights and BatchNorm statistics, published into a Hugging Face
cache directory laid out as the Hub client lays it out (tests/hub_cache.py) and read with HF_HUB_OFFLINE.
"""

import numpy as np
import pytest
import torch
from hub_cache import publish, timm_model

import resnet_jax
from resnet_jax.checkpoint import model_from_meta
from resnet_jax.convert.torchvision import ARCHS
from resnet_jax.hub import PretrainedError, _tag_meta, imagenet_class_names

# Each takes 5-30 s on two CPU cores (timm model, a 0.05-0.5 GB file, conversion, compile): a basic-block
# net and a bottleneck net in the fast tier, the rest in the full tier.
SLOW = set(ARCHS) - {"resnet18", "resnet50"}


def logits_of(reference, model, variables, shape):
    x = np.random.default_rng(sum(shape)).normal(size=(2, *shape, 3)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    return np.asarray(model.apply(variables, x, train=False)), want


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in ARCHS])
def test_every_architecture_computes_timms_function(offline_hub, arch):
    reference = timm_model(arch)
    publish(offline_hub, f"{arch}.tv_in1k", reference)
    model, variables = resnet_jax.pretrained(f"{arch}.tv_in1k")
    for shape in [(64, 64), (64, 96)]:  # square and not
        got, want = logits_of(reference, model, variables, shape)
        assert np.abs(want).max() > 1
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"{arch} {shape}")


def test_meta_carries_the_recipe_and_survives_a_checkpoint(offline_hub, tmp_path):
    publish(offline_hub, "resnet18.a3_in1k", timm_model("resnet18"))  # any weights of the right shapes
    model, variables, meta = resnet_jax.hub.load("timm/resnet18.a3_in1k")  # the repository spelling
    assert meta["model"] == "resnet18" and meta["model_kwargs"] == {"num_classes": 1000}
    assert meta["preprocess"] == {
        "kind": "mean_std",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert (meta["image_size"], meta["train_image_size"]) == ([224, 224], [160, 160])  # a3: tested at 224
    assert (meta["crop_pct"], meta["interpolation"], meta["origin"]) == (0.95, "bicubic", "timm")
    assert meta["source_weights"].startswith("hf://timm/resnet18.a3_in1k@")
    assert meta["class_names"][:2] == ["tench", "goldfish"] and len(meta["class_names"]) == 1000
    assert (model.image_size, model.crop_pct, model.interpolation) == ((224, 224), 0.95, "bicubic")
    assert model.class_names == imagenet_class_names()
    # Saved and loaded as a checkpoint (the way fine-tuning starts from it), the contract stays.
    resnet_jax.save_checkpoint(tmp_path / "ckpt", variables, meta)
    loaded, restored = resnet_jax.load_checkpoint(tmp_path / "ckpt")
    assert (loaded.image_size, loaded.crop_pct, loaded.interpolation) == ((224, 224), 0.95, "bicubic")
    assert loaded.preprocess == model.preprocess and loaded.class_names == model.class_names
    image = np.random.default_rng(0).integers(0, 256, (1, 90, 70, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        resnet_jax.make_predict_fn(loaded)(restored, image),
        resnet_jax.make_predict_fn(model)(variables, image),
    )


def test_every_name_gives_a_valid_meta():
    names = resnet_jax.available_pretrained()
    assert len(names) == len(set(names)) > 60 and "resnet50.a1_in1k" in names
    for name in names:
        arch = name.split(".")[0]
        meta = _tag_meta(name, resnet_jax.create_model(arch), "cache/snapshots/0123abc/model.safetensors")
        model = model_from_meta(meta)  # validates
        assert model.crop_pct == meta["crop_pct"] and model.image_size == tuple(meta["image_size"])
        assert meta["source_weights"] == f"hf://timm/{name}@0123abc"
    normalizations = {
        _tag_meta(n, resnet_jax.create_model(n.split(".")[0]), "m")["preprocess"]["std"][0] for n in names
    }
    assert normalizations == {0.229, 0.5}


def test_offline_with_an_empty_cache_is_one_line_naming_the_download(offline_hub):
    with pytest.raises(PretrainedError) as e:
        resnet_jax.pretrained("resnet50.a1_in1k")
    message = str(e.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message
    assert "hf download timm/resnet50.a1_in1k model.safetensors" in message and "arch='resnet50'" in message
    assert isinstance(e.value, resnet_jax.CheckpointError)  # CLIs print `error: ...` for these
    assert list(offline_hub.iterdir()) == []  # nothing written


def test_unknown_names_suggest_the_real_ones(offline_hub):
    with pytest.raises(
        PretrainedError, match=r"unknown pretrained name 'resnet50\.a9_in1k'.*resnet50\.a1_in1k"
    ):
        resnet_jax.pretrained("resnet50.a9_in1k")
    with pytest.raises(PretrainedError, match=r"did you mean resnext50_32x4d\.tv_in1k"):
        resnet_jax.pretrained("resnext50_32x4.tv_in1k")
    with pytest.raises(PretrainedError, match=r"resnet50\.a1_in1k holds resnet50 weights, not resnet18"):
        resnet_jax.pretrained("resnet50.a1_in1k", arch="resnet18")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """timm's resnet18 saved as a local model.safetensors (timm's format), and the model."""
    reference = timm_model("resnet18", seed=3)
    path = publish(tmp_path_factory.mktemp("local"), "resnet18.local", reference)
    return path, reference


def test_local_safetensors_file(resnet18_file):
    path, reference = resnet18_file
    model, variables, meta = resnet_jax.hub.load(path, arch="resnet18")
    got, want = logits_of(reference, model, variables, (64, 80))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # torchvision's recipe for a file: resize 256, crop 224, bilinear, ImageNet names for 1000 classes.
    assert (meta["image_size"], meta["crop_pct"], meta["interpolation"]) == ([224, 224], 0.875, "bilinear")
    assert meta["source_weights"] == "model.safetensors" and len(meta["class_names"]) == 1000


def test_local_pth_file_through_torch(resnet18_file, tmp_path):
    _, reference = resnet18_file
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, tmp_path / "resnet18.pth")
    model, variables = resnet_jax.pretrained(tmp_path / "resnet18.pth", arch="resnet18")
    got, want = logits_of(reference, model, variables, (64, 64))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_local_file_errors_are_one_line(resnet18_file, tmp_path):
    path, _ = resnet18_file
    cases = {
        r"as arch; its keys and shapes fit resnet18: pass arch='resnet18'": (path, None),
        r"does not fit the model; hint: .* fit torchvision's resnet18: pass arch='resnet18' .*\(80 missing, "
        r"0 unexpected, 0 mis-shaped\)": (path, "resnet34"),
        "unknown arch 'resnet20'": (path, "resnet20"),
        "no such file": (tmp_path / "missing.safetensors", "resnet18"),
    }
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file" * 10)
    cases[f"cannot read {garbage} as a safetensors file"] = (garbage, "resnet18")
    for pattern, (source, arch) in cases.items():
        with pytest.raises(PretrainedError, match=pattern) as e:
            resnet_jax.pretrained(source, arch=arch)
        assert "\n" not in str(e.value), str(e.value)
