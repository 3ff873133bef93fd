"""Export a checkpoint for another runtime: `python -m pipeline export --format FORMAT`.

Every function takes a loaded `pipeline.checkpoints.Checkpoint`.

    python -m pipeline export --ckpt runs/NAME/checkpoints/best.ckpt --out exported/NAME --format hf-marian
    python -m pipeline export --ckpt runs/NAME/checkpoints/best.ckpt --out exported/NAME --format ctranslate2

## hf-marian

Writes config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json and special_tokens_map.json, which `transformers` loads with

    MarianMTModel.from_pretrained(DIR), AutoTokenizer.from_pretrained(DIR)

and whose `generate(num_beams=1, do_sample=False)` gives the same tokens as our greedy
decoder. transformers itself is not needed to export (only to load the result).

Which checkpoints export: Marian is a post-norm Transformer with sinusoidal positions
(sin in the first half of the features, cos in the second, as in model.py), embeddings
scaled by √d_model, ReLU here, a zero final_logits_bias and no final LayerNorm. So:

  * pre_norm must be false (train with `--model.pre_norm false`); the default pre-norm
    model has LayerNorms in other places and a final one per stack, which Marian lacks,
    so it is refused;
  * tie_embeddings true (one shared matrix) or false (separate source embedding, target
    embedding and output projection) both export;
  * any sizes, dropouts (dropout is off at inference) and max_positions.

Token ids are unchanged: <pad>=0 (pad_token_id), <s>=1 (decoder_start_token_id and
bos_token_id), </s>=2 (eos_token_id), <unk>=3. The exported tokenizer appends </s> to
every encoded source (as our collator does) and strips outer whitespace (as our encode
does) and, like ours, reads a literal "</s>" in the text as text (split_special_tokens);
decode with skip_special_tokens=True. (Built from tokenizer.json alone, e.g.
PreTrainedTokenizerFast(tokenizer_file=...), pass split_special_tokens=True for that.)

## ctranslate2

Writes model.bin, config.json and shared_vocabulary.json (or source_ and
target_vocabulary.json), which CTranslate2 loads with `ctranslate2.Translator(DIR)`, and the
checkpoint's BPE as tokenizer.json (`tokenizers.Tokenizer.from_file`). Built on
CTranslate2's own Transformer spec (`TransformerSpec.from_config`), which has both layouts, so
pre-norm (the default, with its final LayerNorm per stack) and post-norm checkpoints export.
Positions are our sinusoidal table itself, embeddings are scaled by √d_model, LayerNorm
epsilon is PyTorch's 1e-5. Tied or untied embeddings both export.

The vocabulary is our joint BPE's token strings in id order (<pad>=0, <s>=1, </s>=2, <unk>=3),
so CTranslate2's tokens are our ids one for one. Give it the subword tokens of a sentence
(`tokenizer.encode(text).tokens`, no specials): the model appends </s> to the source itself
(add_source_eos), and the decoder starts from <s>, as ours does. Pass
`suppress_sequences=[["<pad>"], ["<s>"]]` to rule those tokens out as our decoders do, and
`max_decoding_length` for our length limit (max_len_ratio × source tokens with </s> +
max_len_extra). `quantization` ("int8", "int16", "float16", ...) stores the weights in that
type; CTranslate2 can also quantize at load time (`compute_type="int8"`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

FORMATS = ("hf-marian", "ctranslate2")


def check_exportable(checkpoint) -> None:
    """Raise UserError if the checkpoint's architecture has no MarianMT equivalent."""
    cfg = checkpoint.config
    if cfg.pre_norm:
        raise UserError("this checkpoint is pre-norm (model.pre_norm true, the default), which MarianMT cannot "
                        "represent: export it with --format ctranslate2 (make export FORMAT=ctranslate2), or "
                        "export a model trained with --model.pre_norm false")
    if cfg.d_model % 2:
        raise UserError(f"model.d_model={cfg.d_model} is odd; Marian's sinusoidal positions differ from ours for "
                        "odd widths: export a model with an even d_model")
    model = checkpoint.model
    if not isinstance(model.encoder_norm, nn.Identity) or not isinstance(model.decoder_norm, nn.Identity):
        raise UserError("the model has a final LayerNorm per stack, which MarianMT lacks: export a post-norm model")


