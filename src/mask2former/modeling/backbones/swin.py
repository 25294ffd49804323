"""Swin Transformer backbone (Liu et al., 2021) as used by Mask2Former.

The module reproduces, to fp32 round-off, the feature maps of ``transformers.SwinBackbone`` (v5) with
``out_features=["stage1", "stage2", "stage3", "stage4"]``, which in turn follows the original Swin / detectron2
Mask2Former backbone. Parameter names follow the original Swin code (``patch_embed``, ``layers.{i}.blocks.{j}``,
fused ``attn.qkv``), and :func:`swin_keys_from_transformers` / :func:`swin_keys_to_transformers` translate to and from
the checkpoint layout that transformers writes to disk.

Internally tokens are kept channels-last, ``(B, H, W, C)``, from the patch embedding to the per-stage output norms.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mask2former.modeling.backbones import FeatureInfo

# Added between tokens of different shift regions. transformers and the original Swin code add -100, whose softmax
# weight exp(-100) ~ 4e-44 is a float32 denormal, not zero: the padded tokens of a window (all zero, so zero values
# with zero biases) then get denormal outputs and gradients, and CPU arithmetic on denormals is ~30x slower. Below
# -104 the weight is exactly zero in float32; -1e4 also fits float16. Elsewhere the results are the same floats.
_SHIFT_MASK_VALUE = -1e4


def _relative_position_index(window: int) -> Tensor:
    """Index into the ``((2w - 1)**2, heads)`` bias table for every (query, key) pair of a ``w x w`` window.

    Token ``t = row * w + col``; the entry for tokens ``i, j`` encodes the offset ``(row_i - row_j, col_i - col_j)``,
    each shifted to ``[0, 2w - 2]``, as ``d_row * (2w - 1) + d_col``.
    """
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")  # (w, w) each
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # (N,) each, N = w*w
    d_row = rows[:, None] - rows[None, :] + (window - 1)  # (N, N)
    d_col = cols[:, None] - cols[None, :] + (window - 1)  # (N, N)
    return d_row * (2 * window - 1) + d_col  # (N, N)


def _window_partition(x: Tensor, window: int) -> Tensor:
    """Split a padded map into non-overlapping windows, batch-major then row-major over windows.

    Args:
        x: ``(B, H, W, C)`` with ``H`` and ``W`` multiples of ``window``.
        window: Window side.

    Returns:
        ``(B * nW, window * window, C)`` where ``nW = (H / window) * (W / window)``.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)  # (B, Hw, w, Ww, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)  # (B*nW, N, C)


class _WindowTokens(NamedTuple):
    """Where each token of a ``(H, W)`` map goes in its (shifted, padded) windows, for :class:`_Rearrange`.

    Attributes:
        sources: ``(nW * N,)`` for each window slot (windows row-major, batch excluded), the map token it holds; a
            padding slot holds token 0 and is listed in ``padding``.
        slots: ``(H * W,)`` for each map token, its window slot (the inverse of ``sources`` on the real tokens).
        padding: ``(n_pad,)`` the padding slots.
    """

    sources: Tensor
    slots: Tensor
    padding: Tensor


@functools.lru_cache(maxsize=64)
def _window_tokens(height: int, width: int, window: int, shift: int, device: torch.device) -> _WindowTokens:
    """The window layout of a ``height x width`` map zero-padded at the bottom/right to multiples of ``window`` and
    cyclically shifted by ``-shift`` on both axes (the original's pad, roll and partition, as one index)."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    rows = torch.arange(padded_h, device=device).roll(-shift)  # padded row held at each shifted row
    cols = torch.arange(padded_w, device=device).roll(-shift)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1)  # (Hp, Wp, 2) padded (row, col) per position
    grid = _window_partition(grid[None], window).reshape(-1, 2)  # (nW * N, 2) per window slot
    real = (grid[:, 0] < height) & (grid[:, 1] < width)
    sources = torch.where(real, grid[:, 0] * width + grid[:, 1], 0)
    slots = torch.empty(height * width, dtype=torch.int64, device=device)
    real_slots = real.nonzero().squeeze(1)
    slots[sources[real_slots]] = real_slots
    return _WindowTokens(sources, slots, (~real).nonzero().squeeze(1))


class _Rearrange(torch.autograd.Function):
    """``x.index_select(1, index)`` with ``zero`` positions of the result zeroed, for a permutation-like index whose
    gradient is again a gather (``grad.index_select(1, inverse)``, ``inverse_zero`` zeroed), not ``index_add``.

    Moving tokens into and out of windows this way is one pass over the map each way; the padding, the roll (two
    ``cat``s per axis on the CPU), the 6-D permute copies and their inverses took 3-4x longer, forward and backward
    (stage-1 shifted block, microbenchmark).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: Tensor, inverse: Tensor, zero: Tensor | None,
                inverse_zero: Tensor | None) -> Tensor:  # fmt: skip
        ctx.backward_index = (inverse, inverse_zero)
        out = x.index_select(1, index)
        return out.index_fill_(1, zero, 0) if zero is not None and len(zero) else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inverse, inverse_zero = ctx.backward_index
        grad = grad.index_select(1, inverse)
        if inverse_zero is not None and len(inverse_zero):
            grad.index_fill_(1, inverse_zero, 0)
        return grad, None, None, None, None


