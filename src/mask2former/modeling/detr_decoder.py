"""MaskFormer's transformer decoder: the DETR decoder over the stride-32 backbone map.

Follows ``TransformerPredictor`` of the original MaskFormer code (the DETR ``TransformerDecoder`` without an
encoder, ``return_intermediate`` for deep supervision) and ``MaskFormerTransformerModule`` of ``transformers``: the
map is projected to ``dim`` channels by a 1x1 conv when its width differs, flattened and given normalized sine
position encodings; ``num_queries`` learned query positions start from zero query features and go through
post-norm layers (self-attention -> cross-attention to the map -> FFN, each with a residual and a LayerNorm); a
final LayerNorm gives the queries the heads read.

Shape letters: B batch, Q queries, C channels, S = H * W positions of the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .position_encoding import sine_position_encoding
from .transformer_decoder import Attention, _activation


class DetrDecoderLayer(nn.Module):
    """Self-attention -> cross-attention -> FFN, each followed by its residual and a LayerNorm (post-norm).

    Args:
        dim: width C of the queries and the memory.
        num_heads: attention heads.
        feedforward_dim: hidden width of the FFN.
        dropout: dropout on each residual branch.
        attention_dropout: dropout on the attention weights.
        activation_dropout: dropout after the FFN activation.
        activation: FFN activation ("relu" or "gelu").
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        feedforward_dim: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.self_attn = Attention(dim=dim, num_heads=num_heads, dropout=attention_dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim=dim, num_heads=num_heads, dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.activation = _activation(activation)

    def forward(self, queries: Tensor, query_position: Tensor, memory: Tensor, memory_position: Tensor) -> Tensor:
        """queries (B, Q, C), query_position (1, Q, C), memory (B, S, C), memory_position (1, S, C) -> (B, Q, C)."""
        positioned = queries + query_position
        queries = self.norm1(queries + self.dropout(self.self_attn(positioned, positioned, queries)))
        attended = self.cross_attn(queries + query_position, memory + memory_position, memory)
        queries = self.norm2(queries + self.dropout(attended))
        feedforward = self.linear2(self.activation_dropout(self.activation(self.linear1(queries))))
        return self.norm3(queries + self.dropout(feedforward))


@dataclass
class DetrDecoderOutput:
    """What :class:`DetrDecoder` returns.

    Attributes:
        last_hidden_state: (B, Q, C) the last layer's output after the final LayerNorm: what the heads read.
        intermediate_states: per layer, its output after the final LayerNorm (B, Q, C) (the original code's
            ``return_intermediate``; the last one equals ``last_hidden_state`` unless ``norm_between_layers``).
        hidden_states: the first layer's input (zeros), each layer's output before the final LayerNorm but the last,
            then ``last_hidden_state``: ``num_layers + 1`` tensors (B, Q, C), as ``transformers`` records them.
    """

    last_hidden_state: Tensor
    intermediate_states: list[Tensor]
    hidden_states: list[Tensor]


class DetrDecoder(nn.Module):
    """DETR transformer decoder with learned queries over one feature map.

    Args:
        in_channels: channels of the map (the backbone's stride-32 map); a 1x1 conv projects it when it is not ``dim``.
        dim: hidden width C (``d_model``).
        num_queries: object queries Q.
        num_heads: attention heads.
        num_layers: decoder layers.
        feedforward_dim: hidden width of the FFN.
        dropout, attention_dropout, activation_dropout, activation: see :class:`DetrDecoderLayer`.
        norm_between_layers: feed each layer the LayerNorm-ed output of the previous one, as ``transformers`` does
            when the decoder config's ``auxiliary_loss`` is set (the original code never does).
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        dim: int = 256,
        num_queries: int = 100,
        num_heads: int = 8,
        num_layers: int = 6,
        feedforward_dim: int = 2048,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        activation: str = "relu",
        norm_between_layers: bool = False,
    ) -> None:
        super().__init__()
        self.input_projection = nn.Conv2d(in_channels, dim, kernel_size=1) if in_channels != dim else nn.Identity()
        self.query_positions = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(
            DetrDecoderLayer(
                dim=dim,
                num_heads=num_heads,
                feedforward_dim=feedforward_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation_dropout=activation_dropout,
                activation=activation,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.norm_between_layers = norm_between_layers
        for layer in self.layers:  # DETR initializes every matrix of the layers with Xavier
            for parameter in layer.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)

    def forward(self, features: Tensor) -> DetrDecoderOutput:
        """Decode the queries against ``features`` (B, in_channels, H, W)."""
        memory = self.input_projection(features)  # (B, C, H, W)
        batch_size, channels, height, width = memory.shape
        memory_position = sine_position_encoding(
            1, height, width, channels, device=memory.device, dtype=memory.dtype
        ).flatten(2).transpose(1, 2)  # (1, S, C)
        memory = memory.flatten(2).transpose(1, 2)  # (B, S, C)
        query_position = self.query_positions.weight[None]  # (1, Q, C)
        queries = torch.zeros_like(query_position).expand(batch_size, -1, -1)  # (B, Q, C)
        hidden_states, intermediate_states = [queries], []
        for layer in self.layers:
            queries = layer(queries, query_position, memory, memory_position)
            hidden_states.append(queries)
            normed = self.norm(queries)
            intermediate_states.append(normed)
            if self.norm_between_layers:
                queries = normed
        last_hidden_state = self.norm(queries) if self.norm_between_layers else intermediate_states[-1]
        hidden_states[-1] = last_hidden_state
        return DetrDecoderOutput(last_hidden_state, intermediate_states, hidden_states)
