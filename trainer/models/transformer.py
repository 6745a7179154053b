"""The transformer block shared by GPT and BERT: pre-norm attention (SDPA) and MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dropout: float, causal: bool):
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads, dropout, causal)
        self.ln2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, intermediate_size),
            nn.GELU(),
            nn.Linear(intermediate_size, hidden_size),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class Encoder(nn.Module):
    """Token + position embeddings, a stack of blocks, a final LayerNorm, and a tied output head."""

    def __init__(self, *, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int,
                 dropout: float, max_seq_len: int, vocab_size: int, causal: bool):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, hidden_size)
        self.pos = nn.Embedding(max_seq_len, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, intermediate_size, dropout, causal) for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(hidden_size)
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits over the vocabulary, shape (batch, seq, vocab)."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.tok(input_ids) + self.pos(pos))
        for block in self.blocks:
            x = block(x, attn_mask)
        # Output projection tied to the input embedding, as in GPT-2 and BERT.
        return F.linear(self.ln_f(x), self.tok.weight)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
