"""The Mask2Former transformer decoder: masked cross-attention over a round of scales, self-attention, FFN.

Follows ``MultiScaleMaskedTransformerDecoder`` of the original code. Learned query features and query positions go
through ``num_layers`` layers; layer i cross-attends to scale ``i % num_levels`` (coarsest first), only inside the
mask that the previous prediction gives at that scale. A shared LayerNorm and the heads predict after the raw queries
and after every layer, so there are ``num_layers + 1`` predictions.

Shape letters: B batch, Q queries, C channels, K classes (without "no object"), M heads, H/W height/width,
S flattened positions of one scale.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position_encoding import sine_position_encoding


class Attention(nn.Module):
    """Multi-head attention with packed q/k/v input projection (``nn.MultiheadAttention``'s layout), batch first.

    The query and key may carry position encodings that the value does not, so each projection takes its own input.
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """query (B, Q, C), key and value (B, S, C), mask (B, M or 1, Q, S) bool, True = may attend -> (B, Q, C)."""
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        batch_size, num_queries, dim = query.shape
        q = F.linear(query, weight_q, bias_q).view(batch_size, num_queries, self.num_heads, -1).transpose(1, 2)
        k = F.linear(key, weight_k, bias_k).view(batch_size, key.shape[1], self.num_heads, -1).transpose(1, 2)
        v = F.linear(value, weight_v, bias_v).view(batch_size, value.shape[1], self.num_heads, -1).transpose(1, 2)
        # q, k, v: (B, M, Q or S, C/M)
        dropout = self.dropout if self.training else 0.0
        if mask is not None and torch.is_grad_enabled():
            attended = _masked_attention(q, k, v, mask, dropout)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, M, Q, C/M)
        return self.out_proj(attended.transpose(1, 2).reshape(batch_size, num_queries, dim))


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout: float) -> Tensor:
    """``scaled_dot_product_attention(q, k, v, attn_mask=mask)`` written out, for training: the mask as an additive
    bias of one ``baddbmm``, then a softmax and a ``bmm`` (forward and backward 20-25% faster than the fused CPU kernel
    with a boolean mask over the decoder's 576-2304 keys). A query that may attend nowhere gets zeros, as there.

    Args:
        q: (B, M, Q, D); k, v: (B, M, S, D); mask: (B, 1 or M, Q, S) bool, True = may attend.

    Returns:
        (B, M, Q, D).
    """
    batch_size, num_heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    nowhere = ~mask.any(-1, keepdim=True)  # (B, 1 or M, Q, 1)
    bias = torch.zeros(mask.shape, device=q.device, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
    bias = bias.masked_fill_(nowhere, 0.0).expand(batch_size, num_heads, num_queries, num_keys)
    scores = torch.baddbmm(
        bias.reshape(-1, num_queries, num_keys),
        q.reshape(-1, num_queries, head_dim),
        k.reshape(-1, num_keys, head_dim).transpose(1, 2),
        alpha=head_dim**-0.5,
    )  # (B*M, Q, S)
    weights = F.dropout(scores.softmax(-1), dropout) if dropout > 0 else scores.softmax(-1)
    attended = torch.bmm(weights, v.reshape(-1, num_keys, head_dim)).view(batch_size, num_heads, num_queries, head_dim)
    return attended.masked_fill(nowhere, 0.0)


class MaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each with a residual and a LayerNorm (post- or pre-norm)."""

    def __init__(
        self, *, dim: int, num_heads: int, feedforward_dim: int, dropout: float, pre_norm: bool, activation: str
    ) -> None:
        super().__init__()
        self.cross_attn = Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        self.activation = _activation(activation)

    def forward(
        self, queries: Tensor, query_position: Tensor, memory: Tensor, memory_position: Tensor, mask: Tensor | None
    ) -> Tensor:
        """queries (B, Q, C), query_position (1, Q, C), memory (B, S, C), memory_position (1, S, C) -> (B, Q, C)."""
        if self.pre_norm:
            normed = self.norm1(queries)
            queries = queries + self.dropout(
                self.cross_attn(normed + query_position, memory + memory_position, memory, mask)
            )
            normed = self.norm2(queries)
            queries = queries + self.dropout(self.self_attn(normed + query_position, normed + query_position, normed))
            normed = self.norm3(queries)
            return queries + self.dropout(self.linear2(self.dropout(self.activation(self.linear1(normed)))))
        attended = self.cross_attn(queries + query_position, memory + memory_position, memory, mask)
        queries = self.norm1(queries + self.dropout(attended))
        attended = self.self_attn(queries + query_position, queries + query_position, queries)
        queries = self.norm2(queries + self.dropout(attended))
        feedforward = self.linear2(self.dropout(self.activation(self.linear1(queries))))
        return self.norm3(queries + self.dropout(feedforward))


class MLP(nn.Module):
    """Linear layers with ReLU between them (not after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


@dataclass
class DecoderPredictions:
    """What the decoder predicts after the raw queries and after each layer (``num_layers + 1`` entries each).

    Attributes:
        hidden_states: per prediction, the LayerNorm-ed queries (B, Q, C) the heads read.
        masks_queries_logits: per prediction, mask logits (B, Q, H, W) at the mask-feature resolution.
        last_hidden_state: (B, Q, C) output of the last layer, before the shared LayerNorm.
        layer_inputs: per layer, its input queries (B, Q, C), then the last output (``num_layers + 1`` entries).
        mask_embeddings: per prediction, the mask head's output (B, Q, mask_dim): the mask logits are its product
            with the mask features.
    """

    hidden_states: list[Tensor]
    masks_queries_logits: list[Tensor]
    last_hidden_state: Tensor
    layer_inputs: list[Tensor]
    mask_embeddings: list[Tensor]


class MaskedAttentionDecoder(nn.Module):
    """Masked-attention transformer decoder with its mask head (the class head lives on the task model).

    Args:
        in_channels: channels of the multi-scale features from the pixel decoder.
        dim: hidden width of the decoder (``hidden_dim``).
        mask_dim: channels of the per-pixel mask embeddings.
        num_queries: object queries Q.
        num_heads: attention heads.
        num_layers: decoder layers (``decoder_layers - 1`` of the config: the initial prediction is not a layer).
        feedforward_dim: hidden width of the FFN.
        dropout: dropout in attention and FFN.
        pre_norm: LayerNorm before each block instead of after.
        enforce_input_projection: add a 1x1 conv on the multi-scale features even when ``in_channels == dim``.
        num_levels: scales the layers go round.
        activation: FFN activation ("relu" or "gelu").
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        dim: int = 256,
        mask_dim: int = 256,
        num_queries: int = 100,
        num_heads: int = 8,
        num_layers: int = 9,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        pre_norm: bool = False,
        enforce_input_projection: bool = False,
        num_levels: int = 3,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.query_features = nn.Embedding(num_queries, dim)
        self.query_positions = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(num_levels, dim)
        needs_projection = in_channels != dim or enforce_input_projection
        self.input_projections = nn.ModuleList(
            nn.Conv2d(in_channels, dim, kernel_size=1) if needs_projection else nn.Identity()
            for _ in range(num_levels)
        )
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(
                dim=dim,
                num_heads=num_heads,
                feedforward_dim=feedforward_dim,
                dropout=dropout,
                pre_norm=pre_norm,
                activation=activation,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.mask_head = MLP(dim, dim, mask_dim, 3)
        for layer in self.layers:  # the original initializes every matrix of the layers with Xavier
            for parameter in layer.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)

    def forward(self, multi_scale_features: Sequence[Tensor], mask_features: Tensor) -> DecoderPredictions:
        """Decode the queries.

        Args:
            multi_scale_features: ``num_levels`` maps (B, C_in, H_l, W_l), coarsest first.
            mask_features: (B, mask_dim, H, W) per-pixel embeddings.
        """
        batch_size = mask_features.shape[0]
        memories, memory_positions, sizes = [], [], []
        for level, (projection, feature) in enumerate(zip(self.input_projections, multi_scale_features)):
            height, width = feature.shape[-2:]
            sizes.append((height, width))
            memory = projection(feature).flatten(2).transpose(1, 2)  # (B, S, C)
            memories.append(memory + self.level_embed.weight[level])
            memory_positions.append(
                sine_position_encoding(1, height, width, memory.shape[-1], device=memory.device, dtype=memory.dtype)
                .flatten(2)
                .transpose(1, 2)
            )  # (1, S, C)

        queries = self.query_features.weight[None].expand(batch_size, -1, -1)  # (B, Q, C)
        query_position = self.query_positions.weight[None]  # (1, Q, C)
        hidden, embeddings, masks, mask = self._predict(queries, mask_features, sizes[0])
        hidden_states, mask_embeddings, masks_queries_logits, layer_inputs = [hidden], [embeddings], [masks], []
        for index, layer in enumerate(self.layers):
            layer_inputs.append(queries)
            level = index % self.num_levels
            queries = layer(queries, query_position, memories[level], memory_positions[level], mask)
            hidden, embeddings, masks, mask = self._predict(queries, mask_features, sizes[(index + 1) % self.num_levels])
            hidden_states.append(hidden)
            mask_embeddings.append(embeddings)
            masks_queries_logits.append(masks)
        layer_inputs.append(queries)
        return DecoderPredictions(hidden_states, masks_queries_logits, queries, layer_inputs, mask_embeddings)

    def _predict(self, queries: Tensor, mask_features: Tensor, attention_size: tuple[int, int]):
        """Normalized queries (B, Q, C), mask embeddings (B, Q, mask_dim), mask logits (B, Q, H, W) and the next
        layer's attention mask.

        The attention mask (B, 1, Q, S) is True where a query may attend: where its mask, resized to the next
        layer's scale, has probability >= 0.5. A query whose mask is empty there attends everywhere.
        """
        hidden = self.norm(queries)
        embeddings = self.mask_head(hidden)
        # (B, Q, H, W) laid out (B, H, W, Q) in memory: the layout the CPU bilinear resize below works in and the
        # matcher's (H * W, Q) table of each image, so neither copies it (a product with transposed operands).
        batch_size, _, height, width = mask_features.shape
        mask_logits = torch.bmm(mask_features.flatten(2).transpose(1, 2), embeddings.transpose(1, 2))  # (B, HW, Q)
        mask_logits = mask_logits.view(batch_size, height, width, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(mask_logits, size=attention_size, mode="bilinear", align_corners=False)
        # sigmoid rather than the sign of the logit, so that ties near 0 round as in the original code.
        allowed = (resized.flatten(2).sigmoid() >= 0.5).detach()  # (B, Q, S)
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        return hidden, embeddings, mask_logits, allowed[:, None]


def _activation(name: str):
    activations = {"relu": F.relu, "gelu": F.gelu}
    if name not in activations:
        raise ValueError(f"activation must be one of {sorted(activations)}, got {name!r}")
    return activations[name]
