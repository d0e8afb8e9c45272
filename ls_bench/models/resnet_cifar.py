"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", Sec. 4.2): 6n+2 layers, widths
16/32/64, identity shortcuts with zero-padded channels (option A), e.g. ResNet-20 = 0.27M params."""

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:  # option A: zero channels, no parameters
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, c = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(BasicBlock(c, width, 2 if (i > 0 and j == 0) else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))  # global average pool -> [B, 64]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def resnet20(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes)


def resnet32(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return CifarResNet(32, in_channels, num_classes)


def resnet56(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes)


def resnet110(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return CifarResNet(110, in_channels, num_classes)
