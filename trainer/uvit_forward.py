"""The U-ViT forward with its prompt-only computations done once: constant conditioning for training.

In `diffusers.UVit2DModel.forward` (0.42), everything that depends on the prompt and the micro-conditions only —
not on the image tokens — is recomputed on every call although a StyleDrop style trains on one fixed prompt:
- the text side: `encoder_proj` + `encoder_proj_layer_norm` of the CLIP hidden states, and each U-ViT block
  attention's `kv_mapper(silu(·))` of them (the SkipFF blocks whose width differs from the hidden size);
- the pooled side: the micro-conditions' sinusoidal embedding, `cond_embed([pooled, micro])`, and from it every
  modulation: each ConvNeXt block's `cond_embeds_mapper` and each transformer layer's three AdaLN-continuous
  linears (norm1, norm2, norm3), as (1 + scale, shift).
The base is frozen, so none of these needs a gradient. `precompute_conditioning` computes them once (the text
side per prompt, the pooled side per prompt-and-image row) and `forward_with_conditioning` runs the rest of the
model from them, gathering each batch row's entries with one `index_select` per table — calling the model's own
submodules, so LoRA hooks and peft layers on `to_q/to_k/to_v` still apply.

Two more savings per step, where the model allows them (`_fast_attention`: diffusers' `AttnProcessor2_0` on plain
`nn.Linear` keys and values, which is what aMUSEd has):
- the cross-attentions' keys and values of the constant prompt: their base projections `to_k(c)`, `to_v(c)` are
  computed here once per prompt, and each step adds only the LoRA terms, by running the linears' forward hooks
  (the bank's) on the precomputed base output — 34 attentions x 2 linears fewer per forward on amused-256;
- every text-side value (encoder states, kv mappings, base keys and values) lives in ONE (T, L, width) table, so a
  step gathers its rows with one `index_select` instead of one per attention.
Every diffusers `RMSNorm` the step calls goes through `fused_norm.norm`: one fused kernel forward and backward.

Equality: the same maths on the same values as `transformer(...)`, in other roundings: the prompt-side matrix
products run over a different number of rows (once per prompt or image instead of once per batch row), which BLAS
may block differently, the norms are fused (one rounding instead of several) and each AdaLN modulation is one
`addcmul`. On CPU in fp32 the logits differ by ≤ 1e-5 of the largest one (tests/test_engine_conditioning.py).
Call both functions under the same autocast context (train.py does), or the modulations' dtype would differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UVit2DModel
from diffusers.models.attention import BasicTransformerBlock, SkipFFTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.unets.uvit_2d import ConvNextBlock, UVitBlock
from torch import nn

from .fused_norm import norm

__all__ = ["Conditioning", "forward_with_conditioning", "precompute_conditioning"]


@dataclass
class Conditioning:
    """Prompt-only values of one model, computed once. T = prompts (text rows), B = pooled/micro-cond rows."""

    encoder: torch.Tensor  # (T, L, hidden) encoder_proj_layer_norm(encoder_proj(hidden states))
    kv: list[torch.Tensor | None]  # per U-ViT attention block (down then up): (T, L, channels) kv_mapper output
    text: torch.Tensor | None  # (T, L, width): encoder | kv mappings | base keys, values per cross-attention
    text_sizes: list[int]  # widths of `text`'s parts, in that order (cross-attentions in forward order)
    adaln: torch.Tensor  # (B, 1, layers·3·2·hidden): per layer and norm, (1 + scale, shift)
    adaln_sizes: list[int]
    conv: torch.Tensor  # (B, res blocks·2·channels, 1, 1): per ConvNeXt block, (1 + scale, shift)
    conv_sizes: list[int]


def _blocks(transformer: UVit2DModel) -> list[UVitBlock]:
    return [transformer.down_block, transformer.up_block]


def _check_supported(transformer: UVit2DModel) -> None:
    """The forward below mirrors diffusers 0.42's; refuse a model it would not compute exactly."""
    if getattr(transformer, "gradient_checkpointing", False):
        raise ValueError("forward_with_conditioning does not support gradient checkpointing")
    for layer in transformer.transformer_layers:
        if not (isinstance(layer, BasicTransformerBlock) and layer.norm_type == "ada_norm_continuous"
                and isinstance(layer.norm1, AdaLayerNormContinuous) and layer.pos_embed is None
                and layer._chunk_size is None and not layer.only_cross_attention and layer.attn2 is not None):
            raise ValueError("unsupported U-ViT layer layout for forward_with_conditioning")
    for block in _blocks(transformer):
        if not all(isinstance(r, ConvNextBlock) for r in block.res_blocks) or not all(
                isinstance(a, SkipFFTransformerBlock) for a in block.attention_blocks):
            raise ValueError("unsupported U-ViT block layout for forward_with_conditioning")


