"""One training run's state between steps, and the loop that advances it.

`RunState.open` checks the workdir's checkpoints against the config and resumes from the newest intact,
healthy one (or config.resume_step) without writing anything; `start` creates the run's files; `loop`
trains, logs, evaluates, saves healthy states (train/health.py) and stops (finished, signalled, or
diverged).
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import optax

from resnet_jax.checkpoint import CheckpointError, RunCheckpoints, make_meta
from train import health, optim, programs, run_config
from train import metrics as metrics_lib
from train.data import DataError
from train.data.tfds_data import DatasetUnavailableError
from train.signals import StopRequest

if TYPE_CHECKING:
    import ml_collections

# Without a log line for this long, the progress bar shows the loss so far (read, not logged: the
# records stay the same however fast the machine is).
_SHOW_EVERY_S = 60.0


def _signature(tree: Any) -> str:
    # What a checkpoint's arrays must be for this run to restore it: paths, shapes and dtypes.
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    text = ";".join(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _unhealthy(meta: dict[str, Any]) -> str | None:
    # Checkpoints written before health checks existed may hold a diverged state with a NaN evaluation.
    loss = meta.get("eval", {}).get("loss")
    return f"its evaluation loss is {loss}" if loss is not None and not math.isfinite(loss) else None


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
        self.head_steps = False  # set when the steps train a head on cached features (throughput label)

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
        """The run in `workdir`: resumed from its newest intact, healthy checkpoint (or config.resume_step),
        or fresh. Writes nothing, but moves a corrupt or unhealthy checkpoint aside.

        Raises:
          CheckpointError: the workdir's checkpoints belong to a different configuration (naming the
            differing fields), every one of them is corrupt, or resume_step is not one of them.
        """
        meta = make_meta(
            config.model,
            model,
            preprocess=pipeline.preprocess,
            origin="resnet-jax",
            step=0,
            dataset=data_name(config),
            image_size=list(pipeline.image_shape[:2]),
            **pipeline.eval_view,
            **({"class_names": list(pipeline.class_names)} if pipeline.class_names else {}),
        )
        run = cls(config, workdir, pipeline, state, num_steps, None, meta)
        run.checkpoints = RunCheckpoints(workdir, config.keep_checkpoints, log=run.say)
        run.meta["state_signature"] = _signature(run._checkpoint_state())
        step = config.resume_step if config.get("resume_step", -1) >= 0 else None
        restored = run.checkpoints.restore_latest(
            run._checkpoint_state(), check=run._check_compatible, unhealthy=_unhealthy, step=step
        )
        if restored is not None:
            saved, saved_meta = restored
            run.sums = {**saved.pop("train_sums"), "param_norm": run.sums["param_norm"]}
            run.state = run.state.replace(**saved)
            run.step = int(saved_meta["step"])
            run.say(f"resuming from {run.checkpoints.step_dir(run.step)} (step {run.step} of {num_steps})")
        return run

    def say(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def _checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        # param_norm is rewritten by every step: resuming needs the window's sums only.
        sums = {k: v for k, v in self.sums.items() if k != "param_norm"}
        return {"params": s.params, "batch_stats": s.batch_stats, "opt_state": s.opt_state, "step": s.step,
                "train_sums": sums}  # fmt: skip

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
        path = os.path.join(self.workdir, run_config.CONFIG)
        if os.path.exists(path):
            differ = run_config.differing_fields(run_config.load_json(self.workdir), self.config)
        else:
            differ = [f"model: {saved_meta['model']} {saved_meta['model_kwargs']} -> {self.config.model}"]
        raise CheckpointError(
            f"{self.workdir} holds a run whose checkpoints do not fit this config (fields that differ "
            f"from its config.json: {'; '.join(differ) or 'none, but the saved state differs'}). Use a new "
            f"--workdir for this config, or rerun with the config in {path} to resume that run."
        )

    def announce(self) -> None:
        """One line saying what the run trains and where (before any long preparation)."""
        c = self.config
        self.say(
            f"{c.model} on {data_name(c)}: {self.num_steps} steps of {c.batch_size} "
            f"({self.num_steps / self.pipeline.steps_per_epoch:.2f} epochs) on {jax.device_count()} "
            f"{jax.devices()[0].platform} device(s)"
        )

    def start(self) -> None:
        """Creates the run's files: every check has passed. Only process 0 writes them."""
        if self.is_main:
            os.makedirs(self.workdir, exist_ok=True)
            changed = run_config.record(self.workdir, self.config, self.step)
            if changed and self.step:
                self.say(f"resumed with changed fields: {', '.join(changed)} (see {run_config.HISTORY})")
        if self.config.get("resume_step", -1) >= 0:
            self.checkpoints.supersede_after(self.step)
        self.checkpoints.create_directory()
        self.writer = metrics_lib.MetricsWriter(self.workdir, self.step, enabled=self.is_main)
        self.schedule = optim.learning_rate_schedule(self.config, self.num_steps)
        self.reference_norm = float(optax.tree.norm(self.state.params))

    def check_health(self, host_sums: dict[str, Any], eval_metrics: dict[str, Any] | None) -> None:
        """Raises TrainingDiverged (saving nothing) unless the state is healthy (train/health.py)."""
        why = health.problem(host_sums, self.reference_norm, eval_metrics)
        if why is None:
            return
        self.checkpoints.wait_until_finished()
        raise health.diverged(
            self.step,
            why,
            self.checkpoints.all_steps(),
            self.checkpoints.directory,
            self.config.learning_rate,
        )

    def save(self, host_sums: dict[str, Any], eval_metrics: dict[str, Any] | None) -> None:
        """Saves the state once it has passed check_health; it becomes the new healthy reference."""
        metrics = {k: eval_metrics[k] for k in ("accuracy", "loss")} if eval_metrics else None
        self.checkpoints.save(self.step, self._checkpoint_state(), self.meta, metrics)
        self.reference_norm = float(host_sums["param_norm"])

    def loop(self, run_train: Callable, run_eval: Callable) -> dict[str, Any]:
        """Trains to num_steps (or a stop request), logging, evaluating and saving as the config says.

        Args:
          run_train: programs.make_train_fn's `run(state, sums, inputs)`.
          run_eval: `run_eval(state) -> eval summary`.

        Returns:
          {'step', 'stopped_by', 'test_accuracy', 'test_loss'} (+ 'test_accuracy_hflip').
        """
        from tqdm import tqdm  # the training extra's progress bar

        c = self.config
        bar = tqdm(total=self.num_steps, initial=self.step, disable=not (c.progress_bar and self.is_main),
                   unit="step")  # fmt: skip
        pending: collections.deque = collections.deque()
        inputs = self.pipeline.train_inputs(self.step)
        stopped_by, eval_metrics = None, None
        self._window = (_now(), self.step)
        shown = _now()
        try:
            with StopRequest(enabled=self.is_main, multi_host=jax.process_count() > 1) as stop:
                stop.dispatched = self.step
                while self.step < self.num_steps:
                    self.state, self.sums, done = run_train(self.state, self.sums, next(inputs))
                    self.step += 1
                    stop.dispatched, stop.checked = self.step, False
                    pending.append(done)
                    if len(pending) > c.max_steps_ahead:  # the bar answers finished steps
                        jax.block_until_ready(pending.popleft())
                        bar.update(1)
                    step = self.step
                    # Step 1 is logged too: the first loss appears as soon as the program has compiled.
                    log_now = step % c.log_every_steps == 0 or step in (1, self.num_steps)
                    eval_now = step == self.num_steps or (
                        c.eval_every_steps > 0 and step % c.eval_every_steps == 0
                    )
                    stop_now = stop.requested(step) or step == c.stop_after_steps
                    save_now = eval_now or stop_now or step % c.checkpoint_every_steps == 0
                    if not (log_now or save_now):
                        if self.is_main and c.progress_bar and _now() - shown > _SHOW_EVERY_S:
                            bar.set_postfix(self._postfix(jax.device_get(self.sums), step))
                            shown = _now()
                        continue
                    host = jax.device_get(self.sums)  # every dispatched step has finished
                    pending.clear()
                    bar.update(step - bar.n)
                    self.check_health(host, None)
                    if log_now:
                        bar.set_postfix(self._log(host, step))
                        shown = _now()
                    eval_metrics = self._evaluate(run_eval, bar) if eval_now else None
                    if save_now:
                        self.check_health(host, eval_metrics)
                        self.save(host, eval_metrics)
                    if stop_now:
                        stopped_by = stop.name or "stop_after_steps"
                        break
        except DataError as e:  # a file went bad after the pipeline's start-of-run checks
            raise DatasetUnavailableError(f"{e}. {self._resume_hint()}") from None
        finally:
            bar.close()
            try:
                self.checkpoints.wait_until_finished()
            finally:
                self.checkpoints.close()
                self.writer.close()
        return self._finish(stopped_by, eval_metrics, run_eval)

    def _resume_hint(self) -> str:
        self.checkpoints.wait_until_finished()
        steps = self.checkpoints.all_steps()
        if not steps:
            return "No checkpoint was saved yet: rerun the same command to start again"
        return (
            f"The {len(steps)} checkpoint(s) in {self.checkpoints.directory} are kept: rerun the same "
            f"command to resume from step {max(steps)}"
        )

    def _postfix(self, host: dict[str, Any], step: int) -> dict[str, str]:
        start, start_step = self._window
        rate = (step - start_step) * self.config.batch_size / max(_now() - start, 1e-9)
        steps = max(float(host["steps"]), 1.0)
        return {"loss": f"{host['loss'] / steps:.3f}", "acc": f"{host['accuracy'] / steps:.3f}",
                ("head_img_s" if self.head_steps else "img_s"): f"{rate:.0f}"}  # fmt: skip

    def _log(self, host: dict[str, Any], step: int) -> dict[str, str]:
        """Writes the window's train record, starts a new window, and returns the bar's postfix."""
        start, start_step = self._window
        record = {
            "loss": float(host["loss"] / host["steps"]),
            "accuracy": float(host["accuracy"] / host["steps"]),
            "lr": optim.lr_at(self.schedule, step - 1),
            "epoch": step / self.pipeline.steps_per_epoch,
            # Cached-feature runs apply only the head each step: their rate is not an image pipeline's.
            ("head_img_per_sec" if self.head_steps else "img_per_sec"): (step - start_step)
            * self.config.batch_size
            / (_now() - start),
        }
        self.writer.write(step, "train", record)
        postfix = {**self._postfix(host, step), "lr": f"{record['lr']:.4f}"}
        self.sums = jax.device_put(programs.zero_sums(), self.sums["loss"].sharding)
        self._window = (_now(), step)
        return postfix

    def _evaluate(self, run_eval: Callable, bar: Any) -> dict[str, Any]:
        start = _now()
        eval_metrics = run_eval(self.state)
        self.writer.write(self.step, "test", eval_metrics)
        if self.is_main:
            bar.write(f"step {self.step}: {format_eval(eval_metrics)}")
            metrics_lib.plot_curves(self.writer.path, os.path.join(self.workdir, "curves.png"))
        window_start, window_step = self._window
        self._window = (window_start + _now() - start, window_step)  # img/s counts training time only
        return eval_metrics

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
        self.say(f"final: {format_eval(test)} at step {self.step}")
        return result


def data_name(config: ml_collections.ConfigDict) -> str:
    """What the run trains on, for the banner and the checkpoint meta: a tfds name or a folder."""
    if config.get("pipeline") == "grain" and config.get("data_source") == "folder":
        return f"the image folder {config.train_dir}"
    return config.dataset


def _now() -> float:
    return time.perf_counter()


def format_eval(test: dict[str, Any]) -> str:
    """One line for an evaluation: accuracy and loss (and the flip test-time augmentation accuracy)."""
    text = f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f})"
    if "accuracy_hflip" in test:
        text += f", with flip test-time augmentation {test['accuracy_hflip']:.4f}"
    return text
