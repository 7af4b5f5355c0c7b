"""Caption tokenization, as im2txt: lowercase, then NLTK's Treebank-style tokenizer.

im2txt called `nltk.word_tokenize(caption.lower())`, which first splits the text into
sentences with the Punkt model (an NLTK data download) and then applies
`NLTKWordTokenizer` to each sentence. For a one-sentence caption, the usual case in
MSCOCO, applying `NLTKWordTokenizer` to the whole caption gives the same tokens
without the download. The difference: in a caption of several sentences, a full stop
that ends a sentence other than the last stays attached to its word ("a dog. it
runs" gives `dog.`, where word_tokenize gives `dog` `.`).
"""

from __future__ import annotations

from nltk.tokenize.destructive import NLTKWordTokenizer

_TOKENIZER = NLTKWordTokenizer()


def tokenize_caption(caption: str) -> list[str]:
    """The caption's words, without start and end words; [] for an empty caption."""
    return _TOKENIZER.tokenize(caption.lower())
