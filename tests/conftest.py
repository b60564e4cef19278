"""Test setup: 8 CPU devices for the data-parallel tests, set before JAX initialises its backend."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# On CI every test must run: a skip there means a broken install (../shared missing, torch or keras not
# installed, a bench module that fails to import), which must fail the run instead of passing it green.
_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and _skipped and exitstatus == 0:
        print("\nCI forbids skipped tests; these skipped:\n  " + "\n  ".join(_skipped))
        session.exitstatus = 1