def _to_windows(x: Tensor, window: int, shift: int) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, window * window, C)`` window tokens of the map zero-padded at the bottom/right
    to multiples of ``window`` and rolled by ``-shift`` (as :func:`_window_partition` after padding and rolling)."""
    b, h, w, c = x.shape
    layout = _window_tokens(h, w, window, shift, x.device)
    tokens = _Rearrange.apply(x.reshape(b, h * w, c), layout.sources, layout.slots, layout.padding, None)
    return tokens.view(-1, window * window, c)


def _from_windows(windows: Tensor, window: int, shift: int, batch: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`_to_windows`: ``(B * nW, window * window, C)`` -> ``(B, H, W, C)`` (padding dropped)."""
    c = windows.shape[-1]
    layout = _window_tokens(height, width, window, shift, windows.device)
    tokens = _Rearrange.apply(windows.reshape(batch, -1, c), layout.slots, layout.sources, None, layout.padding)
    return tokens.view(batch, height, width, c)


def _shift_mask(height: int, width: int, window: int, shift: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Additive mask for shifted-window attention on a padded ``height x width`` map.

    After the cyclic shift by ``-shift``, each axis splits into three regions, ``[0, L - window)``,
    ``[L - window, L - shift)`` and ``[L - shift, L)``; tokens of one window may only attend to tokens of the same
    (row region, column region) pair.

    Returns:
        ``(nW, N, N)`` tensor with 0 where attention is allowed and ``-100`` elsewhere.
    """
    rows = torch.arange(height, device=device)  # (H,)
    cols = torch.arange(width, device=device)  # (W,)
    row_region = (rows >= height - window).long() + (rows >= height - shift).long()  # (H,)
    col_region = (cols >= width - window).long() + (cols >= width - shift).long()  # (W,)
    label = (row_region[:, None] * 3 + col_region[None, :])[None, :, :, None]  # (1, H, W, 1)
    label = _window_partition(label, window).squeeze(-1)  # (nW, N)
    different = label[:, :, None] != label[:, None, :]  # (nW, N, N)
    zero = torch.zeros((), device=device, dtype=dtype)
    return torch.where(different, torch.full((), _SHIFT_MASK_VALUE, device=device, dtype=dtype), zero)


def _pad_bottom_right(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad a ``(B, H, W, C)`` map at the bottom and right so that ``H`` and ``W`` are multiples of ``multiple``."""
    _, h, w, _ = x.shape
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, H+pad_h, W+pad_w, C)
    return x


class _DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples (training only), rescaling the rest."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        return x * self._keep(x)

    def residual(self, x: Tensor, branch: Tensor) -> Tensor:
        """``x + self(branch)``, as one ``addcmul`` in training (one pass over the map less, forward and backward)."""
        if not self.training or self.drop_prob == 0.0:
            return x + branch
        return torch.addcmul(x, branch, self._keep(branch))

    def _keep(self, x: Tensor) -> Tensor:
        """(B, 1, ..., 1): 0 for a dropped sample, 1 / keep probability for a kept one."""
        keep_prob = 1.0 - self.drop_prob
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
        return keep.bernoulli_(keep_prob) / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class _PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution followed by LayerNorm; pads the image bottom/right first."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        # transformers uses the LayerNorm default eps here, whatever ``layer_norm_eps`` says.
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixel_values: Tensor) -> Tensor:
        _, _, h, w = pixel_values.shape
        p = self.patch_size
        pad_h, pad_w = (p - h % p) % p, (p - w % p) % p
        if pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))  # (B, Cin, H', W') multiples of patch
        x = self.proj(pixel_values)  # (B, C, H/p, W/p)
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        return self.norm(x)


