"""BLEU-1..4, METEOR, ROUGE-L and CIDEr-D as the official COCO caption evaluation
computes them.

The scorers are the official ones, from pycocoevalcap: BLEU, ROUGE-L and CIDEr-D (its
`Cider`: sigma 6, clipped counts, document frequencies from the references of the
evaluated set) are pure Python; METEOR runs its Java jar and is computed only when
Java is installed, otherwise reported as not computed (None), never as 0.

Before scoring, the official evaluation tokenizes every caption with Stanford's
PTBTokenizer (Java, `-preserveLines -lowerCase`) and drops punctuation tokens. So
that the metrics work without Java, `ptb_tokenize` reproduces those rules in Python:
NLTK's Treebank tokenizer (the same Penn Treebank conventions) plus the few places
where Stanford's differs (brackets become `-lrb-` etc., which lowercasing keeps out
of the punctuation list; opening single quotes; `'n'`; abbreviations such as `u.s.`
at the end; e-mail addresses and URLs kept whole). The tests check it against the
Java tokenizer on captions with punctuation, quotes, contractions, case and numbers.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from nltk.tokenize import TreebankWordTokenizer
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")

_TREEBANK = TreebankWordTokenizer()
_PUNCTUATION = frozenset(PUNCTUATIONS)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = frozenset(
    ["'s", "'m", "'d", "'re", "'ve", "'ll", "'n'", "'n", "'em", "'til", "'tis", "'twas", "'cause"]
)
_WHOLE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+|(https?://|www\.)\S+")
_ABBREVIATION = re.compile(r"(?:[a-z]\.)+[a-z]")


def ptb_tokenize(caption: str) -> str:
    """One caption as the official evaluation sees it: PTB tokens, lowercased, with
    punctuation tokens removed, joined by spaces."""
    text = caption.replace("\n", " ").lower()
    kept: list[str] = []

    def protect(match: re.Match[str]) -> str:
        kept.append(match.group(0).rstrip(".,;:!?"))
        tail = match.group(0)[len(kept[-1]) :]
        return f" showtellkept{len(kept) - 1} {tail}"

    text = _WHOLE.sub(protect, text)
    text = text.replace("'n'", " showtellrocknroll ")
    tokens: list[str] = []
    for token in _TREEBANK.tokenize(text):
        if token.startswith("showtellkept"):
            tokens.append(kept[int(token[12:])])
        elif token == "showtellrocknroll":
            tokens.append("'n'")
        elif (
            token[0] == "'" and len(token) > 1 and token not in _CLITICS and not token[1].isdigit()
        ):
            tokens += ["'", token[1:]]  # an opening quote
        else:
            tokens.append(_BRACKETS.get(token, token))
    if len(tokens) >= 2 and tokens[-1] == "." and _ABBREVIATION.fullmatch(tokens[-2]):
        tokens[-2] += "."  # Stanford keeps "u.s." whole at the end of a sentence
    return " ".join(t for t in tokens if t not in _PUNCTUATION)


def java_available() -> bool:
    java = shutil.which("java")
    if java is None:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Scores:
    """Corpus metrics (None where not computed) and per-image scores by metric."""

    corpus: dict[str, float | None]
    per_image: dict[str, dict[Hashable, float]] = field(default_factory=dict)
    meteor_note: str = ""


def score_tokenized(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str],
    meteor: bool | None = None,
) -> Scores:
    """Scores already-tokenized captions with the official scorers.

    `references`: image id -> its tokenized reference captions; `hypotheses`: image id
    -> one tokenized caption. `meteor`: None computes it when Java is available."""
    if set(references) != set(hypotheses):
        missing = set(references) ^ set(hypotheses)
        raise ValueError(f"references and hypotheses differ on {len(missing)} image ids")
    if not hypotheses:
        raise ValueError("no captions to score")
    ids = list(hypotheses)
    gts = {i: list(references[i]) for i in ids}
    res = {i: [hypotheses[i]] for i in ids}
    corpus: dict[str, float | None] = {}
    per_image: dict[str, dict[Hashable, float]] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its ratios
        bleu, bleu_images = Bleu(4).compute_score(gts, res)
    for n in range(4):
        corpus[f"Bleu_{n + 1}"] = float(bleu[n])
        per_image[f"Bleu_{n + 1}"] = dict(zip(ids, map(float, bleu_images[n]), strict=True))
    note = ""
    if meteor is None:
        meteor = java_available()
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        score, images = Meteor().compute_score(gts, res)
        corpus["METEOR"] = float(score)
        per_image["METEOR"] = dict(zip(ids, map(float, images), strict=True))
    else:
        corpus["METEOR"] = None
        note = "METEOR not computed: it needs Java (e.g. apt-get install default-jre)"
    rouge, rouge_images = Rouge().compute_score(gts, res)
    corpus["ROUGE_L"] = float(rouge)
    per_image["ROUGE_L"] = dict(zip(ids, map(float, rouge_images), strict=True))
    cider, cider_images = Cider().compute_score(gts, res)
    corpus["CIDEr"] = float(cider)
    per_image["CIDEr"] = dict(zip(ids, map(float, cider_images), strict=True))
    return Scores({name: corpus[name] for name in METRIC_NAMES}, per_image, note)


def score_captions(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str],
    meteor: bool | None = None,
) -> Scores:
    """Raw captions -> PTB-tokenized (as the official evaluation) -> scores."""
    return score_tokenized(
        {i: [ptb_tokenize(c) for c in refs] for i, refs in references.items()},
        {i: ptb_tokenize(h) for i, h in hypotheses.items()},
        meteor,
    )


def format_scores(scores: Scores) -> str:
    """A two-line table of the corpus metrics."""
    header = " ".join(f"{name:>8}" for name in METRIC_NAMES)
    values = " ".join(
        f"{'n/a':>8}" if scores.corpus[n] is None else f"{scores.corpus[n]:>8.4f}"
        for n in METRIC_NAMES
    )
    return f"{header}\n{values}" + (f"\n{scores.meteor_note}" if scores.meteor_note else "")
