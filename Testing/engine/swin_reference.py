"""SwinUNETR v1 as MONAI 0.9-1.4 computed it, written out from that definition in plain torch.

The reference the engine's network is checked against: it reads a SwinUNETR state dict and
computes the forward pass with functional operations only (no MONAI), so a change in MONAI
(the merging order of 1.5, or any later one) shows as a difference. Covered: patch
embedding, the token layer norm between stages, window partition with zero padding at the
end of each side, windows shrunk to a side no larger than the window (and the relative
position index truncated to them, as MONAI does), cyclic shifts with their attention masks
(-100 between regions), relative position bias, the MLP, patch merging in either order, and
the UNETR decoder (residual blocks with instance norm, transposed convolutions).
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

# Sub-grid offsets (d, h, w) in the order each MONAI version concatenated them.
MONAI_0_9_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))
MONAI_1_5_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))

State = Dict[str, torch.Tensor]


def _linear(x: torch.Tensor, state: State, name: str) -> torch.Tensor:
    return F.linear(x, state[name + ".weight"], state.get(name + ".bias"))


def _layer_norm(x: torch.Tensor, state: State, name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"])


def _tokens_norm(x: torch.Tensor) -> torch.Tensor:
    """SwinTransformer.proj_out with normalize=True: layer norm over channels, no parameters."""
    x = x.permute(0, 2, 3, 4, 1)
    return F.layer_norm(x, x.shape[-1:]).permute(0, 4, 1, 2, 3)


def _windows(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * windows, tokens per window, C), windows in d, h, w order."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // size[0], size[0], h // size[1], size[1], w // size[2], size[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, size[0] * size[1] * size[2], c)


def _unwindows(x: torch.Tensor, size: Sequence[int], shape: Tuple[int, int, int, int]) -> torch.Tensor:
    b, d, h, w = shape
    x = x.view(b, d // size[0], h // size[1], w // size[2], size[0], size[1], size[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """Index into the (2w-1)^3 bias table of each pair of tokens of a window."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([s - 1 for s in window])
    scale = torch.tensor([(2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1])
    return (rel * scale).sum(-1)


def attention_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """-100 between tokens of one shifted window that come from different regions, else 0."""
    regions = torch.zeros(1, *padded, 1)
    cuts = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift, strict=True)]
    for label, (d, h, w) in enumerate(itertools.product(*cuts)):
        regions[:, d, h, w, :] = label
    ids = _windows(regions, window).squeeze(-1)
    differ = ids[:, None, :] - ids[:, :, None]
    return differ.masked_fill(differ != 0, -100.0).masked_fill(differ == 0, 0.0)


def _attention(x, state, name, heads, mask, full_window):
    n, tokens, c = x.shape
    qkv = _linear(x, state, name + ".qkv").reshape(n, tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    index = relative_position_index(full_window)[:tokens, :tokens].reshape(-1)
    bias = state[name + ".relative_position_bias_table"][index].reshape(tokens, tokens, -1).permute(2, 0, 1)
    attn = attn + bias[None]
    if mask is not None:
        windows = mask.shape[0]
        attn = (attn.view(n // windows, windows, heads, tokens, tokens) + mask[None, :, None]).view(
            -1, heads, tokens, tokens
        )
    attn = attn.softmax(-1)
    return _linear((attn @ v).transpose(1, 2).reshape(n, tokens, c), state, name + ".proj")


def _block(x, state, name, heads, window, shift, mask, full_window):
    b, d, h, w, _ = x.shape
    shortcut = x
    x = _layer_norm(x, state, name + ".norm1")
    pads = [(s - size % s) % s for size, s in zip((d, h, w), window, strict=True)]
    x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    padded = x.shape[1:4]
    if any(shift):
        x = torch.roll(x, shifts=[-s for s in shift], dims=(1, 2, 3))
    out = _attention(_windows(x, window), state, name + ".attn", heads, mask if any(shift) else None, full_window)
    x = _unwindows(out, window, (b, *padded))
    if any(shift):
        x = torch.roll(x, shifts=list(shift), dims=(1, 2, 3))
    x = shortcut + x[:, :d, :h, :w]
    mlp = _linear(
        F.gelu(_linear(_layer_norm(x, state, name + ".norm2"), state, name + ".mlp.linear1")),
        state,
        name + ".mlp.linear2",
    )
    return x + mlp


def _merge(x, state, name, order):
    d, h, w = x.shape[1:4]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
    x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in order], -1)
    return F.linear(_layer_norm(x, state, name + ".norm"), state[name + ".reduction.weight"])