class _Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows, with a learned relative position bias.

    The bias table covers the offsets of the configured window. When a block runs with a smaller window (see
    ``shrink_window_to_fit``), the bias of an offset is still read from the same table entry, i.e. the index is the
    top-left ``w' x w'`` sub-window of the full index.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _relative_position_index(window_size), persistent=False)

    def _position_bias(self, window: int) -> Tensor:
        """``(heads, N, N)`` relative position bias for a ``window x window`` window (``window <= window_size``)."""
        index = self.relative_position_index  # (w*w, w*w) for the configured w
        if window != self.window_size:
            w = self.window_size
            index = index.view(w, w, w, w)[:window, :window, :window, :window]  # (w', w', w', w')
            index = index.reshape(window * window, window * window)  # (N, N)
        n = window * window
        bias = self.relative_position_bias_table[index.reshape(-1)]  # (N*N, heads)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)

    def _attend_reference(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """Attention of q, k, v (B*nW, heads, N, d) with the additive ``bias`` (nW or 1, heads, N, N), written out.

        For training: with a mask that needs a gradient (the learned bias), ``scaled_dot_product_attention`` falls back
        to its reference path, which also materializes the mask for every image and guards each softmax row against
        being fully masked (about 20% slower on the CPU, forward and backward). This is that path's arithmetic (both
        operands scaled by the square root of the scale), so the values are the same to the bit.
        """
        bnw, num_heads, n, _ = q.shape
        root_scale = math.sqrt(self.head_dim**-0.5)
        scores = torch.matmul(q * root_scale, k.transpose(-2, -1) * root_scale)  # (B*nW, heads, N, N)
        scores = scores.view(-1, bias.shape[0], num_heads, n, n) + bias.to(scores.dtype)  # (in place: 15% slower)
        return torch.matmul(scores.view(bnw, num_heads, n, n).softmax(-1).to(v.dtype), v)  # (B*nW, heads, N, d)

    def forward(self, x: Tensor, window: int, mask: Tensor | None) -> Tensor:
        """Attend within each window.

        Args:
            x: ``(B * nW, N, C)`` window tokens, ``N = window**2``, batch-major (as from :func:`_window_partition`).
            window: Side of the windows in ``x``.
            mask: ``(nW, N, N)`` additive shift mask, or ``None`` for unshifted windows.

        Returns:
            ``(B * nW, N, C)``.
        """
        bnw, n, c = x.shape
        qkv = self.qkv(x).view(bnw, n, 3, self.num_heads, self.head_dim)  # (B*nW, N, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B*nW, heads, N, d)
        bias = self._position_bias(window).unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # (nW, heads, N, N)
        if torch.is_grad_enabled() and bias.requires_grad:
            out = self._attend_reference(q, k, v, bias)
        else:  # PyTorch's fused kernel: as fast as the written-out path on the CPU, faster elsewhere
            if mask is not None:
                bias = bias.expand(bnw // bias.shape[0], -1, -1, -1, -1).reshape(bnw, self.num_heads, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.head_dim**-0.5)
        out = out.transpose(1, 2).reshape(bnw, n, c)  # (B*nW, N, C)
        return self.proj(out)


class _SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention block followed by a pre-norm MLP block, both residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = _WindowAttention(dim, num_heads, window_size, qkv_bias)
        self.drop_path = _DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, window: int, shift: int, mask: Tensor | None) -> Tensor:
        """Run the block.

        Args:
            x: ``(B, H, W, C)``.
            window: Window side to use.
            shift: Cyclic shift (0 for plain windows).
            mask: ``(nW, N, N)`` shift mask for the padded map when ``shift > 0``, else ``None``.

        Returns:
            ``(B, H, W, C)``.
        """
        b, h, w, _ = x.shape
        y = _to_windows(self.norm1(x), window, shift)  # (B*nW, N, C); padding comes after the norm
        y = _from_windows(self.attn(y, window, mask), window, shift, b, h, w)  # (B, H, W, C)
        x = self.drop_path.residual(x, y)
        return self.drop_path.residual(x, self.mlp(self.norm2(x)))


class _PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (zero-padding odd sizes) and project ``4C -> 2C``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # transformers uses the LayerNorm default eps here, whatever ``layer_norm_eps`` says.
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = _pad_bottom_right(x, 2)  # (B, H, W, C), H and W even
        b, h, w, c = x.shape
        x = x.view(b, h // 2, 2, w // 2, 2, c)  # (B, H/2, row parity, W/2, col parity, C)
        # Channel groups ordered (row, col) = (0, 0), (1, 0), (0, 1), (1, 1), as in the original Swin.
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)


class _SwinStage(nn.Module):
    """A stack of Swin blocks (even ones plain, odd ones shifted) and an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_paths: Sequence[float],
        layer_norm_eps: float,
        downsample: bool,
        shrink_window_to_fit: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shrink_window_to_fit = shrink_window_to_fit
        self.blocks = nn.ModuleList(
            _SwinBlock(dim, num_heads, window_size, mlp_ratio, qkv_bias, drop_paths[j], layer_norm_eps)
            for j in range(depth)
        )
        self.downsample = _PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Map ``(B, H, W, C)`` to (stage output ``(B, H, W, C)``, downsampled ``(B, ceil(H/2), ceil(W/2), 2C)``)."""
        _, h, w, _ = x.shape
        window, shift = self.window_size, self.window_size // 2
        if self.shrink_window_to_fit and min(h, w) <= window:
            window, shift = min(h, w), 0
        mask = None
        if shift > 0 and len(self.blocks) > 1:
            hp, wp = -(-h // window) * window, -(-w // window) * window
            mask = _shift_mask(hp, wp, window, shift, x.device, x.dtype)  # (nW, N, N)
        for j, block in enumerate(self.blocks):
            shifted = j % 2 == 1 and shift > 0
            x = block(x, window, shift if shifted else 0, mask if shifted else None)
        down = self.downsample(x) if self.downsample is not None else None
        return x, down


class SwinBackbone(nn.Module):
    """Swin Transformer backbone returning one normalized feature map per stage.

    Numerically matches ``transformers.SwinBackbone`` (v5, ``out_features=["stage1", ..., "stage4"]``) with the
    default ``shrink_window_to_fit=False``. Inputs of any size are accepted: the image is zero-padded at the
    bottom/right to a multiple of ``patch_size``, every block zero-pads its (normalized) input to a multiple of the
    window and crops the result, and patch merging zero-pads odd sizes; stage ``i`` therefore has size
    ``ceil(ceil(H / patch_size) / 2**i)`` (same for ``W``).

    Window-size rule (``shrink_window_to_fit``):

    * ``False`` (default): the original Swin / detectron2 Mask2Former behaviour, which is also what
      ``transformers.SwinBackbone`` does (it runs its encoder with ``always_partition=True``): every block uses the
      configured window, padding small maps up to it, and every odd block is shifted by ``window_size // 2`` with the
      shift attention mask, even when the whole map fits in one window.
    * ``True``: the rule of transformers' ``SwinModel`` (``always_partition=False``), also used by the original Swin
      classification code: when ``min(H, W) <= window_size`` for a stage, its blocks use ``window = min(H, W)`` and
      no shift. The bias of a relative offset is still read from the configured ``(2w - 1)**2`` table. This only
      changes stages whose maps are at most one window high or wide (e.g. stage 4 of a 64x64 image with window 7);
      elsewhere both settings are identical. (transformers' own ``SwinModel`` fails on such inputs when
      ``min(H, W) < window_size``, so it has no reference output there.)

    Dropout inside the blocks is not supported, nor are absolute position embeddings. Stochastic depth rates grow
    linearly from 0 to ``drop_path_rate`` over all blocks and, as in the original Swin, apply to both the attention
    and the MLP branch of every block (transformers applies it only to the attention branch; this only matters in
    training).

    Args:
        embed_dim: Channels of stage 1; stage ``i`` has ``embed_dim * 2**i``.
        depths: Number of blocks per stage.
        num_heads: Attention heads per stage.
        window_size: Side of the attention windows, in tokens.
        mlp_ratio: Hidden width of the block MLPs relative to the block width.
        qkv_bias: Whether the query/key/value projection has a bias.
        patch_size: Side of the non-overlapping patches of the stem; stage strides are ``patch_size * 2**i``.
        in_channels: Channels of the input image.
        drop_path_rate: Stochastic depth rate of the last block.
        layer_norm_eps: Epsilon of the LayerNorms inside the blocks (the stem, patch-merging and output norms use
            1e-5, as in transformers).
        shrink_window_to_fit: See above.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        patch_size: int = 4,
        in_channels: int = 3,
        drop_path_rate: float = 0.3,
        layer_norm_eps: float = 1e-5,
        shrink_window_to_fit: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        num_stages = len(depths)
        total_blocks = sum(depths)
        rates = [drop_path_rate * k / max(total_blocks - 1, 1) for k in range(total_blocks)]
        self.in_channels = in_channels
        self.patch_embed = _PatchEmbed(in_channels, embed_dim, patch_size)
        dims = [embed_dim * 2**i for i in range(num_stages)]
        layers = []
        for i in range(num_stages):
            start = sum(depths[:i])
            layers.append(
                _SwinStage(
                    dim=dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_paths=rates[start : start + depths[i]],
                    layer_norm_eps=layer_norm_eps,
                    downsample=i < num_stages - 1,
                    shrink_window_to_fit=shrink_window_to_fit,
                )
            )
        self.layers = nn.ModuleList(layers)
        self.output_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.feature_info: list[FeatureInfo] = [
            FeatureInfo(channels=dims[i], stride=patch_size * 2**i) for i in range(num_stages)
        ]

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """Compute the per-stage feature maps.

        Args:
            pixel_values: ``(B, in_channels, H, W)`` images.

        Returns:
            One ``(B, C_i, H_i, W_i)`` map per stage, taken before that stage's patch merging and normalized.
        """
        x = self.patch_embed(pixel_values)  # (B, H/p, W/p, C)
        features = []
        for layer, norm in zip(self.layers, self.output_norms):
            out, x = layer(x)  # out (B, H_i, W_i, C_i); x (B, H_i/2, W_i/2, 2C_i) or None
            features.append(norm(out).permute(0, 3, 1, 2).contiguous())  # (B, C_i, H_i, W_i)
        return features


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint key conversion (transformers <-> ours)
# --------------------------------------------------------------------------------------------------------------------

# Saved (legacy) transformers names and v5 in-memory names of one block's sub-modules -> ours.
_BLOCK_RENAMES: dict[str, str] = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
}
_QKV_NAMES: dict[str, int] = {
    "attention.self.query": 0,
    "attention.self.key": 1,
    "attention.self.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_DROPPED = re.compile(r"^(swin\.layernorm\.(weight|bias)|.*relative_position_index)$")
_BLOCK = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table)$")
_DOWNSAMPLE = re.compile(r"^encoder\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")
_OUT_NORM = re.compile(r"^hidden_states_norms\.(stage)?(\d+)\.(weight|bias)$")
_STEM = {
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.norm.weight": "patch_embed.norm.weight",
    "embeddings.norm.bias": "patch_embed.norm.bias",
}


def _rename_from_transformers(key: str) -> tuple[str, int | None]:
    """Our name for a prefix-less transformers key, plus the q/k/v slot (0, 1, 2) for the query/key/value parts.

    Unknown keys come back unchanged with slot ``None``.
    """
    if key in _STEM:
        return _STEM[key], None
    match = _DOWNSAMPLE.match(key)
    if match:
        return f"layers.{match[1]}.downsample.{match[2]}", None
    match = _OUT_NORM.match(key)
    if match:
        index = int(match[2]) - 1 if match[1] else int(match[2])
        return f"output_norms.{index}.{match[3]}", None
    match = _BLOCK.match(key)
    if match:
        stage, block, module, leaf = match.groups()
        if leaf == "relative_position_bias_table":
            module, leaf = f"{module}.{leaf}", ""
        base = f"layers.{stage}.blocks.{block}."
        suffix = f".{leaf}" if leaf else ""
        if module in _BLOCK_RENAMES:
            return base + _BLOCK_RENAMES[module] + suffix, None
        if module in _QKV_NAMES:
            return base + "attn.qkv" + suffix, _QKV_NAMES[module]
    return key, None


def swin_keys_from_transformers(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Convert the Swin part of a transformers checkpoint to :class:`SwinBackbone` keys.

    Accepts the layout transformers writes to disk (``embeddings.patch_embeddings.projection``,
    ``encoder.layers.{i}.blocks.{j}.attention.self.query``, ``hidden_states_norms.stage{k}`` or the older
    ``hidden_states_norms.{k-1}``, ...) and also the v5 in-memory names (``swin.``-prefixed, ``q_proj``...). Query, key
    and value are concatenated into ``attn.qkv``. ``relative_position_index`` buffers and the unused final
    ``swin.layernorm`` are dropped.

    Args:
        state_dict: Full checkpoint state dict.
        prefix: Prefix of the Swin entries, e.g. ``"model.pixel_level_module.encoder."``; keys not starting with it
            are ignored.

    Returns:
        Our keys without prefix. Keys under ``prefix`` that are not recognized are returned unchanged (minus the
        prefix) so that a strict ``load_state_dict`` reports them; so is a query/key/value triple with a part missing.
    """
    out: dict[str, Tensor] = {}
    qkv_parts: dict[str, dict[int, Tensor]] = {}
    qkv_sources: dict[str, dict[int, str]] = {}
    for full_key, value in state_dict.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        if key.startswith("swin.") and not key.startswith("swin.layernorm."):
            key = key[len("swin.") :]
        if _DROPPED.match(key):
            continue
        name, slot = _rename_from_transformers(key)
        if slot is None:
            out[name] = value
        else:
            qkv_parts.setdefault(name, {})[slot] = value
            qkv_sources.setdefault(name, {})[slot] = key
    for name, parts in qkv_parts.items():
        if len(parts) == 3:
            out[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
        else:
            for slot, value in parts.items():
                out[qkv_sources[name][slot]] = value
    return out


def swin_keys_to_transformers(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Convert a :class:`SwinBackbone` state dict to the layout transformers saves, under ``prefix``.

    The result can be written to ``model.safetensors`` and loaded by transformers' ``from_pretrained`` (for a
    ``SwinBackbone`` use ``prefix=""``; inside ``Mask2FormerForUniversalSegmentation`` use
    ``"model.pixel_level_module.encoder."``). ``attn.qkv`` is split into query/key/value; the output norms are written
    as ``hidden_states_norms.stage{k}``. Keys that are not ours are passed through with the prefix added.

    Args:
        state_dict: :class:`SwinBackbone` state dict (no prefix).
        prefix: Prefix to put in front of every output key.

    Returns:
        The transformers-layout state dict.
    """
    stem = {ours: theirs for theirs, ours in _STEM.items()}
    block_renames = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    block = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table)$")
    downsample = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
    out_norm = re.compile(r"^output_norms\.(\d+)\.(weight|bias)$")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in stem:
            out[prefix + stem[key]] = value
            continue
        match = downsample.match(key)
        if match:
            out[f"{prefix}encoder.layers.{match[1]}.downsample.{match[2]}"] = value
            continue
        match = out_norm.match(key)
        if match:
            out[f"{prefix}hidden_states_norms.stage{int(match[1]) + 1}.{match[2]}"] = value
            continue
        match = block.match(key)
        if match:
            stage, index, module, leaf = match.groups()
            base = f"{prefix}encoder.layers.{stage}.blocks.{index}."
            if module == "attn" and leaf == "relative_position_bias_table":
                out[base + "attention.self.relative_position_bias_table"] = value
                continue
            if module == "attn.qkv":
                query, key_, value_ = value.chunk(3, dim=0)
                out[base + f"attention.self.query.{leaf}"] = query.contiguous()
                out[base + f"attention.self.key.{leaf}"] = key_.contiguous()
                out[base + f"attention.self.value.{leaf}"] = value_.contiguous()
                continue
            if module in block_renames:
                out[base + f"{block_renames[module]}.{leaf}"] = value
                continue
        out[prefix + key] = value
    return out


__all__ = ["SwinBackbone", "swin_keys_from_transformers", "swin_keys_to_transformers"]
