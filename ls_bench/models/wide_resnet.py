"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): pre-activation blocks, widths 16k/32k/64k,
(d-4)/6 blocks per stage. WRN-28-10 has 36.5M parameters; dropout is off (the paper's default
for CIFAR without dropout)."""

import torch.nn.functional as F
from torch import Tensor, nn

from ls_bench.models.preact_resnet import PreActBlock


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, in_channels: int, num_classes: int):
        super().__init__()
        assert (depth - 4) % 6 == 0, "depth must be 6n+4"
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, c = [], 16
        for i, width in enumerate((16 * k, 32 * k, 64 * k)):
            for j in range(n):
                blocks.append(PreActBlock(c, width, 2 if (i > 0 and j == 0) else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.blocks(self.stem(x)))).mean(dim=(2, 3))  # [B, 64k]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def wrn28_10(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return WideResNet(28, 10, in_channels, num_classes)