def swin_encoder(x: torch.Tensor, state: State, heads: Sequence[int], order, window: int = 7) -> List[torch.Tensor]:
    """The five hidden states of ``swinViT`` (keys relative to ``swinViT.``), normalised."""
    x = F.conv3d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=2)
    hidden = [_tokens_norm(x)]
    for stage in range(4):
        name = f"layers{stage + 1}.0"
        depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(name + ".blocks."))
        x = x.permute(0, 2, 3, 4, 1)
        sides = x.shape[1:4]
        # A side no larger than the window is one unshifted window of that side.
        win = [s if s <= window else window for s in sides]
        shift = [0 if s <= window else window // 2 for s in sides]
        padded = [math.ceil(s / w) * w for s, w in zip(sides, win, strict=True)]
        mask = attention_mask(padded, win, shift) if any(shift) else None
        for i in range(depth):
            block_shift = shift if i % 2 else [0, 0, 0]
            x = _block(x, state, f"{name}.blocks.{i}", heads[stage], win, block_shift, mask, [window] * 3)
        x = _merge(x, state, f"{name}.downsample", order).permute(0, 4, 1, 2, 3)
        hidden.append(_tokens_norm(x))
    return hidden


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    return F.instance_norm(x, eps=1e-5)


def _res_block(x: torch.Tensor, state: State, name: str) -> torch.Tensor:
    """MONAI's UnetResBlock: conv 3^3, IN, LeakyReLU, conv 3^3, IN, + (1^3 conv, IN of) x, LeakyReLU."""
    out = F.leaky_relu(_instance_norm(F.conv3d(x, state[name + ".conv1.conv.weight"], padding=1)), 0.01)
    out = _instance_norm(F.conv3d(out, state[name + ".conv2.conv.weight"], padding=1))
    if name + ".conv3.conv.weight" in state:
        x = _instance_norm(F.conv3d(x, state[name + ".conv3.conv.weight"]))
    return F.leaky_relu(out + x, 0.01)


def _up(low: torch.Tensor, skip: torch.Tensor, state: State, name: str) -> torch.Tensor:
    up = F.conv_transpose3d(low, state[name + ".transp_conv.conv.weight"], stride=2)
    return _res_block(torch.cat([up, skip], 1), state, name + ".conv_block")


def swinunetr(x: torch.Tensor, state: State, heads: Sequence[int], order, window: int = 7) -> torch.Tensor:
    """SwinUNETR v1's logits for a full state dict."""
    encoder = {k[len("swinViT.") :]: v for k, v in state.items() if k.startswith("swinViT.")}
    h = swin_encoder(x, encoder, heads, order, window)
    out = _up(_res_block(h[4], state, "encoder10.layer"), h[3], state, "decoder5")
    for decoder, encoder_block, level in (
        ("decoder4", "encoder4", 2),
        ("decoder3", "encoder3", 1),
        ("decoder2", "encoder2", 0),
    ):
        out = _up(out, _res_block(h[level], state, encoder_block + ".layer"), state, decoder)
    out = _up(out, _res_block(x, state, "encoder1.layer"), state, "decoder1")
    return F.conv3d(out, state["out.conv.conv.weight"], state["out.conv.conv.bias"])
