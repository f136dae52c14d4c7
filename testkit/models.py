"""Random-weight aMUSEd models and adapters that the engine tests and the benchmarks (bench/common.py) both build:
`build_mid` and `build_full` (bench/common.py's docstring describes the configs) and `random_adapter`.

Built with the same classes as `trainer.model.build_tiny` (no hub download).
"""

from __future__ import annotations

import torch
from diffusers import UVit2DModel, VQModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from trainer.bank import target_linears
from trainer.lora import Adapter, AdapterMeta, base_fingerprint, weights_hash
from trainer.model import AmusedParts, tiny_tokenizer


def _text_encoder(tokenizer, *, vocab: int, hidden: int, layers: int, heads: int, intermediate: int,
                  projection: int) -> CLIPTextModelWithProjection:
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection,
            hidden_act="quick_gelu", bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        )
    )


def _vqvae(channels: tuple[int, ...], *, layers_per_block: int, latent: int, codes: int, groups: int) -> VQModel:
    return VQModel(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels, layers_per_block=layers_per_block, latent_channels=latent,
        num_vq_embeddings=codes, norm_num_groups=groups, vq_embed_dim=None, mid_block_add_attention=False,
        lookup_from_codebook=True, force_upcast=True, sample_size=256,
    )


def build_mid(seed: int = 0) -> AmusedParts:
    """Mid-size random aMUSEd: real token grid (256 px -> 16x16), real layer types, widths cut ~4x."""
    with torch.random.fork_rng(devices=[]):  # random weights from `seed`; the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        tok = tiny_tokenizer()
        text = _text_encoder(tok, vocab=len(tok), hidden=256, layers=4, heads=4, intermediate=1024, projection=256)
        vq = _vqvae((32, 32, 64, 64, 128), layers_per_block=2, latent=64, codes=1024, groups=16)
        codebook = 1024
        transformer = UVit2DModel(
            hidden_size=256, use_bias=False, hidden_dropout=0.0, cond_embed_dim=256, micro_cond_encode_dim=64,
            micro_cond_embed_dim=320, encoder_hidden_size=256, vocab_size=codebook + 64, codebook_size=codebook,
            in_channels=128, block_out_channels=128, num_res_blocks=1, downsample=False, upsample=False,
            block_num_heads=4, num_hidden_layers=4, num_attention_heads=4, attention_dropout=0.0,
            intermediate_size=1024, layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=16,
        )
    return _finish(transformer, vq, text, tok, mask_token_id=codebook + 64 - 1, name="bench-mid")


def _full_structure(*, hidden: int, cond: int, micro_encode: int, micro_embed: int, codebook: int, channels: int,
                    intermediate: int) -> UVit2DModel:
    """The amused-256 U-ViT's layer structure (22 transformer layers, 3+3 res blocks, 16/12 heads) at given widths:
    what op counts depend on, defined once for the full-width and the narrow model."""
    return UVit2DModel(
        hidden_size=hidden, use_bias=False, hidden_dropout=0.0, cond_embed_dim=cond, micro_cond_encode_dim=micro_encode,
        micro_cond_embed_dim=micro_embed, encoder_hidden_size=cond, vocab_size=codebook + 64, codebook_size=codebook,
        in_channels=channels, block_out_channels=channels, num_res_blocks=3, downsample=False, upsample=False,
        block_num_heads=12, num_hidden_layers=22, num_attention_heads=16, attention_dropout=0.0,
        intermediate_size=intermediate, layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=16,
    )


def build_full(seed: int = 0) -> AmusedParts:
    """The amused-256 architecture (hub configs of amused/amused-256), random weights."""
    with torch.random.fork_rng(devices=[]):  # random weights from `seed`; the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        tok = tiny_tokenizer()
        text = _text_encoder(tok, vocab=49408, hidden=768, layers=12, heads=12, intermediate=3072, projection=768)
        vq = _vqvae((128, 256, 256, 512, 768), layers_per_block=2, latent=64, codes=8192, groups=32)
        transformer = _full_structure(hidden=1024, cond=768, micro_encode=256, micro_embed=1280, codebook=8192,
                                      channels=768, intermediate=2816)
    return _finish(transformer, vq, text, tok, mask_token_id=8255, name="bench-full-256")


def _finish(transformer, vq, text, tok, *, mask_token_id: int, name: str) -> AmusedParts:
    for m in (transformer, vq, text):
        m.requires_grad_(False)
        m.eval()
    return AmusedParts(transformer=transformer, vqvae=vq, text_encoder=text, tokenizer=tok,
                       mask_token_id=mask_token_id, model_id=name)


def build_full_narrow(seed: int = 0) -> AmusedParts:
    """The amused-256 layer structure at narrow widths: the same op counts as `build_full`, fast."""
    with torch.random.fork_rng(devices=[]):  # random weights from `seed`; the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        tok = tiny_tokenizer()
        text = _text_encoder(tok, vocab=len(tok), hidden=64, layers=2, heads=4, intermediate=128, projection=64)
        vq = _vqvae((32, 32, 64, 64, 128), layers_per_block=2, latent=64, codes=1024, groups=16)
        transformer = _full_structure(hidden=64, cond=64, micro_encode=16, micro_embed=80, codebook=1024,
                                      channels=48, intermediate=128)
    return _finish(transformer, vq, text, tok, mask_token_id=1087, name="bench-full-256-narrow")


def random_adapter(transformer: torch.nn.Module, seed: int, *, rank: int = 16, alpha: float = 32.0,
                   scale: float = 0.3, base_model: str = "random") -> Adapter:
    """An adapter file's content with non-zero A and B (N(0, scale²)) for the model's Q/K/V linears."""
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, lin in target_linears(transformer).items():
        tensors[f"{key}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) * scale
        tensors[f"{key}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g) * scale
    meta = AdapterMeta(base_model=base_model, base_fingerprint=base_fingerprint(transformer), rank=rank,
                       alpha=alpha, base_weights=weights_hash(transformer), descriptor="test",
                       train_prompt="an image in test style", steps=1, seed=seed)
    return Adapter(tensors, meta)
