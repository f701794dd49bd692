"""The two digits demo architectures: a small CIFAR-style ResNet and a small MobileNetV2-style net.

Both are built from torchvision's own blocks and keep torchvision's attribute names and forward
passes, so the code that traces, merges and times ``resnet34`` and ``mobilenet_v2`` handles them
unchanged, in seconds instead of minutes. The registry (:mod:`core.models`) builds them; the
command that trains their shipped weights is :mod:`core.demo_models`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, _make_divisible
from torchvision.models.resnet import BasicBlock
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["DigitsResNet", "DigitsMobileNet"]

# (expand ratio, output channels, stride) per inverted residual block: 32 -> 16 -> 8 pixels
DIGITS_MOBILENET_SETTING = ((1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 64, 1))
DIGITS_MOBILENET_LAST_CHANNELS = 128
DIGITS_RESNET_STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride); two BasicBlocks each


class DigitsResNet(nn.Module):
    """A CIFAR-style ResNet-14 on torchvision's ``BasicBlock``: 3x3 stem, no max-pool.

    Attribute names and the forward pass follow ``torchvision.models.ResNet`` (``conv1``, ``bn1``,
    ``relu``, ``layer1``..``layer3``, ``avgpool``, ``fc``), so ResNet chain tracing applies as is.

    Args:
        width: channel multiplier on the 16/32/64 stage widths.
        num_classes: classifier outputs.
    """

    def __init__(self, *, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width should be positive instead of {width}")
        channels = [max(1, round(c * width)) for c, _ in DIGITS_RESNET_STAGES]
        self.in_channels = channels[0]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        # 32x32 digits need no early downsampling: the stem keeps the full resolution.
        self.layer1 = self._make_layer(channels[0], DIGITS_RESNET_STAGES[0][1])
        self.layer2 = self._make_layer(channels[1], DIGITS_RESNET_STAGES[1][1])
        self.layer3 = self._make_layer(channels[2], DIGITS_RESNET_STAGES[2][1])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels[2], num_classes)
        for module in self.modules():  # torchvision ResNet's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, channels: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_channels != channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        first = BasicBlock(self.in_channels, channels, stride, downsample)
        self.in_channels = channels
        return nn.Sequential(first, BasicBlock(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer1(x)  # (B, 16, 32, 32)
        x = self.layer2(x)  # (B, 32, 16, 16)
        x = self.layer3(x)  # (B, 64, 8, 8)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # (B, 64)
        return self.fc(x)


class DigitsMobileNet(nn.Module):
    """A small MobileNetV2 on torchvision's ``InvertedResidual`` and ``Conv2dNormActivation``.

    Like ``torchvision.models.MobileNetV2`` it has a ``features`` Sequential (stem, inverted
    residual blocks, 1x1 conv, each ending in ReLU6 where torchvision's does) and a ``classifier``
    Sequential (dropout, linear), and pools functionally in ``forward``. Unlike it, the stem keeps
    stride 1, since the digits are only 32 pixels wide.

    Args:
        width: channel multiplier, rounded to multiples of 8 as torchvision does.
        num_classes: classifier outputs.
        dropout: dropout before the classifier.
    """

    def __init__(self, *, width: float = 1.0, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width should be positive instead of {width}")
        in_channels = _make_divisible(16 * width, 8)
        last_channels = _make_divisible(DIGITS_MOBILENET_LAST_CHANNELS * max(1.0, width), 8)
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3, in_channels, stride=1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6
            )
        ]
        for expand_ratio, channels, stride in DIGITS_MOBILENET_SETTING:
            out_channels = _make_divisible(channels * width, 8)
            layers.append(
                InvertedResidual(in_channels, out_channels, stride, expand_ratio, nn.BatchNorm2d)
            )
            in_channels = out_channels
        layers.append(
            Conv2dNormActivation(
                in_channels,
                last_channels,
                kernel_size=1,
                norm_layer=nn.BatchNorm2d,
                activation_layer=nn.ReLU6,
            )
        )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(last_channels, num_classes)
        )
        for module in self.modules():  # torchvision MobileNetV2's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 128, 8, 8)
        # Cannot use "squeeze" as batch-size can be 1 (as torchvision's comment says)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)  # (B, 128)
        return self.classifier(x)
