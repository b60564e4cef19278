"""Test setup: 8 CPU devices for the data-parallel tests, set before JAX initialises its backend."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No persistent compilation cache for the suite's runs (tests/test_compilation_cache.py turns it on
# itself): test results never depend on what an earlier run left in ~/.cache.
os.environ.setdefault("RESNET_JAX_CACHE_DIR", "off")
