"""Fine-tune policy, decided once from the resolved config: what stays frozen, what starts fresh, and
whether the head trains on cached features.

`FineTune.from_config` is computed once per run (train.finetune.resolve_config returns it) and handed to
whoever needs a decision: the optimiser (train.finetune.wrap_optimizer), the model's BatchNorm
(resolve_config) and the choice between image and cached-feature programs (train.train).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from train.data import Pipeline
from train.data.memory import InMemoryPipeline

# The hidden head layer belongs to the head: a new head never inherits the checkpoint's.
HIDDEN_HEAD = "head_hidden"


@dataclasses.dataclass(frozen=True)
class FineTune:
    """What a fine-tune keeps and what it trains.

    Attributes:
      frozen: 'all' (freeze_backbone: everything but the head), else config.freeze_up_to: 'none',
        'stem', 'stage{k}' (the stem and stages 1..k).
      head: top-level parameter names that start fresh: config.head_modules and the hidden head layer.
      backbone_lr_multiplier: the unfrozen backbone's rate relative to the head's.
      cache_features: cached features were asked for (config.cache_features).
    """

    frozen: str
    head: tuple[str, ...]
    backbone_lr_multiplier: float
    cache_features: bool

    @classmethod
    def from_config(cls, config: Any) -> FineTune:
        return cls(
            frozen="all" if config.freeze_backbone else config.freeze_up_to,
            head=tuple(dict.fromkeys((*config.head_modules, HIDDEN_HEAD))),
            backbone_lr_multiplier=float(config.backbone_lr_multiplier),
            cache_features=bool(config.cache_features),
        )

    def cache(self, config: Any, pipeline: Pipeline, params: dict[str, Any]) -> tuple[bool, str | None]:
        """Whether the head trains on cached features, and a one-line notice when it cannot.

        Cached features give the same result as running the frozen backbone every step only when each
        image's features are the same every epoch: no random crop, no dropout in the backbone.

        Args:
          config: the run's resolved config.
          pipeline: the run's data pipeline.
          params: the model's parameters (the head's input width sizes the table).

        Returns:
          (use the cache, notice): the notice is None when the cache is used or was not asked for.
        """
        if not (self.cache_features and self.frozen == "all"):
            return False, None
        off = "--config.cache_features=False to silence this"
        in_memory = isinstance(pipeline, InMemoryPipeline)
        if not in_memory and pipeline.train_transform.random:
            why = (
                f"train_transform={pipeline.train_transform.name!r} augments at random on the host (pass "
                "--config.train_transform=resize_shorter_center_crop or resize to cache)"
            )
        elif in_memory and config.pad > 0:
            why = (
                f"pad={config.pad} crops at random and crops cannot be cached (pass --config.pad=0 to cache)"
            )
        elif config.model_kwargs.get("dropout_rate", 0.0):
            why = "the backbone has dropout, which differs every step"
        else:
            copies = 1 + (in_memory and config.flip)  # the in-memory cache holds the mirror images' too
            fits, why = fits_on_device(pipeline.num_train_examples, pooled_width(params), copies=copies)
            if fits:
                return True, None
        return False, f"features not cached: {why}; the whole network runs every step ({off})"


def fits_on_device(
    num_examples: int, feature_width: int, *, copies: int = 1, bytes_limit: int | None = None
) -> tuple[bool, str]:
    """Whether `copies` [num_examples, feature_width] float32 tables fit in half of a device's memory, and a
    line saying why not. bytes_limit: the device's memory; default the first device's own report (a CPU
    reports none: then it always fits)."""
    nbytes = num_examples * feature_width * 4 * copies
    limit = bytes_limit or (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit and nbytes > limit // 2:
        return False, f"{nbytes / 2**30:.1f} GiB of features exceed half a device's {limit / 2**30:.1f} GiB"
    return True, ""


def pooled_width(params: dict[str, Any]) -> int:
    """The width of the pooled features the head of these parameters takes."""
    return params["head_hidden" if "head_hidden" in params else "head"]["kernel"].shape[0]
