"""Pretrained weights in the training program: fine-tuning from `hub:NAME`, the empty offline cache as one
line, and `python -m train.eval --pretrained` evaluating with the weights' own view (the pixels
make_predict_fn gives). The weights are timm's models with random weights, published into an offline
Hugging Face cache (tests/hub_cache.py), so huggingface_hub's real code path runs."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from hub_cache import offline_env, publish, timm_model

import resnet_jax
from configs import finetune_cifar10, finetune_cifar10_seed
from tests.helpers import REPO, saved_state
from train import train
from train.eval import evaluate_pretrained

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"


def test_fine_tuning_from_the_hub(offline_hub, data_dir, tmp_path):
    """init_checkpoint=hub:resnet18.tv_in1k: the backbone is the published weights, frozen; the recipe of
    the weights (crop_pct, filter, normalisation) reaches the config."""
    publish(offline_hub, "resnet18.tv_in1k", timm_model("resnet18"))
    c = finetune_cifar10.get_config()
    c.update(init_checkpoint="hub:resnet18.tv_in1k", dataset="fake_cifar", data_dir=data_dir, pad=0)
    c.update(num_train_steps=2, num_epochs=-1, batch_size=16, eval_batch_size=16, progress_bar=False)
    result = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 2 and np.isfinite(result["test_loss"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["model"], saved["crop_pct"], saved["interpolation"]) == ("resnet18", 0.875, "bilinear")
    assert saved["mean"] == [0.485, 0.456, 0.406]
    _, hub_variables = resnet_jax.pretrained("resnet18.tv_in1k")
    params = saved_state(tmp_path / "run", step=2)["params"]
    backbone = {k: v for k, v in params.items() if k != "head"}
    chex.assert_trees_all_equal(backbone, {k: v for k, v in hub_variables["params"].items() if k != "head"})


def test_the_seed_recipe_starts_from_the_articles_weights_and_says_so_offline(tmp_path, data_dir):
    config = finetune_cifar10_seed.get_config()
    assert config.init_checkpoint == "hub:resnet50.tv_in1k"  # torchvision's IMAGENET1K_V1
    assert resnet_jax.hub.available_pretrained().count("resnet50.tv_in1k") == 1
    empty = tmp_path / "hf"
    empty.mkdir()
    workdir = tmp_path / "run"
    config = str(REPO / "configs" / "finetune_cifar10_seed.py")
    cmd = [sys.executable, "-m", "train", "--config", config, f"--workdir={workdir}",
           f"--config.data_dir={data_dir}", "--config.dataset=fake_cifar"]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **offline_env(empty)}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: init_checkpoint: "), done.stderr[-2000:]
    assert "hf download timm/resnet50.tv_in1k model.safetensors" in errors[0]
    assert not workdir.exists() and not any(empty.iterdir())


def test_eval_pretrained_uses_the_view_make_predict_fn_uses(offline_hub):
    """On tfds's mock imagenet2012 (images of several sizes): the accuracy train.eval reports is the one
    make_predict_fn gives on the decoded images, which resizes exactly as timm's eval transform."""
    import tensorflow_datasets as tfds

    publish(offline_hub, "resnet18.a3_in1k", timm_model("resnet18"))
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        result = evaluate_pretrained("resnet18.a3_in1k", data_dir=None, batch_size=8)
        decoders = {"image": tfds.decode.SkipDecoding()}  # the encoded files, as the pipeline reads them
        source = tfds.data_source("imagenet2012", split="validation", decoders=decoders)
        examples = [source[i] for i in range(16)]
    model, variables = resnet_jax.pretrained("resnet18.a3_in1k")
    predict = resnet_jax.make_predict_fn(model)
    images = [resnet_jax.images.decode(e["image"]) for e in examples]  # the one decoder
    assert len({image.shape for image in images}) > 1  # several sizes, each resized and cropped by predict
    logits = np.concatenate([np.asarray(predict(variables, image[None])) for image in images])
    labels = np.array([e["label"] for e in examples])
    assert result["examples"] == 16
    assert result["accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)))
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert result["accuracy_top5"] == pytest.approx(float(np.mean((top5 == labels[:, None]).any(-1))))
    expected_loss = np.mean(jax.nn.logsumexp(logits, -1) - logits[np.arange(16), labels])
    assert result["loss"] == pytest.approx(float(expected_loss), rel=1e-4)
