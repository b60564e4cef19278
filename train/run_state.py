"""One training run's state between steps, and the loop that advances it.

`RunState.open` checks the workdir's checkpoints against the config and resumes from the newest intact
one without writing anything; `start` creates the run's files; `loop` trains, logs, evaluates, saves and
stops (finished, signalled, or diverged).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from resnet_jax.checkpoint import CheckpointError, RunCheckpoints, make_meta
from train import metrics as metrics_lib
from train import optim, programs
from train.configuration import differing_fields
from train.signals import StopRequest

if TYPE_CHECKING:
    import ml_collections


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became non-finite; the message names the step and the good checkpoints."""


def _signature(tree: Any) -> str:
    # What a checkpoint's arrays must be for this run to restore it: paths, shapes and dtypes.
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    text = ";".join(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class RunState:
    """The mutable state of a run: train state, window sums, step, and where they are written."""

    def __init__(self, config, workdir, pipeline, state, num_steps, checkpoints, meta):
        self.config, self.workdir, self.pipeline = config, workdir, pipeline
        self.state, self.num_steps = state, num_steps
        self.checkpoints, self.meta = checkpoints, meta
        self.is_main = jax.process_index() == 0
        # Replicated like the state (the state's sharding: every leaf is replicated on the mesh).
        self.sums = jax.device_put(programs.zero_sums(), jax.tree.leaves(state.params)[0].sharding)
        self.step = 0
        self.writer = None

    @classmethod
    def open(
        cls,
        config: ml_collections.ConfigDict,
        workdir: str,
        model: Any,
        pipeline: Any,
        state: Any,
        num_steps: int,
    ) -> RunState:
        """The run in `workdir`: resumed from its newest intact checkpoint, or fresh. Writes nothing.

        Raises:
          CheckpointError: the workdir's checkpoints belong to a different configuration (naming the
            differing fields), or every one of them is corrupt.
        """
        meta = make_meta(
            config.model,
            model,
            preprocess=pipeline.preprocess,
            origin="resnet-jax",
            step=0,
            dataset=data_name(config),
            image_size=list(pipeline.image_shape[:2]),
            **({"class_names": list(pipeline.class_names)} if pipeline.class_names else {}),
        )
        run = cls(config, workdir, pipeline, state, num_steps, None, meta)
        run.checkpoints = RunCheckpoints(workdir, config.keep_checkpoints, log=run.say)
        run.meta["state_signature"] = _signature(run._checkpoint_state())
        restored = run.checkpoints.restore_latest(run._checkpoint_state(), check=run._check_compatible)
        if restored is not None:
            saved, saved_meta = restored
            run.sums = saved.pop("train_sums")
            run.state = run.state.replace(**saved)
            run.step = int(saved_meta["step"])
            run.say(f"resuming from {run.checkpoints.step_dir(run.step)} (step {run.step} of {num_steps})")
        return run

    def say(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def _checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "params": s.params,
            "batch_stats": s.batch_stats,
            "opt_state": s.opt_state,
            "step": s.step,
            "train_sums": self.sums,
        }

    def _check_compatible(self, saved_meta: dict[str, Any]) -> None:
        signature = saved_meta.get("state_signature")
        if signature == self.meta["state_signature"]:
            return
        same_model = (saved_meta["model"], saved_meta["model_kwargs"]) == (
            self.meta["model"],
            self.meta["model_kwargs"],
        )
        if signature is None and same_model:
            return  # written before signatures existed; the restore itself checks the shapes
        path = os.path.join(self.workdir, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                differ = differing_fields(json.load(f), self.config)
        else:
            differ = [f"model: {saved_meta['model']} {saved_meta['model_kwargs']} -> {self.config.model}"]
        raise CheckpointError(
            f"{self.workdir} holds a run whose checkpoints do not fit this config (fields that differ "
            f"from its config.json: {'; '.join(differ) or 'none, but the saved state differs'}). Use a new "
            f"--workdir for this config, or rerun with the config in {path} to resume that run."
        )

    def start(self) -> None:
        """Creates the run's files: every check has passed. Only process 0 writes them."""
        if self.is_main:
            os.makedirs(self.workdir, exist_ok=True)
            with open(os.path.join(self.workdir, "config.json"), "w") as f:
                f.write(self.config.to_json_best_effort(indent=2, sort_keys=True))
        self.checkpoints.create_directory()
        self.writer = metrics_lib.MetricsWriter(self.workdir, self.step, enabled=self.is_main)

    def save(self, eval_metrics: dict[str, Any] | None) -> None:
        metrics = {"accuracy": eval_metrics["accuracy"]} if eval_metrics else None
        self.checkpoints.save(self.step, self._checkpoint_state(), self.meta, metrics)

    def check_finite(self, host_sums: dict[str, Any]) -> None:
        """Raises TrainingDiverged if a step since the last read-back was non-finite (nothing saved)."""
        if not int(host_sums["nonfinite"]):
            return
        self.checkpoints.wait_until_finished()
        good = self.checkpoints.all_steps()
        where = (
            f"the last good checkpoint is step {good[-1]} in {self.checkpoints.directory} (kept: {good})"
            if good
            else "no checkpoint was saved before it"
        )
        loss = float(host_sums["loss"]) / max(float(host_sums["steps"]), 1.0)
        raise TrainingDiverged(
            f"training diverged: the loss or the parameters became non-finite at step "
            f"{int(host_sums['first_nonfinite'])} (mean loss since the last log: {loss:.4g}); nothing "
            f"non-finite was saved and {where}. Lower --config.learning_rate (now "
            f"{self.config.learning_rate}) and rerun the same command to resume from it."
        )

    def loop(self, run_train: Callable, run_eval: Callable) -> dict[str, Any]:
        """Trains to num_steps (or a stop request), logging, evaluating and saving as the config says.

        Args:
          run_train: programs.make_train_fn's `run(state, sums, inputs)`.
          run_eval: `run_eval(state) -> eval summary`.

        Returns:
          {'step', 'stopped_by', 'test_accuracy', 'test_loss'} (+ 'test_accuracy_hflip').
        """
        from tqdm import tqdm

        c = self.config
        schedule = optim.learning_rate_schedule(c, self.num_steps)
        steps_per_epoch = self.pipeline.steps_per_epoch
        self.say(
            f"{c.model} on {data_name(c)}: {self.num_steps} steps of {c.batch_size} "
            f"({self.num_steps / steps_per_epoch:.2f} epochs) on {jax.device_count()} "
            f"{jax.devices()[0].platform} device(s)"
        )
        bar = tqdm(
            total=self.num_steps,
            initial=self.step,
            disable=not (c.progress_bar and self.is_main),
            unit="step",
        )
        pending: collections.deque = collections.deque()
        inputs = self.pipeline.train_inputs(self.step)
        stopped_by, eval_metrics = None, None
        window_start, window_step = _now(), self.step
        try:
            with StopRequest(enabled=self.is_main, multi_host=jax.process_count() > 1) as stop:
                stop.step = self.step
                while self.step < self.num_steps:
                    self.state, self.sums, done = run_train(self.state, self.sums, next(inputs))
                    self.step += 1
                    pending.append(done)
                    if len(pending) > c.max_steps_ahead:  # the bar and the stop answer finished steps
                        jax.block_until_ready(pending.popleft())
                        bar.update(1)
                        stop.step = bar.n
                    step = self.step
                    log_now = step % c.log_every_steps == 0 or step == self.num_steps
                    eval_now = step == self.num_steps or (
                        c.eval_every_steps > 0 and step % c.eval_every_steps == 0
                    )
                    stop_now = stop.requested(step) or step == c.stop_after_steps
                    save_now = eval_now or stop_now or step % c.checkpoint_every_steps == 0
                    if not (log_now or save_now):
                        continue
                    host = jax.device_get(self.sums)  # every dispatched step has finished
                    pending.clear()
                    bar.update(step - bar.n)
                    stop.step = step
                    self.check_finite(host)
                    if log_now:
                        elapsed = _now() - window_start
                        record = {
                            "loss": float(host["loss"] / host["steps"]),
                            "accuracy": float(host["accuracy"] / host["steps"]),
                            "lr": optim.lr_at(schedule, step - 1),
                            "epoch": step / steps_per_epoch,
                            "img_per_sec": (step - window_step) * c.batch_size / elapsed,
                        }
                        self.writer.write(step, "train", record)
                        bar.set_postfix(
                            loss=f"{record['loss']:.3f}",
                            acc=f"{record['accuracy']:.3f}",
                            lr=f"{record['lr']:.4f}",
                            img_s=f"{record['img_per_sec']:.0f}",
                        )
                        self.sums = jax.device_put(programs.zero_sums(), self.sums["loss"].sharding)
                        window_start, window_step = _now(), step
                    eval_metrics = None
                    if eval_now:
                        eval_start = _now()
                        eval_metrics = run_eval(self.state)
                        self.writer.write(step, "test", eval_metrics)
                        if self.is_main:
                            bar.write(f"step {step}: {describe(eval_metrics)}")
                            metrics_lib.plot_curves(
                                self.writer.path, os.path.join(self.workdir, "curves.png")
                            )
                        window_start += _now() - eval_start  # img/s counts training time only
                    if save_now:
                        self.save(eval_metrics)
                    if stop_now:
                        stopped_by = stop.name or "stop_after_steps"
                        break
        finally:
            bar.close()
            self.checkpoints.wait_until_finished()
            self.checkpoints.close()
            self.writer.close()
        return self._finish(stopped_by, eval_metrics, run_eval)

    def _finish(self, stopped_by, eval_metrics, run_eval) -> dict[str, Any]:
        result = {"step": self.step, "stopped_by": stopped_by, "test_accuracy": None, "test_loss": None}
        if stopped_by is not None:
            self.say(
                f"stopped by {stopped_by} at step {self.step}; checkpoint saved. Rerun the same command "
                "to resume."
            )
            return result
        # A finished run rerun on its workdir trains no step and evaluates again rather than reading
        # metrics.jsonl: only process 0 has that file, and every process takes part in evaluation.
        test = eval_metrics if eval_metrics is not None else run_eval(self.state)
        result.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
        if "accuracy_hflip" in test:
            result["test_accuracy_hflip"] = test["accuracy_hflip"]
        self.say(f"final: {describe(test)} at step {self.step}")
        return result


def data_name(config: ml_collections.ConfigDict) -> str:
    """What the run trains on, for the banner and the checkpoint meta: a tfds name or a folder."""
    if config.get("pipeline") == "grain" and config.get("data_source") == "folder":
        return f"the image folder {config.train_dir}"
    return config.dataset


def _now() -> float:
    return time.perf_counter()


def describe(test: dict[str, Any]) -> str:
    """One line for an evaluation: accuracy and loss (and the flip test-time augmentation accuracy)."""
    text = f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f})"
    if "accuracy_hflip" in test:
        text += f", with flip test-time augmentation {test['accuracy_hflip']:.4f}"
    return text