@torch.no_grad()
def precompute_conditioning(transformer: UVit2DModel, hidden: torch.Tensor, pooled: torch.Tensor,
                            micro_conds: torch.Tensor) -> Conditioning:
    """The prompt-only values for `hidden` (T, L, D) CLIP hidden states, `pooled` (B, P) pooled embeddings and
    `micro_conds` (B, 5), in exactly the operations `UVit2DModel.forward` applies to them."""
    _check_supported(transformer)
    t = transformer
    encoder = t.encoder_proj_layer_norm(t.encoder_proj(hidden))  # (T, L, hidden)
    micro = get_timestep_embedding(micro_conds.flatten(), t.config.micro_cond_encode_dim, flip_sin_to_cos=True,
                                   downscale_freq_shift=0)  # (B·5, enc)
    micro = micro.reshape((pooled.shape[0], -1))  # (B·5, enc) -> (B, 5·enc)
    cond = torch.cat([pooled, micro], dim=1).to(dtype=t.dtype)
    cond = t.cond_embed(cond).to(encoder.dtype)  # (B, hidden): `pooled_text_emb` inside the model

    kv: list[torch.Tensor | None] = []
    conv: list[torch.Tensor] = []
    for block in _blocks(t):
        for res, attn in zip(block.res_blocks, block.attention_blocks, strict=True):
            scale, shift = res.cond_embeds_mapper(F.silu(cond)).chunk(2, dim=1)  # (B, C) each
            conv += [1 + scale, shift]
            kv.append(None if attn.kv_mapper is None else attn.kv_mapper(F.silu(encoder)))
    adaln: list[torch.Tensor] = []
    for layer in t.transformer_layers:
        for ada in (layer.norm1, layer.norm2, layer.norm3):
            # AdaLayerNormContinuous: linear(silu(c).to(x.dtype)); x (the layer's input) has the model's dtype
            # without autocast, and under autocast the linear casts its input to the autocast dtype anyway.
            scale, shift = torch.chunk(ada.linear(ada.silu(cond).to(t.dtype)), 2, dim=1)  # (B, hidden) each
            adaln += [1 + scale, shift]
    text = None
    text_sizes: list[int] = []
    if _fast_attention(t):
        sources = [k for k in kv if k is not None]
        for src, attn in _cross_attentions(t, encoder, kv):
            sources += [F.linear(src, attn.to_k.weight, attn.to_k.bias), F.linear(src, attn.to_v.weight,
                                                                               attn.to_v.bias)]  # base only
        parts = [encoder, *sources]
        text, text_sizes = torch.cat(parts, dim=2), [p.shape[2] for p in parts]  # (T, L, Σ widths)
    return Conditioning(
        encoder=encoder,
        kv=kv,
        text=text,
        text_sizes=text_sizes,
        adaln=torch.cat(adaln, dim=1)[:, None, :].contiguous(),  # (B, n·hidden) -> (B, 1, n·hidden)
        adaln_sizes=[a.shape[1] for a in adaln],
        conv=torch.cat(conv, dim=1)[:, :, None, None].contiguous(),  # (B, n·C) -> (B, n·C, 1, 1)
        conv_sizes=[c.shape[1] for c in conv],
    )


def _cross_attentions(t: UVit2DModel, encoder: torch.Tensor,
                      kv: list[torch.Tensor | None]) -> list[tuple[torch.Tensor, Attention]]:
    """(keys' and values' input, attention) of every cross-attention, in the order the forward runs them."""
    mapped = iter(kv)  # down block's attentions, then the up block's (as precompute_conditioning makes them)

    def block(b: UVitBlock) -> list[tuple[torch.Tensor, Attention]]:
        found: list[tuple[torch.Tensor, Attention]] = []
        for attn in b.attention_blocks:
            m = next(mapped)
            found += [(encoder if m is None else m, attn.attn1), (encoder if m is None else m, attn.attn2)]
        return found

    down, up = block(t.down_block), block(t.up_block)
    return [*down, *[(encoder, layer.attn2) for layer in t.transformer_layers], *up]


