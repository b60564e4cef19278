"""The code blocks of README.md and docs/*.md, and how tests/test_docs.py runs each command of them.

A block is a fenced ```python or ```bash block. A block preceded by the line
`<!-- test: not run (REASON) -->` is not run; tests/test_docs.py lists those. Every other block runs:
python blocks as written, bash blocks one command line at a time (backslash continuations joined), with
the placeholders below bound to prepared stand-ins, and long jobs shortened by the flags below.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# What a reader substitutes; each is bound to a prepared stand-in (tests/test_docs.py says which).
PLACEHOLDERS = ("DATA_DIR", "RUN_DIR", "CKPT", "IMAGE_DIR", "CIFAR10_FOLDER")
# Appended to every `python -m train` command: 2 steps of batch 8 on slices of the splits, one evaluation.
TRAIN_SHORT = (
    "--config.num_train_steps=2",
    "--config.num_epochs=-1",
    "--config.eval_every_steps=-1",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.train_split=train[:64]",
    "--config.eval_split=test[:32]",
    "--config.progress_bar=False",
)
# Appended to each bench script's command: the smallest sizes the script takes.
BENCH_SHORT = {
    "run_all.py": ("--smoke",),
    "gpu.py": ("--smoke",),
    "throughput.py": ("--steps=2", "--config.train_split=train[:512]", "--config.eval_split=test[:64]"),
    "startup.py": ("--models", "resnet20", "--caches", "off"),
    "decode.py": ("--images", "64", "--seconds", "0.2", "--batches", "1"),  # one batch of 64 images
    "dispatch.py": ("--steps", "2", "--rounds", "1"),
    "finetune_cache.py": ("--backbone_steps", "2", "--finetune_epochs", "0.01"),
    "xla_flags.py": ("--smoke",),
    "folder_check.py": ("--threads", "2", "--repeats", "1"),
}
# Appended to `python -m pytest` commands: the selection is checked (paths, marker expressions), not run
# (the suite inside itself).
PYTEST_SHORT = ("--collect-only", "-q")

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```\n", re.S | re.M)
_NOT_RUN = re.compile(r"<!--\s*test:\s*not run\s*\((?P<reason>[^)]+)\)\s*-->\n$")
_ENV = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*")  # leading VAR=value assignments
_OPERATORS = re.compile(r"\|\||&&|[|;#]")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the block's first code line
    lang: str
    code: str
    not_run: str | None  # the reason, for a block marked not to run

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(pages: list[Path] = PAGES) -> list[Block]:
    """Every fenced code block of `pages`, in order."""
    found = []
    for path in pages:
        text = path.read_text()
        for m in _FENCE.finditer(text):
            before = text[: m.start()]
            marker = _NOT_RUN.search(before[before.rfind("\n", 0, len(before) - 1) + 1 :])
            line = text.count("\n", 0, m.start("code")) + 1
            page = str(path.relative_to(REPO))
            found.append(Block(page, line, m["lang"], m["code"], marker["reason"] if marker else None))
    return found


def fence_lines(path: Path) -> int:
    """How many lines of `path` open or close a fence (each block has two)."""
    return sum(line.startswith("```") for line in path.read_text().splitlines())


def commands(code: str) -> list[str]:
    """The command lines of a bash block: continuations joined, blank lines and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [c.strip() for c in joined.splitlines() if c.strip() and not c.lstrip().startswith("#")]


def program(command: str) -> str:
    """The command without its leading VAR=value assignments."""
    return command[_ENV.match(command).end() :]


def kind(command: str) -> str | None:
    """How a command runs: 'pip' (checked, not run), 'pytest', 'train', 'bench', 'python' (as written);
    None: nothing here knows how to run it offline (it belongs in a not-run block)."""
    if "pip install" in command:
        return "pip"
    rest = program(command)
    if rest.startswith("python -m pytest"):
        return "pytest"
    if re.match(r"python -m train(\s|$)", rest):
        return "train"
    if re.match(r"python bench/\w+\.py", rest):
        return "bench"
    if re.match(r"python (-m [\w.]+|-c )", rest):
        return "python"
    return None


def shortened(command: str) -> str:
    """The command as the docs tests run it: with its kind's shortening flags appended."""
    k = kind(command)
    if k == "train":
        extra = TRAIN_SHORT
    elif k == "bench":
        extra = BENCH_SHORT[bench_script(command)]
    elif k == "pytest":
        extra = PYTEST_SHORT
    else:
        extra = ()
    return " ".join([command, *map(shlex.quote, extra)])


def bench_script(command: str) -> str:
    return re.match(r"python bench/(\w+\.py)", program(command))[1]


def appendable(command: str) -> bool:
    """Whether flags appended to the line reach the command (no operator or comment follows it)."""
    return not _OPERATORS.search(program(command))


def pip_extras(command: str) -> list[str]:
    """The extras each `pip install -e '.[a,b]'` of the line names."""
    return [e.strip() for group in re.findall(r"\.\[([\w,-]+)\]", command) for e in group.split(",")]


def bind(text: str, values: dict[str, str]) -> str:
    """`text` with each placeholder word replaced by its value (TFDS_DATA_DIR is not DATA_DIR)."""
    for name, value in values.items():
        text = re.sub(rf"(?<![\w$]){name}(?!\w)", lambda _, v=value: v, text)
    return text


def placeholders_in(text: str) -> set[str]:
    return {p for p in PLACEHOLDERS if re.search(rf"(?<![\w$]){p}(?!\w)", text)}
