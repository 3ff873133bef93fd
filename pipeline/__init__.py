"""A Transformer translation pipeline: data -> tokenizer -> batches -> model -> decoding -> BLEU.

`from pipeline import Translator` is the Python API of a trained checkpoint (imported on
first use, so `python -m pipeline --help` stays fast)."""


def __getattr__(name: str):
    if name == "Translator":
        from pipeline.translator import Translator

        return Translator
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
