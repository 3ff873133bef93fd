"""A Transformer translation pipeline: data -> tokenizer -> batches -> model -> decoding -> BLEU."""
