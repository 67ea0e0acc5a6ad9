"""A small PyTorch reference of torchvision's resnet18 and of upstream's VisualNet / AudioNet.

torchvision from PyPI does not install beside torch 2.13 here, so this is our own plain code with
torchvision's module and parameter names (its ``state_dict()`` has exactly torchvision resnet18's keys, in the
same order) and upstream's `models/networks.py` structure for the two heads (``feature_extraction`` Sequential,
AudioNet's ``conv1`` registered twice, ``freq_conv1x1``). Used only by tests/test_video_networks.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18: children conv1, bn1, relu, maxpool, layer1..4, avgpool, fc."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers.append(BasicBlock(planes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def weights_init(m: nn.Module) -> None:
    """Upstream's weights_init (first match on the class name wins)."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        m.weight.data.normal_(0.0, 0.02)
    elif classname.find("BatchNorm2d") != -1:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)
    elif classname.find("Linear") != -1:
        m.weight.data.normal_(0.0, 0.02)


class VisualNet(nn.Module):
    """Upstream's VisualNet."""

    def __init__(self, original_resnet: nn.Module):
        super().__init__()
        layers = list(original_resnet.children())[0:-2]
        self.feature_extraction = nn.Sequential(*layers)

    def forward(self, x):
        x = self.feature_extraction(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return x.view(x.size(0), -1)


class AudioNet(nn.Module):
    """Upstream's AudioNet."""

    def __init__(self, original_resnet: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=1, padding=3, bias=False)
        self.conv1.apply(weights_init)
        layers = [self.conv1]
        layers.extend(list(original_resnet.children())[1:-2])
        self.feature_extraction = nn.Sequential(*layers)
        self.freq_conv1x1 = nn.Conv2d(3, 1, kernel_size=(1, 1), padding=0, stride=1)
        self.freq_conv1x1.apply(weights_init)

    def forward(self, x):
        x = self.feature_extraction(x)
        x = x.permute(0, 3, 1, 2)
        x = self.freq_conv1x1(x)
        x = x.permute(0, 2, 1, 3)
        x = F.adaptive_max_pool2d(x, (1, 1))
        return x.view(x.size(0), -1)


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Random BatchNorm affine parameters and running statistics (so that eval-mode BatchNorm matters), and a
    nonzero num_batches_tracked."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))


class Student(nn.Module):
    """The end-to-end student of `l2l-distill` in plain PyTorch: VisualNet and AudioNet (each on its own
    resnet18), then upstream's fusion net and classifier (``net_imageAudio``, ``net_classifier``: the names of
    upstream's ImageAudioClassify container). Used by tests/test_distill.py for gradients."""

    def __init__(self, num_classes: int):
        super().__init__()
        import torch_reference as tr

        self.visual = VisualNet(ResNet18())
        self.audio = AudioNet(ResNet18())
        self.net_imageAudio = tr.ImageAudioNet()
        self.net_classifier = tr.ClassifierNet(512, num_classes)

    def forward(self, images, spectrograms):
        """images (B, 3, H, W) normalised, spectrograms (B, 1, T, F) -> logits (B, C)."""
        fused = self.net_imageAudio(self.visual(images), self.audio(spectrograms))
        return self.net_classifier(fused)


def distill_loss(student_logits, teacher_logits, temperature: float):
    """T^2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T)), written out."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    return temperature ** 2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