def _fast_attention(t: UVit2DModel) -> bool:
    """Every cross-attention runs AttnProcessor2_0 exactly as `_cross_attention` below does."""
    for _src, a in _cross_attentions(t, torch.empty(0), [None] * sum(len(b.attention_blocks) for b in _blocks(t))):
        if not (type(a.processor) is AttnProcessor2_0 and a.spatial_norm is None and a.group_norm is None
                and not a.norm_cross and a.norm_q is None and a.norm_k is None and not a.residual_connection
                and a.rescale_output_factor == 1.0 and type(a.to_k) is nn.Linear and type(a.to_v) is nn.Linear
                and not a.to_k._forward_pre_hooks and not a.to_v._forward_pre_hooks):
            return False
    return True


def _cross_attention(attn: Attention, x: torch.Tensor, src: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor) -> torch.Tensor:
    """`attn(x, encoder_hidden_states=src)` (AttnProcessor2_0, diffusers 0.42) with the base `to_k(src)`,
    `to_v(src)` given: the linears' forward hooks (LoRA) add their terms to them."""
    b = x.shape[0]
    query = attn.to_q(x)
    key = _run_hooks(attn.to_k, (src,), key)
    value = _run_hooks(attn.to_v, (src,), value)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)  # (S, L, inner) -> (S, heads, L, head_dim)
    key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    h = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
    h = h.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)  # -> (S, L, inner)
    return attn.to_out[1](attn.to_out[0](h))


