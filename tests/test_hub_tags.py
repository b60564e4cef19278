"""resnet_jax/hub/tags.py is timm's table: every ImageNet-1k tag of our torchvision architectures.

The table is generated from timm's source (timm/models/resnet.py default_cfgs), so that timm is not a
runtime dependency. When timm publishes new tags this test fails; regenerate the file with
`python tests/test_hub_tags.py > resnet_jax/hub/tags.py`.
"""

from resnet_jax.convert.torchvision import ARCHS
from resnet_jax.hub import tags

HEADER = '''"""timm's ImageNet-1k weights of this package's torchvision architectures: name -> eval recipe.

Generated from timm's configs (timm/models/resnet.py default_cfgs) by tests/test_hub_tags.py, which checks
it against the installed timm; regenerate: `python tests/test_hub_tags.py > resnet_jax/hub/tags.py`.
Every name is the Hugging Face Hub repository timm/<name>, holding model.safetensors in torchvision's key
layout. Sizes are square sides in pixels; `test_size` and `crop_pct` are what timm evaluates at (its
test_input_size and test_crop_pct where the config has them), `train_size` what the weights were trained at.
"""

from typing import NamedTuple

# Per-channel (mean, std) of RGB pixels in [0, 1].
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class Tag(NamedTuple):
    train_size: int
    test_size: int
    crop_pct: float
    interpolation: str
    normalization: str
    license: str


'''


def generate() -> dict[str, tuple]:
    """The table from timm's configs: every tag of ARCHS with a 1000-class head, as Tag fields."""
    from timm.models import resnet

    table = {}
    for arch in ARCHS:
        entry = resnet.default_cfgs[arch]
        for tag in entry.tags:
            cfg = entry.cfgs[tag]
            if cfg.num_classes != 1000 or cfg.hf_hub_id != "timm/":
                continue
            assert cfg.crop_mode == "center" and cfg.input_size[1] == cfg.input_size[2], (arch, tag)
            test = cfg.test_input_size or cfg.input_size
            stats = (tuple(cfg.mean), tuple(cfg.std))
            [normalization] = [k for k, v in tags.NORMALIZATION.items() if v == stats]
            table[f"{arch}.{tag}"] = (
                cfg.input_size[1],
                test[1],
                float(cfg.test_crop_pct if cfg.test_input_size and cfg.test_crop_pct else cfg.crop_pct),
                cfg.interpolation,
                normalization,
                cfg.license,
            )
    return table


def render() -> str:
    """The source text of resnet_jax/hub/tags.py."""
    rows = [
        f'    "{name}": Tag({train}, {test}, {crop!r}, "{interp}", "{norm}", "{lic}"),'
        for name, (train, test, crop, interp, norm, lic) in generate().items()
    ]
    return HEADER + "\n".join(["TAGS = {", *rows, "}"]) + "\n"


def test_table_is_timms():
    assert dict(tags.TAGS) == {name: tags.Tag(*row) for name, row in generate().items()}


def test_table_covers_every_architecture_with_its_torchvision_weights():
    assert {name.split(".")[0] for name in tags.TAGS} == set(ARCHS)
    assert all(f"{arch}.tv_in1k" in tags.TAGS for arch in ARCHS)
    # Recipes quoted in timm's docs, read back from the table.
    assert tags.TAGS["resnet50.tv2_in1k"][:4] == (176, 224, 0.965, "bilinear")
    assert tags.TAGS["resnet50.a1_in1k"][:4] == (224, 288, 1.0, "bicubic")
    assert tags.TAGS["resnet50.a3_in1k"][:4] == (160, 224, 0.95, "bicubic")
    assert tags.TAGS["resnet18.tv_in1k"][:4] == (224, 224, 0.875, "bilinear")


if __name__ == "__main__":
    print(render(), end="")
