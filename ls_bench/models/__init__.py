"""Model registry: YAML says `model: resnet20`; this dict maps the name to a builder.

Every builder takes (in_channels, num_classes, image_size) and returns a module whose
`features(x)` gives the penultimate activations [B, D] and whose `head` is the final
nn.Linear(D, num_classes), so forward(x) = head(features(x)).
"""

import contextlib
from typing import Callable

from torch import Tensor, nn

from ls_bench.errors import invalid
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
        raise invalid("model.name", name, f"one of {sorted(MODELS)}")


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return MODELS[name](in_channels, num_classes, image_size)


def outputs_fp32_head(model: nn.Module, x: Tensor, amp: contextlib.AbstractContextManager,
                      features: bool = False) -> Tensor:
    """Logits (or penultimate features, float32) of a batch: the body under `amp` (bf16/fp16
    autocast), the last layer in float32 outside it. Logits rounded to bf16 (8 bits of mantissa)
    would put their rounding into NLL, ECE, the fitted temperature and a teacher's soft targets."""
    with amp:
        f = model.features(x)
    f = f.float()
    return f if features else model.head(f)