def _run_pre_hooks(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    """What `module(...)` would run before `forward`: a trainable LoRA bank gathers its per-row scales there."""
    if module._forward_pre_hooks_with_kwargs or module._forward_hooks_with_kwargs:
        raise ValueError("forward_with_conditioning does not support hooks with kwargs on the model")
    for hook in module._forward_pre_hooks.values():
        if hook(module, args) is not None:
            raise ValueError("forward_with_conditioning does not support pre-hooks that change the inputs")


def _run_hooks(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    for hook in module._forward_hooks.values():
        result = hook(module, args, out)
        out = out if result is None else result
    return out


def forward_with_conditioning(transformer: UVit2DModel, cond: Conditioning, input_ids: torch.Tensor,
                              text_rows: torch.Tensor | None = None,
                              cond_rows: torch.Tensor | None = None) -> torch.Tensor:
    """`transformer(input_ids, ...)` (S, h, w) -> logits (S, codebook, h, w), from precomputed conditioning.

    Row i uses prompt `text_rows[i]` and pooled/micro-cond row `cond_rows[i]` of `cond` (device index tensors,
    no host read); None = row i of each table (the tables have exactly S rows).
    """
    t = transformer
    _run_pre_hooks(t, (input_ids,))
    bases: list[torch.Tensor] | None = None
    if cond.text is not None and text_rows is not None:
        # one gather for every text-side value: (T, L, width) -> (S, L, width), then views per part
        views = list(cond.text.index_select(0, text_rows).split(cond.text_sizes, dim=2))
        encoder = views[0]
        mapped = iter(views[1:])
        kv = [None if k is None else next(mapped) for k in cond.kv]
        bases = views[1 + sum(k is not None for k in cond.kv):]
    else:
        encoder = cond.encoder if text_rows is None else cond.encoder.index_select(0, text_rows)  # (S, L, hidden)
        kv = [k if k is None or text_rows is None else k.index_select(0, text_rows) for k in cond.kv]
    base_kv = None if bases is None else iter(bases)
    adaln_table = cond.adaln if cond_rows is None else cond.adaln.index_select(0, cond_rows)  # (S, 1, n·hidden)
    conv_table = cond.conv if cond_rows is None else cond.conv.index_select(0, cond_rows)  # (S, n·C, 1, 1)
    adaln = iter(adaln_table.split(cond.adaln_sizes, dim=2))  # (S, 1, hidden) views, in use order
    conv = iter(conv_table.split(cond.conv_sizes, dim=1))  # (S, C, 1, 1) views, in use order
    kv_iter = iter(kv)

    e = t.embed
    h = e.conv(norm(e.layer_norm, e.embeddings(input_ids)).permute(0, 3, 1, 2))  # (S, h, w, C) -> (S, C, h, w)
    h = _uvit_block(t.down_block, h, encoder, kv_iter, conv, base_kv)
    b, c, height, width = h.shape
    h = h.permute(0, 2, 3, 1).reshape(b, height * width, c)  # (S, C, h, w) -> (S, h·w, C)
    h = t.project_to_hidden(norm(t.project_to_hidden_norm, h))  # (S, h·w, hidden)
    for layer in t.transformer_layers:
        h = _transformer_layer(layer, h, encoder, adaln, base_kv)
    h = t.project_from_hidden(norm(t.project_from_hidden_norm, h))  # (S, h·w, C)
    h = h.reshape(b, height, width, c).permute(0, 3, 1, 2)  # (S, h·w, C) -> (S, C, h, w)
    h = _uvit_block(t.up_block, h, encoder, kv_iter, conv, base_kv)
    mlm = t.mlm_layer
    h = norm(mlm.layer_norm, mlm.conv1(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # channels last and back
    return _run_hooks(t, (input_ids,), mlm.conv2(h))


def _uvit_block(block: UVitBlock, x: torch.Tensor, encoder: torch.Tensor, kv: object, conv: object,
                base_kv: object) -> torch.Tensor:
    """UVitBlock.forward with each ConvNeXt modulation and attention kv mapping taken from the tables."""
    if block.downsample is not None:
        x = block.downsample(x)
    for res, attn in zip(block.res_blocks, block.attention_blocks, strict=True):
        x = _convnext(res, x, next(conv), next(conv))  # type: ignore[call-overload]
        b, c, h, w = x.shape
        x = x.view(b, c, h * w).permute(0, 2, 1)  # (S, C, h, w) -> (S, h·w, C)
        mapped = next(kv)  # type: ignore[call-overload]
        x = _skip_ff(attn, x, encoder if mapped is None else mapped, base_kv)
        x = x.permute(0, 2, 1).view(b, c, h, w)
    if block.upsample is not None:
        x = block.upsample(x)
    return x


def _convnext(res: ConvNextBlock, x: torch.Tensor, scale1: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    x_res = x
    x = res.depthwise(x).permute(0, 2, 3, 1)  # (S, C, h, w) -> (S, h, w, C)
    x = res.channelwise_norm(res.channelwise_act(res.channelwise_linear_1(norm(res.norm, x))))
    x = res.channelwise_dropout(res.channelwise_linear_2(x)).permute(0, 3, 1, 2)  # -> (S, C, h, w)
    x = x + x_res
    return x * scale1 + shift  # scale1 = 1 + scale: (S, C, 1, 1)


def _skip_ff(attn: SkipFFTransformerBlock, x: torch.Tensor, kv: torch.Tensor, base_kv: object) -> torch.Tensor:
    if base_kv is None:
        x = attn.attn1(norm(attn.norm1, x), encoder_hidden_states=kv) + x
        return attn.attn2(norm(attn.norm2, x), encoder_hidden_states=kv) + x
    x = _cross_attention(attn.attn1, norm(attn.norm1, x), kv, next(base_kv), next(base_kv)) + x  # type: ignore
    return _cross_attention(attn.attn2, norm(attn.norm2, x), kv, next(base_kv), next(base_kv)) + x  # type: ignore


def _transformer_layer(layer: BasicTransformerBlock, x: torch.Tensor, encoder: torch.Tensor,
                       adaln: object, base_kv: object) -> torch.Tensor:
    """BasicTransformerBlock.forward for norm_type 'ada_norm_continuous', modulations from the table."""
    def modulated(ada: AdaLayerNormContinuous, h: torch.Tensor) -> torch.Tensor:
        scale1, shift = next(adaln), next(adaln)  # type: ignore[call-overload]
        return torch.addcmul(shift, norm(ada.norm, h), scale1)  # normed · (1 + scale) + shift, one kernel

    x = layer.attn1(modulated(layer.norm1, x), encoder_hidden_states=None, attention_mask=None) + x
    if x.ndim == 4:
        x = x.squeeze(1)
    if base_kv is None:
        x = layer.attn2(modulated(layer.norm2, x), encoder_hidden_states=encoder, attention_mask=None) + x
    else:
        x = _cross_attention(layer.attn2, modulated(layer.norm2, x), encoder, next(base_kv),  # type: ignore
                             next(base_kv)) + x  # type: ignore[call-overload]
    x = layer.ff(modulated(layer.norm3, x)) + x
    if x.ndim == 4:
        x = x.squeeze(1)
    return x
