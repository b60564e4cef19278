"""Import ImageNet-trained ResNet, ResNeXt, Wide ResNet and ResNetV2 weights from torchvision and Keras,
and export models of torchvision's layout back to torchvision.

    model, variables = resnet_jax.convert.from_torchvision(state_dict, "resnet50")
    model, variables = resnet_jax.convert.from_keras(keras.applications.ResNet50())
    logits = model.apply(variables, images_nhwc, train=False)

    state_dict = resnet_jax.convert.to_torchvision(model, variables)  # {name: numpy array}
    safetensors.numpy.save_file(state_dict, "model.safetensors")

Each returned model computes the same function as its eval-mode source, and an exported torchvision
model the same function as its eval-mode resnet-jax model. The sources expect different input
preprocessing, recorded in each module's `PREPROCESS` spec:

  torchvision: RGB in [0, 1], then (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
  Keras v1:    "caffe": RGB in [0, 255] flipped to BGR, minus (103.939, 116.779, 123.68)
  Keras V2:    "tf": x / 127.5 - 1 (mean_std with mean 0.5, std 0.5 on [0, 1] pixels)

`python -m resnet_jax.convert --help` writes imports as orbax checkpoints and exports as .safetensors
files. Neither torch nor Keras is imported by this package; they are needed only to read their weight files.
"""

from resnet_jax.convert.keras import from_keras
from resnet_jax.convert.torchvision import from_torchvision
from resnet_jax.convert.torchvision_export import to_torchvision, torchvision_arch

__all__ = ["from_keras", "from_torchvision", "to_torchvision", "torchvision_arch"]
