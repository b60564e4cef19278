"""timm models with random weights, published into a Hugging Face cache directory laid out as the Hub
client lays it out (models--timm--<name>/refs/main -> snapshots/<commit>/model.safetensors), so that
tests load them with HF_HUB_OFFLINE through huggingface_hub's real code path."""

import hashlib
from pathlib import Path


def timm_model(name: str, seed: int = 0):
    """timm's model `name` ('resnet50' or 'resnet50.a1_in1k') in eval mode, random weights, and random
    BatchNorm statistics and affine parameters. timm zero-inits each block's last BatchNorm scale, which
    would hide every residual branch; small random scales there keep the logits of 50-block nets O(1)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.6, 1.2, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.8, 2.0, generator=g)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (), generator=g)))
        for block in model.modules():
            if hasattr(block, "zero_init_last"):  # Bottleneck (bn3) and BasicBlock (bn2)
                last = block.bn3 if hasattr(block, "bn3") else block.bn2
                last.weight.uniform_(0.05, 0.25, generator=g)
        model.get_classifier().weight.mul_(10.0)  # logits of a few units, not a few tenths
    return model


def publish(cache: Path, name: str, model) -> Path:
    """Writes `model.state_dict()` as timm/<name>'s model.safetensors into the HF cache `cache`."""
    from safetensors.torch import save_file

    repo = Path(cache) / f"models--timm--{name}"
    commit = hashlib.sha1(name.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def offline_env(cache: Path) -> dict[str, str]:
    """Environment entries that make huggingface_hub read only `cache` (for subprocesses)."""
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}
