"""timm's ImageNet-1k weights of this package's torchvision architectures: name -> eval recipe.

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


TAGS = {
    "resnet18.a1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet18.a2_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet18.a3_in1k": Tag(160, 224, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet18.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet18.fb_ssl_yfcc100m_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnet18.fb_swsl_ig1b_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnet18.gluon_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "resnet34.a1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet34.a2_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet34.a3_in1k": Tag(160, 224, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet34.bt_in1k": Tag(224, 288, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet34.ra4_e3600_r224_in1k": Tag(224, 288, 1.0, "bicubic", "inception", "apache-2.0"),
    "resnet34.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet34.gluon_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.a1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.a1h_in1k": Tag(176, 224, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.a2_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.a3_in1k": Tag(160, 224, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.b1k_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.b2k_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.c1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.c2_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.d_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.ram_in1k": Tag(224, 288, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.am_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.ra_in1k": Tag(224, 288, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.bt_in1k": Tag(224, 288, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet50.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet50.tv2_in1k": Tag(176, 224, 0.965, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet50.fb_ssl_yfcc100m_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnet50.fb_swsl_ig1b_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnet50.gluon_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "resnet101.a1h_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet101.a1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet101.a2_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet101.a3_in1k": Tag(160, 224, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet101.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet101.tv2_in1k": Tag(176, 224, 0.965, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet101.gluon_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "resnet152.a1h_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet152.a1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet152.a2_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnet152.a3_in1k": Tag(160, 224, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnet152.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet152.tv2_in1k": Tag(176, 224, 0.965, "bilinear", "imagenet", "bsd-3-clause"),
    "resnet152.gluon_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "resnext50_32x4d.a1h_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnext50_32x4d.a1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnext50_32x4d.a2_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnext50_32x4d.a3_in1k": Tag(160, 224, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnext50_32x4d.ra_in1k": Tag(224, 288, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "resnext50_32x4d.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnext50_32x4d.tv2_in1k": Tag(176, 224, 0.965, "bilinear", "imagenet", "bsd-3-clause"),
    "resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnext50_32x4d.fb_swsl_ig1b_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnext50_32x4d.gluon_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "resnext101_32x8d.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnext101_32x8d.tv2_in1k": Tag(176, 224, 0.965, "bilinear", "imagenet", "bsd-3-clause"),
    "resnext101_32x8d.fb_wsl_ig1b_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnext101_32x8d.fb_swsl_ig1b_ft_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "cc-by-nc-4.0"),
    "resnext101_64x4d.c1_in1k": Tag(224, 288, 1.0, "bicubic", "imagenet", "apache-2.0"),
    "resnext101_64x4d.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "resnext101_64x4d.gluon_in1k": Tag(224, 224, 0.875, "bicubic", "imagenet", "apache-2.0"),
    "wide_resnet50_2.racm_in1k": Tag(224, 288, 0.95, "bicubic", "imagenet", "apache-2.0"),
    "wide_resnet50_2.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "wide_resnet50_2.tv2_in1k": Tag(176, 224, 0.965, "bilinear", "imagenet", "bsd-3-clause"),
    "wide_resnet101_2.tv_in1k": Tag(224, 224, 0.875, "bilinear", "imagenet", "bsd-3-clause"),
    "wide_resnet101_2.tv2_in1k": Tag(176, 224, 0.965, "bilinear", "imagenet", "bsd-3-clause"),
}
