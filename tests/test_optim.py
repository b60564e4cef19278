"""Schedules and SGD: against the paper's numbers and against torch.optim.SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import cifar10_fast, cifar10_resnet20, cifar10_resnet110
from train import optim
from train.configuration import build_model
from train.steps import create_train_state


def lrs(config, steps, num_steps):
    schedule = optim.learning_rate_schedule(config, num_steps)
    return [optim.lr_at(schedule, s) for s in steps]


def test_paper_schedule():
    got = lrs(cifar10_resnet20.get_config(), [0, 31_999, 32_000, 47_999, 48_000, 63_999], 64_000)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_resnet110_warms_up_at_lr_001_for_400_steps():
    got = lrs(cifar10_resnet110.get_config(), [0, 399, 400, 31_999, 32_000, 48_000], 64_000)
    np.testing.assert_allclose(got, [0.01, 0.01, 0.1, 0.1, 0.01, 0.001], rtol=1e-6)


def test_cosine_with_linear_warmup():
    c = cifar10_resnet20.get_config()
    c.schedule, c.warmup_steps, c.learning_rate = "cosine", 10, 0.4
    got = lrs(c, [0, 5, 10, 60, 110], 110)  # cosine over the 100 steps after warm-up
    np.testing.assert_allclose(got, [0.0, 0.2, 0.4, 0.2, 0.0], atol=1e-6)


def test_onecycle_rises_to_peak_then_anneals():
    c = cifar10_fast.get_config()
    n = 1000
    got = lrs(c, [0, int(n * c.onecycle_pct_start), n], n)
    start = c.learning_rate / c.onecycle_div_factor
    np.testing.assert_allclose(got, [start, c.learning_rate, start / c.onecycle_final_div_factor], rtol=1e-4)


def test_weight_decay_mask_selects_only_kernels():
    c = cifar10_resnet20.get_config()
    state = create_train_state(jax.random.PRNGKey(0), build_model(c), optax.identity(), (32, 32, 3))
    flat = traverse_util.flatten_dict(optim.weight_decay_mask(state.params), sep="/")
    decayed = {k for k, v in flat.items() if v}
    assert (
        "stem_conv/kernel" in decayed and "head/kernel" in decayed and "stage2_block0/conv1/kernel" in decayed
    )
    assert all(k.endswith("kernel") for k in decayed)
    assert {"head/bias", "stem_bn/scale", "stem_bn/bias"} <= set(flat) - decayed


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch(nesterov):
    torch = pytest.importorskip("torch")
    c = cifar10_resnet20.get_config()
    c.schedule, c.nesterov, c.weight_decay, c.learning_rate = "constant", nesterov, 0.05, 0.1
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
        "bn": {"scale": rng.normal(size=(4,)).astype(np.float32)},
    }
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(3)]

    tx = optim.create_optimizer(c, 100)
    p, opt_state = jax.tree.map(jnp.asarray, params), None
    opt_state = tx.init(p)
    for g in grads:
        updates, opt_state = tx.update(g, opt_state, p)
        p = optax.apply_updates(p, updates)

    kernel = torch.tensor(params["conv"]["kernel"], requires_grad=True)
    scale = torch.tensor(params["bn"]["scale"], requires_grad=True)
    opt = torch.optim.SGD(
        [{"params": [kernel], "weight_decay": 0.05}, {"params": [scale], "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=nesterov,
    )
    for g in grads:
        kernel.grad, scale.grad = torch.tensor(g["conv"]["kernel"]), torch.tensor(g["bn"]["scale"])
        opt.step()
    np.testing.assert_allclose(p["conv"]["kernel"], kernel.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p["bn"]["scale"], scale.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("on", "bn_decays"), [("kernels", False), ("all", True)])
def test_weight_decay_on_selects_the_decayed_parameters(on, bn_decays):
    c = cifar10_resnet20.get_config()
    c.schedule, c.weight_decay, c.weight_decay_on, c.momentum = "constant", 0.1, on, 0.0
    params = {"conv": {"kernel": jnp.ones((3, 3))}, "bn": {"scale": jnp.ones(3), "bias": jnp.ones(3)}}
    tx = optim.create_optimizer(c, 10)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)  # zero gradients: only the decay acts
    assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0
    assert (float(jnp.abs(updates["bn"]["scale"]).max()) > 0) == bn_decays
