"""Text: byte-level tokenizer, corpora (the embedded Python-stdlib corpus or user files), the
``lm`` task (causal language modelling, bits per byte)."""

from formers.text import task  # noqa: F401  (registers the task)
from formers.text.corpus import Corpus, load_corpus
from formers.text.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "Corpus", "load_corpus"]
from formers.text import matformer  # noqa: F401,E402  (registers the lm-matformer task)