def marian_config(checkpoint) -> dict:
    """config.json of the equivalent MarianMTModel."""
    cfg = checkpoint.config
    src_lang, tgt_lang = checkpoint.languages or (None, None)
    return {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": cfg.vocab_size,
        "decoder_vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads,
        "encoder_ffn_dim": cfg.d_ff,
        "decoder_ffn_dim": cfg.d_ff,
        "activation_function": "relu",
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "max_position_embeddings": cfg.max_positions,
        "scale_embedding": True,
        "share_encoder_decoder_embeddings": cfg.tie_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": PAD,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "decoder_start_token_id": BOS,
        "forced_eos_token_id": None,  # our decoders never force </s> at the length limit
        "is_encoder_decoder": True,
        "use_cache": True,
        "init_std": 0.02,
        "pipeline_languages": [src_lang, tgt_lang],  # informational: the source and target keys
    }


def generation_config(checkpoint) -> dict:
    cfg = checkpoint.config
    return {
        "decoder_start_token_id": BOS, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD,
        "forced_eos_token_id": None, "num_beams": 1, "do_sample": False,
        "bad_words_ids": [[PAD], [BOS]],  # our decoders never generate these either
        # Our decoders stop after max_len_ratio × source + max_len_extra new tokens; a fixed
        # cap cannot say that, so this is the positional limit (pass max_new_tokens to match).
        "max_length": cfg.max_positions,
    }


def marian_state_dict(checkpoint) -> dict[str, torch.Tensor]:
    """Our parameter names -> MarianMTModel's, tensors copied (contiguous, on CPU)."""
    model, cfg = checkpoint.model, checkpoint.config
    sd = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        sd[name] = tensor.detach().to("cpu", torch.float32).contiguous().clone()

    def linear(prefix: str, layer: nn.Linear) -> None:
        put(f"{prefix}.weight", layer.weight)
        put(f"{prefix}.bias", layer.bias)

    def norm(prefix: str, layer: nn.LayerNorm) -> None:
        put(f"{prefix}.weight", layer.weight)
        put(f"{prefix}.bias", layer.bias)

    def attention(prefix: str, attn) -> None:
        for ours, theirs in (("w_q", "q_proj"), ("w_k", "k_proj"), ("w_v", "v_proj"), ("w_o", "out_proj")):
            linear(f"{prefix}.{theirs}", getattr(attn, ours))

    if cfg.tie_embeddings:
        # transformers ties encoder/decoder embed_tokens and lm_head to model.shared on load.
        put("model.shared.weight", model.src_embed.embedding.weight)
    else:
        put("model.encoder.embed_tokens.weight", model.src_embed.embedding.weight)
        put("model.decoder.embed_tokens.weight", model.tgt_embed.embedding.weight)
        put("lm_head.weight", model.lm_head.weight)
    for i, layer in enumerate(model.encoder_layers):
        p = f"model.encoder.layers.{i}"
        attention(f"{p}.self_attn", layer.self_attn)
        norm(f"{p}.self_attn_layer_norm", layer.res_attn.norm)
        linear(f"{p}.fc1", layer.ffn.fc1)
        linear(f"{p}.fc2", layer.ffn.fc2)
        norm(f"{p}.final_layer_norm", layer.res_ffn.norm)
    for i, layer in enumerate(model.decoder_layers):
        p = f"model.decoder.layers.{i}"
        attention(f"{p}.self_attn", layer.self_attn)
        norm(f"{p}.self_attn_layer_norm", layer.res_self.norm)
        attention(f"{p}.encoder_attn", layer.cross_attn)
        norm(f"{p}.encoder_attn_layer_norm", layer.res_cross.norm)
        linear(f"{p}.fc1", layer.ffn.fc1)
        linear(f"{p}.fc2", layer.ffn.fc2)
        norm(f"{p}.final_layer_norm", layer.res_ffn.norm)
    sd["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    return sd


def hf_tokenizer_json(tokenizer) -> str:
    """Our tokenizer with </s> appended on encode and outer whitespace stripped first."""
    from tokenizers import Tokenizer, normalizers, processors

    hf = Tokenizer.from_str(tokenizer.to_str())
    steps = [normalizers.Strip()] + ([hf.normalizer] if hf.normalizer is not None else [])
    hf.normalizer = normalizers.Sequence(steps)
    eos = SPECIAL_TOKENS[EOS]
    hf.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B {eos}",
                                                      special_tokens=[(eos, EOS)])
    return hf.to_str(pretty=True)


