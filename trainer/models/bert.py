"""BERT (Devlin et al. 2019), layer for layer as Hugging Face's BertModel, so its checkpoints load.

Post-norm blocks (attention, then MLP, each followed by residual add and LayerNorm), word +
position + token-type embeddings, exact GELU (or the activation config.json names). One of two
heads, by ``task``:

- ``mlm`` (masked LM): masking happens inside forward so that any token stream can train it:
  mask_prob of the real (not padding, not special) positions are chosen; of those 80% become
  [MASK], 10% a random token, 10% stay; the loss is the cross-entropy on the chosen positions.
  Eval (``model.eval()``) draws its mask from a fixed seed, so eval losses are comparable.
- ``classification``: a tanh pooler on the first token ([CLS]) and a linear classifier, as
  BertForSequenceClassification; the loss is the cross-entropy against ``labels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ConfigError
from trainer.models.masking import check_mask_id, mask_tokens
from trainer.models.transformer import _init_weights

# config.json's hidden_act, as transformers' ACT2FN computes each (gelu_new is the tanh approximation).
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_seq_len: int, type_vocab_size: int, eps: float,
                 dropout: float):
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden_size)
        self.position = nn.Embedding(max_seq_len, hidden_size)
        self.token_type = nn.Embedding(type_vocab_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        return self.drop(self.norm(self.word(input_ids) + self.position(pos) + self.token_type(types)))


class Layer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, eps: float, dropout: float,
                 attention_dropout: float, act: str):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.act = ACTIVATIONS[act]
        self.q = nn.Linear(hidden_size, hidden_size)
        self.k = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Linear(hidden_size, hidden_size)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.up = nn.Linear(hidden_size, intermediate_size)
        self.down = nn.Linear(intermediate_size, hidden_size)
        self.out_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q), heads(self.k), heads(self.v), attn_mask=keep,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        x = self.attn_norm(x + self.drop(self.attn_out(y.transpose(1, 2).reshape(b, t, c))))
        return self.out_norm(x + self.drop(self.down(self.act(self.up(x)))))


class MLMHead(nn.Module):
    """Transform (dense, GELU, LayerNorm), then the word embeddings (tied) plus a bias."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float, act: str):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(self.act(self.dense(h))), word, self.bias)


class Bert(nn.Module):
    TASKS = ("mlm", "classification")

    def __init__(self, *, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int,
                 dropout: float, max_seq_len: int, vocab_size: int, task: str = "mlm", mask_prob: float = 0.15,
                 mask_token_id: int = 1, num_labels: int | None = None, type_vocab_size: int = 2,
                 layer_norm_eps: float = 1e-12, hidden_act: str = "gelu", attention_dropout: float | None = None,
                 classifier_dropout: float | None = None, **_loading_keys):
        super().__init__()
        if task == "auto":
            task = "mlm"
        if task not in ("mlm", "classification"):
            raise ConfigError(f"task={task}: model=bert does task=mlm or task=classification")
        if task == "classification" and not num_labels:
            raise ConfigError("task=classification: the data has no labels (set data.label_field)")
        if task == "mlm":
            mask_token_id = check_mask_id(mask_token_id)
        self.task, self.mask_prob, self.mask_token_id, self.vocab_size = task, mask_prob, mask_token_id, vocab_size
        self.embeddings = Embeddings(vocab_size, hidden_size, max_seq_len, type_vocab_size, layer_norm_eps, dropout)
        if hidden_act not in ACTIVATIONS:
            raise ConfigError(f"model.hidden_act={hidden_act}: one of {', '.join(ACTIVATIONS)}")
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.layers = nn.ModuleList(Layer(hidden_size, num_heads, intermediate_size, layer_norm_eps, dropout,
                                          attention_dropout, hidden_act) for _ in range(num_layers))
        if task == "mlm":
            self.mlm = MLMHead(hidden_size, vocab_size, layer_norm_eps, hidden_act)
        else:
            self.pooler = nn.Linear(hidden_size, hidden_size)
            self.drop = nn.Dropout(dropout if classifier_dropout is None else classifier_dropout)
            self.classifier = nn.Linear(hidden_size, num_labels)
        self.apply(_init_weights)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's hidden states, (batch, seq, hidden)."""
        # SDPA's boolean mask: True where a query may attend, i.e. the key is not padding.
        keep = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, keep)
        return x

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm(hidden, self.embeddings.word.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                special_tokens_mask: torch.Tensor | None = None, return_logits: bool = False):
        """The mean loss; with return_logits (eval of a classifier), (loss, logits)."""
        if self.task == "mlm":
            inputs, targets = self.mask(input_ids, attention_mask, special_tokens_mask)
            logits = self.mlm_logits(self.encode(inputs, attention_mask, token_type_ids))
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        else:
            first = self.encode(input_ids, attention_mask, token_type_ids)[:, 0]
            logits = self.classifier(self.drop(torch.tanh(self.pooler(first))))
            loss = F.cross_entropy(logits.float(), labels)
        return (loss, logits) if return_logits else loss

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             special_tokens_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masked inputs, labels with -100 where no prediction is asked). No host sync."""
        return mask_tokens(input_ids, attention_mask, special_tokens_mask, prob=self.mask_prob,
                           mask_token_id=self.mask_token_id, vocab_size=self.vocab_size, training=self.training)
