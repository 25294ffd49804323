"""Sine position encoding of a 2D feature map (DETR, "Attention is all you need" generalised to images).

Used by the pixel decoder (keys of the deformable encoder) and the transformer decoder (keys of masked attention).
"""

import math

import torch
from torch import Tensor


def sine_position_encoding(
    batch_size: int,
    height: int,
    width: int,
    num_channels: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> Tensor:
    """Normalized sine/cosine encoding of pixel coordinates.

    Coordinates run 1..H and 1..W, are normalized to (0, scale] and encoded with ``num_channels // 2`` frequencies
    per axis; the first half of the channels encodes y, the second half x.

    Returns:
        (B, num_channels, H, W) tensor of ``dtype`` on ``device``.
    """
    num_features = num_channels // 2
    eps = 1e-6
    y = torch.arange(1, height + 1, device=device, dtype=dtype) / (height + eps) * scale  # (H,)
    x = torch.arange(1, width + 1, device=device, dtype=dtype) / (width + eps) * scale  # (W,)
    exponent = 2 * torch.div(torch.arange(num_features, device=device), 2, rounding_mode="floor") / num_features
    frequencies = (temperature ** exponent.to(dtype)).to(dtype)  # (F,)
    y = y[:, None] / frequencies  # (H, F)
    x = x[:, None] / frequencies  # (W, F)
    y = torch.stack((y[:, 0::2].sin(), y[:, 1::2].cos()), dim=2).flatten(1)  # (H, F) interleaved sin, cos
    x = torch.stack((x[:, 0::2].sin(), x[:, 1::2].cos()), dim=2).flatten(1)  # (W, F)
    encoding = torch.cat(
        (y[:, None, :].expand(height, width, num_features), x[None, :, :].expand(height, width, num_features)), dim=2
    )  # (H, W, 2F)
    return encoding.permute(2, 0, 1)[None].expand(batch_size, -1, -1, -1)  # (B, 2F, H, W)
