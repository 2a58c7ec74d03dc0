"""A small transformer-encoder text classifier: proves the spine handles embeddings,
multi-head self-attention, LayerNorm, GELU and mean pooling, not just MLPs and CNNs."""
from __future__ import annotations

import torch
from torch import nn


class EncoderClassifier(nn.Module):
    def __init__(self, vocab: int = 1000, seq_len: int = 32, dim: int = 64, heads: int = 4, layers: int = 2,
                 num_classes: int = 4):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Class logits [batch, num_classes] for token ids [batch, seq_len]."""
        x = self.encoder(self.tokens(token_ids) + self.positions)
        return self.head(self.norm(x).mean(dim=1))


def build_model(vocab: int = 1000, seq_len: int = 32, dim: int = 64, heads: int = 4, layers: int = 2,
                num_classes: int = 4, seed: int = 0) -> EncoderClassifier:
    torch.manual_seed(seed)
    return EncoderClassifier(vocab, seq_len, dim, heads, layers, num_classes).eval()
