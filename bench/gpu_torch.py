"""bench/gpu.py's PyTorch part: torchvision's ResNet-50 with bf16 autocast (AMP) and channels_last, training
and eval on the same GPU, run in a process of its own (`python bench/gpu.py --part torch`)."""

from __future__ import annotations

import statistics
import time


def median_rate(run, batch: int, steps: int, windows: int) -> float:
    """img/s of `run(steps)`, the median over `windows` timed windows."""
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        run(steps)
        rates.append(batch * steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_torch(args) -> list[dict]:
    import torch
    import torch.nn.functional as F
    import torchvision

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    torch.backends.cudnn.benchmark = True
    if args.smoke:
        model = torchvision.models.resnet.ResNet(
            torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10
        )
        size, b, classes = 64, 2, 10
    else:
        model, size, b, classes = torchvision.models.resnet50(), 224, 256, 1000
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (b,), device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def run_train(k):
        model.train()
        for _ in range(k):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()

    @torch.no_grad()
    def run_eval(k):
        model.eval()
        for _ in range(k):
            with torch.autocast(device, dtype=torch.bfloat16):
                model(x)
        sync()

    t0 = time.perf_counter()
    run_train(1)
    first = time.perf_counter() - t0
    run_train(args.warmup)
    rows = [
        {
            "what": "torchvision resnet50 train (bf16 AMP, channels_last)",
            "fw": "torch",
            "batch": b,
            "size": size,
            "img_s": median_rate(run_train, b, args.steps, args.windows),
            "first_step_s": first,
        }
    ]
    run_eval(1 + args.warmup)
    rows.append(
        {
            "what": "torchvision resnet50 eval (bf16 AMP, channels_last)",
            "fw": "torch",
            "batch": b,
            "size": size,
            "img_s": median_rate(run_eval, b, args.steps, args.windows),
        }
    )
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    for r in rows:
        r["device"] = name
    return rows
