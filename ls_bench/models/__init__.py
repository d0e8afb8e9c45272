"""Model registry: YAML says `model: resnet20`; this dict maps the name to a builder.

Every builder takes (in_channels, num_classes, image_size) and returns a module whose
`features(x)` gives the penultimate activations [B, D] and whose `head` is the final
nn.Linear(D, num_classes), so forward(x) = head(features(x)).
"""

from typing import Callable

from torch import nn

from ls_bench.errors import bad

from ls_bench.models.preact_resnet import preact_resnet18
from ls_bench.models.resnet_cifar import resnet20, resnet32, resnet56, resnet110
from ls_bench.models.small_cnn import small_cnn
from ls_bench.models.wide_resnet import wrn28_10

MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "preact_resnet18": preact_resnet18,
    "wrn28_10": wrn28_10,
}


def check_model(name: str) -> None:
    if name not in MODELS:
        raise bad("model.name", name, f"one of {sorted(MODELS)}")


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return MODELS[name](in_channels, num_classes, image_size)
