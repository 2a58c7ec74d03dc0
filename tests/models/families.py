"""The model families of the coverage suite: small configurations of mainstream architectures,
random weights, no download. Most are named in the recipe (model.huggingface with a config);
the rest are entrypoints below."""
from __future__ import annotations

import torch
from torch import nn

TOKENS = "{name: input_ids, shape: [batch, 16], dtype: int64, range: [0, 100]}"
MASK = "{name: attention_mask, shape: [batch, 16], dtype: int64, range: [0, 2]}"
IMAGE = "{name: pixel_values, shape: [batch, 3, 32, 32], dtype: float32}"
AUDIO = "{name: input_values, shape: [batch, 800], dtype: float32}"

TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)

# family -> (model section lines, inputs, int8 mode that applies or None)
FAMILIES = {
    "bert": ({"task": "feature-extraction", "outputs": ["last_hidden_state"], "config": {"model_type": "bert", **TEXT}},
             [TOKENS, MASK], "dynamic"),
    "t5_encoder": ("tests.models.families:t5_encoder", [TOKENS, MASK], "dynamic"),
    "gpt2": ({"task": "causal-lm", "outputs": ["logits"], "config": {
        "model_type": "gpt2", "vocab_size": 100, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2,
        "bos_token_id": 0, "eos_token_id": 0}}, [TOKENS], "dynamic"),
    "llama": ({"task": "causal-lm", "outputs": ["logits"], "config": {
        "model_type": "llama", **TEXT, "num_key_value_heads": 1, "bos_token_id": 0, "eos_token_id": 0}},
              [TOKENS], "dynamic"),
    "vit": ({"task": "feature-extraction", "outputs": ["pooler_output"], "config": {
        "model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64}}, [IMAGE], "dynamic"),
    "swin": ({"task": "feature-extraction", "outputs": ["pooler_output"], "config": {
        "model_type": "swin", "image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1],
        "num_heads": [2, 2], "window_size": 4}}, [IMAGE], "dynamic"),
    "resnet": ({"task": "feature-extraction", "outputs": ["pooler_output"], "config": {
        "model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1]}},
               [IMAGE], "static"),
    "convnext": ({"task": "feature-extraction", "outputs": ["pooler_output"], "config": {
        "model_type": "convnext", "num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1]}},
                 [IMAGE], "static"),
    "mobilenet_v2": ({"task": "feature-extraction", "outputs": ["pooler_output"], "config": {
        "model_type": "mobilenet_v2", "image_size": 32, "depth_multiplier": 0.25}}, [IMAGE], "static"),
    "efficientnet": ({"task": "feature-extraction", "outputs": ["pooler_output"], "config": {
        "model_type": "efficientnet", "image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.25,
        "hidden_dim": 320}}, [IMAGE], "static"),
    "wav2vec2": ({"task": "feature-extraction", "outputs": ["last_hidden_state"], "config": {
        "model_type": "wav2vec2", **TEXT, "conv_dim": [16, 16], "conv_stride": [5, 2], "conv_kernel": [10, 3],
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}}, [AUDIO], "dynamic"),
    "unet": ("tests.models.families:unet", [IMAGE], "static"),
}


class T5Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def t5_encoder() -> T5Encoder:
    """T5's encoder alone (AutoModel gives the encoder-decoder): relative position buckets."""
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    config = T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    return T5Encoder(T5EncoderModel(config).eval())


class UNet(nn.Module):
    """A two-level U-Net: GroupNorm + SiLU, a strided convolution down, a transposed one up, a skip."""

    def __init__(self):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU())
        self.down2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.SiLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        skip = self.down1(x)
        return self.out(torch.cat([skip, self.up(self.down2(skip))], 1))


def unet() -> UNet:
    torch.manual_seed(0)
    return UNet().eval()


def images(n: int = 64) -> torch.Tensor:
    """Calibration images for static int8: seeded normal pixels, as the models were normalised for."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
