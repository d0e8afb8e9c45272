"""A small VGG-style CNN: the fast default, seconds per epoch on digits on a laptop CPU."""

from torch import Tensor, nn


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32):
        super().__init__()
        # Pool only while the map is at least 4 pixels wide: 8x8 digits -> 4 -> 2; 32x32 -> 16 -> 8 -> 4.
        pools = [image_size >> i >= 4 for i in range(3)]
        self.body = nn.Sequential(
            _block(in_channels, width, pools[0]),
            _block(width, 2 * width, pools[1]),
            _block(2 * width, 4 * width, pools[2]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # [B, 4*width]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def small_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return SmallCNN(in_channels, num_classes, image_size)