def tokenizer_config(checkpoint) -> dict:
    special = {"pad_token": SPECIAL_TOKENS[PAD], "bos_token": SPECIAL_TOKENS[BOS], "eos_token": SPECIAL_TOKENS[EOS],
               "unk_token": SPECIAL_TOKENS[UNK]}
    return {"tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": checkpoint.config.max_positions,
            "clean_up_tokenization_spaces": False, "padding_side": "right",
            # A literal "</s>" in a sentence is text, not a control token (as in load_tokenizer).
            "split_special_tokens": True}, special


# What either export writes: --overwrite replaces a directory that holds nothing else.
EXPORT_FILES = frozenset({"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "model.safetensors", "model.bin", "shared_vocabulary.json",
                          "shared_vocabulary.txt", "source_vocabulary.json", "target_vocabulary.json"})


def empty_directory(out: str | Path, overwrite: bool) -> Path:
    """`out`, created, after refusing a non-empty directory, or with overwrite, emptying one
    that holds an earlier export only: never a directory with anything else in it (`--out .` or
    a run directory given by mistake would lose checkpoints)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory: pick a directory for the exported model")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"output directory {out} is not empty: pick another --out or pass --overwrite")
        others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES or not p.is_file())
        if others:
            raise UserError(f"--overwrite replaces an earlier export only, and {out} also holds "
                            f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}: pick another --out")
        for p in out.iterdir():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_hf_marian(checkpoint, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the MarianMT directory; returns the files written."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("exporting needs the safetensors package: pip install safetensors") from None
    check_exportable(checkpoint)
    out = empty_directory(out, overwrite)
    tok_config, special = tokenizer_config(checkpoint)
    files = {
        "config.json": json.dumps(marian_config(checkpoint), indent=2) + "\n",
        "generation_config.json": json.dumps(generation_config(checkpoint), indent=2) + "\n",
        "tokenizer.json": hf_tokenizer_json(checkpoint.tokenizer),
        "tokenizer_config.json": json.dumps(tok_config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
    written = []
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    save_file(marian_state_dict(checkpoint), str(out / "model.safetensors"), metadata={"format": "pt"})
    written.append(out / "model.safetensors")
    return written


# -- CTranslate2 ---------------------------------------------------------------------------
def vocabulary(checkpoint) -> list[str]:
    """Token strings in id order, one per row of the embedding matrix (ids unchanged)."""
    tokenizer, size = checkpoint.tokenizer, checkpoint.config.vocab_size
    if tokenizer.get_vocab_size() > size:
        raise UserError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only {size} embeddings: "
                        "the checkpoint is inconsistent")
    # A tokenizer trained on little text may have fewer tokens than the model has rows; those
    # rows are never produced by encode, and get names that no token has.
    return [tokenizer.id_to_token(i) if i < tokenizer.get_vocab_size() else f"<unused{i}>" for i in range(size)]


def ctranslate2_spec(checkpoint):
    """The checkpoint as a filled ctranslate2.specs.TransformerSpec (not yet validated or saved)."""
    from ctranslate2.specs import common_spec, transformer_spec

    model, cfg = checkpoint.model, checkpoint.config
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.n_heads, pre_norm=cfg.pre_norm,
        activation=common_spec.Activation.RELU)  # pre-norm: with a final LayerNorm per stack, as ours

    def tensor(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).contiguous().clone()

    def linear(target, *layers: nn.Linear) -> None:
        """One CTranslate2 linear from ours (several are stacked: fused QKV or KV projections)."""
        target.weight = tensor(torch.cat([layer.weight for layer in layers]))
        if layers[0].bias is not None:
            target.bias = tensor(torch.cat([layer.bias for layer in layers]))

    def norm(target, layer: nn.LayerNorm) -> None:
        target.gamma, target.beta = tensor(layer.weight), tensor(layer.bias)

    def attention(target, attn, self_attention: bool) -> None:
        if self_attention:  # linear[0]: Q, K and V stacked; linear[1]: output
            linear(target.linear[0], attn.w_q, attn.w_k, attn.w_v)
        else:  # cross-attention: linear[0]: Q (of the decoder), linear[1]: K and V (of the memory)
            linear(target.linear[0], attn.w_q)
            linear(target.linear[1], attn.w_k, attn.w_v)
        linear(target.linear[-1], attn.w_o)

    def stack(target, embed, final_norm) -> None:
        """Embeddings (scaled by √d_model: the spec's default), our position table, final norm."""
        embeddings = target.embeddings[0] if isinstance(target.embeddings, list) else target.embeddings
        embeddings.weight = tensor(embed.embedding.weight)  # (the encoder's is a list of one)
        target.scale_embeddings = True
        target.position_encodings.encodings = tensor(embed.positions)
        if cfg.pre_norm:
            norm(target.layer_norm, final_norm)

    # In either layout each sub-layer has one LayerNorm: CTranslate2 applies it before the
    # sub-layer (pre-norm) or after the residual sum (post-norm), as Residual does.
    stack(spec.encoder, model.src_embed, model.encoder_norm)
    for target, layer in zip(spec.encoder.layer, model.encoder_layers):
        attention(target.self_attention, layer.self_attn, self_attention=True)
        norm(target.self_attention.layer_norm, layer.res_attn.norm)
        linear(target.ffn.linear_0, layer.ffn.fc1)
        linear(target.ffn.linear_1, layer.ffn.fc2)
        norm(target.ffn.layer_norm, layer.res_ffn.norm)
    stack(spec.decoder, model.tgt_embed, model.decoder_norm)
    spec.decoder.start_from_zero_embedding = False  # our first decoder input is <s>'s embedding
    for target, layer in zip(spec.decoder.layer, model.decoder_layers):
        attention(target.self_attention, layer.self_attn, self_attention=True)
        norm(target.self_attention.layer_norm, layer.res_self.norm)
        attention(target.attention, layer.cross_attn, self_attention=False)
        norm(target.attention.layer_norm, layer.res_cross.norm)
        linear(target.ffn.linear_0, layer.ffn.fc1)
        linear(target.ffn.linear_1, layer.ffn.fc2)
        norm(target.ffn.layer_norm, layer.res_ffn.norm)
    linear(spec.decoder.projection, model.lm_head)  # no bias; tied weights are stored once (aliased)

    tokens = vocabulary(checkpoint)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    config = spec.config
    config.unk_token, config.bos_token, config.eos_token = SPECIAL_TOKENS[UNK], SPECIAL_TOKENS[BOS], SPECIAL_TOKENS[EOS]
    config.decoder_start_token = SPECIAL_TOKENS[BOS]
    config.add_source_bos, config.add_source_eos = False, True  # our source: subwords + </s>
    config.layer_norm_epsilon = next(m.eps for m in model.modules() if isinstance(m, nn.LayerNorm))  # 1e-5
    return spec


def export_ctranslate2(checkpoint, out: str | Path, overwrite: bool = False,
                       quantization: str | None = None) -> list[Path]:
    """Write the CTranslate2 model directory; returns the files written. quantization: the
    weight type stored (None: float32; "int8", "int16", "float16", "bfloat16", ...)."""
    try:
        from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES
    except ImportError:
        raise UserError("exporting to CTranslate2 needs the ctranslate2 package: pip install ctranslate2") from None
    if quantization is not None and quantization not in ACCEPTED_MODEL_TYPES:
        raise UserError(f"unknown quantization {quantization!r}: use one of {', '.join(ACCEPTED_MODEL_TYPES)}")
    spec = ctranslate2_spec(checkpoint)
    spec.validate()
    spec.optimize(quantization=quantization)  # aliases shared (tied) weights, converts the weight type
    out = empty_directory(out, overwrite)
    spec.save(str(out))
    # The model's own BPE beside it: CTranslate2 takes subword tokens, so a user needs it to
    # turn text into them and back (tokenizers.Tokenizer.from_file).
    (out / "tokenizer.json").write_text(checkpoint.tokenizer.to_str(), encoding="utf-8")
    return sorted(out.iterdir())
