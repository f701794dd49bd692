# ruff: noqa: UP008  (written as research code writes it, super(Class, self) included)
"""A CIFAR-10 ResNet written the way published research code writes it (test fixture).

Modelled on the widely used CIFAR ResNet files of the literature (He et al. 2016, §4.2): functional
``F.relu``, an in-place ``+=`` residual add, ``F.avg_pool2d(out, out.size()[3])`` for global
pooling, ``out.view(out.size(0), -1)`` to flatten, a module-level helper applied with
``self.apply``, and the parameter-free "option A" shortcut, a ``LambdaLayer`` wrapping a lambda
that subsamples by 2 and zero-pads the new channels. Nothing here was rewritten for LayerMerge:
the tests load this file by path (``tests/research/resnet_cifar.py:resnet20``) exactly as a user
would point the tool at a downloaded architecture file.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.init as init

__all__ = ["ResNet", "resnet8", "resnet20", "resnet20_option_b"]


def _weights_init(m):
    if isinstance(m, nn.Linear) or isinstance(m, nn.Conv2d):
        init.kaiming_normal_(m.weight)


def _relu(x):
    # a helper function called from forward, as research code often has
    return F.relu(x, inplace=True)


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super(LambdaLayer, self).__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, option="A"):
        super(BasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                # For CIFAR10 ResNet paper uses option A.
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(
                        x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0
                    )
                )
            elif option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(
                        in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                    ),
                    nn.BatchNorm2d(self.expansion * planes),
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = _relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, option="A"):
        super(ResNet, self).__init__()
        self.in_planes = 16

        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(block, 16, num_blocks[0], stride=1, option=option)
        self.layer2 = self._make_layer(block, 32, num_blocks[1], stride=2, option=option)
        self.layer3 = self._make_layer(block, 64, num_blocks[2], stride=2, option=option)
        self.linear = nn.Linear(64, num_classes)

        self.apply(_weights_init)

    def _make_layer(self, block, planes, num_blocks, stride, option):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride, option))
            self.in_planes = planes * block.expansion

        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def resnet8():
    return ResNet(BasicBlock, [1, 1, 1])


def resnet20():
    return ResNet(BasicBlock, [3, 3, 3])


def resnet20_option_b():
    return ResNet(BasicBlock, [3, 3, 3], option="B")


def test(net):
    total_params = 0
    for x in filter(lambda p: p.requires_grad, net.parameters()):
        total_params += torch.numel(x)
    print("Total number of params", total_params)
