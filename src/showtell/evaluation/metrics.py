"""BLEU-1..4, METEOR, ROUGE-L and CIDEr-D exactly as the official COCO caption evaluation
(pycocoevalcap's COCOEvalCap) computes them, on any caption text.

Tokenization is the official one, bit for bit (`ptb_tokenizer`: Stanford's PTBTokenizer
`-preserveLines -lowerCase` as pycocoevalcap runs it, then its punctuation removal). Its
Python engine, which runs the lexer's own DFA tables, is used whether or not Java is
installed: it gives the Java tokenizer's output (tests/test_ptb_tokenizer.py, 20,000+
generated captions, one JVM run, zero differences) and is faster than the one batched JVM
call pycocoevalcap makes (25,000 captions: 1.5 s against 2.5 s; 1,000: 0.03 s against
0.6 s). `tokenizer="java"` runs the jar instead.

The scorers are the official ones, from pycocoevalcap, run as COCOEvalCap runs them:
BLEU, ROUGE-L and CIDEr-D (its `Cider`: sigma 6, clipped counts, document frequencies
from the references of the evaluated set) are pure Python; METEOR runs its Java jar and
is computed only when Java is installed, otherwise reported as not computed (None),
never as 0. tests/test_metrics.py checks all seven numbers against pycocoevalcap's own
pipeline on 1,000 images built from the generated corpus.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import subprocess
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from showtell.errors import ShowtellError
from showtell.evaluation.ptb_tokenizer import line_breaks, tokenize

logger = logging.getLogger(__name__)

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def ptb_tokenize(caption: str) -> str:
    """One caption as the official evaluation sees it: PTB tokens, lowercased, with
    punctuation tokens removed, joined by spaces."""
    return tokenize({0: [caption]})[0][0]


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


# The METEOR jar must answer within this time; a JVM that dies or stops answering fails
# the evaluation instead of blocking it forever.
METEOR_TIMEOUT_S = 600.0


def _meteor(
    gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]
) -> tuple[float, list[float]]:
    """pycocoevalcap's METEOR, with its JVM always ended. Its `Meteor.compute_score` takes
    a lock that it leaves held when it raises (a JVM that died: no memory for its 2 GB
    heap; an unexpected line), and `Meteor.__del__` takes that lock again: the process
    would then hang for ever wherever the object is collected, at interpreter exit at
    the latest. So on any failure the JVM is killed here and the lock released; a timer
    kills a JVM that stops answering. On success `Meteor.__del__` ends the JVM."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    watchdog = threading.Timer(METEOR_TIMEOUT_S, meteor.meteor_p.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        return meteor.compute_score(gts, res)
    except BaseException as e:
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
        if meteor.lock.locked():
            meteor.lock.release()
        if isinstance(e, (OSError, ValueError)):  # a dead JVM: a broken pipe, no number
            detail = meteor.meteor_p.stderr.read(2000).decode(errors="replace").strip()
            raise MeteorError(f"METEOR (Java) failed: {e}; {detail or 'no message'}") from None
        raise
    finally:
        watchdog.cancel()


class MeteorError(ShowtellError):
    """The METEOR jar failed (its message included)."""


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
        score, images = _meteor(gts, res)
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
    tokenizer: str = "python",
) -> Scores:
    """Raw captions -> the official tokenization -> the official scores.

    As in COCOEvalCap, references and hypotheses are tokenized as two batches in the
    order given (which matters only for captions with line breaks, see below)."""
    shifting = line_breaks([c for refs in references.values() for c in refs])
    shifting += line_breaks(list(hypotheses.values()))
    if shifting:
        logger.warning(
            "%d captions hold a line break other than \\n (e.g. %r); the official "
            "tokenization splits them into lines and so shifts the captions after them onto "
            "other images' tokens: so do these scores",
            len(shifting),
            shifting[0],
        )
    gts = tokenize(references, tokenizer)
    res = tokenize({i: [h] for i, h in hypotheses.items()}, tokenizer)
    lost = len(set(references) - set(gts)) + len(set(hypotheses) - set(res))
    if lost:  # the official evaluation then fails (an assertion in its scorers)
        example = f" (e.g. {shifting[0]!r})" if shifting else ""
        raise ValueError(
            f"line breaks inside captions{example} leave {lost} images without tokens "
            "in the official tokenization"
        )
    return score_tokenized(gts, {i: hyps[0] for i, hyps in res.items()}, meteor)


def format_scores(scores: Scores) -> str:
    """A two-line table of the corpus metrics."""
    header = " ".join(f"{name:>8}" for name in METRIC_NAMES)
    values = " ".join(
        f"{'n/a':>8}" if scores.corpus[n] is None else f"{scores.corpus[n]:>8.4f}"
        for n in METRIC_NAMES
    )
    return f"{header}\n{values}" + (f"\n{scores.meteor_note}" if scores.meteor_note else "")
