"""A deterministic corpus of captions written the ways users write them, for checking the
Python PTB tokenizer against Stanford's Java one (tests/test_ptb_tokenizer.py).

Every fragment of every category below appears at least once, attached to a word and
standing alone, at the start, inside and at the end of a caption; the rest of the corpus
mixes COCO-style sentences (case, spacing, punctuation varied) with random fragments,
glued to each other or to words so that rules meet.
"""

from __future__ import annotations

import random
import re

_SENTENCE = (
    "a man woman dog cat riding wave on top of surfboard two people standing next to "
    "train station kitchen with white cabinets and red table bowl fruit bananas sitting "
    "in the grass giraffe zoo plate pizza slice broccoli bus street city tennis player "
    "racket ball field baseball bat skateboard ramp boy girl bike motorcycle parked near "
    "building sign stop traffic light clock tower sky clouds snow skis mountain beach "
    "umbrella ocean boat water bird tree elephant horse sheep cow laptop desk computer "
    "phone shirt hat sandwich donut cake cup coffee vase flowers bed room bathroom toilet "
    "sink mirror airplane runway airport kite park frisbee couch tv remote"
)
WORDS = _SENTENCE.split()

_GROUPS: dict[str, tuple[list[str], ...]] = {
    "punctuation": (
        [".", ",", ";", ":", "!", "?", " .", " ,", "。", "¡", "¿", "·", "•", "=", "/"],
    ),
    "repeated": (
        ["!!", "?!", "!?", "...", "..", "....", ". . .", "--", "---", "----", "-----"],
        ["!!!", "??", "?!?", ",,", ";;", "::", "…", "—", "–", "―", "&mdash;", "&ndash;", "-"],
    ),
    "quotes": (
        ['"', "'", "`", "``", "''", "“", "”", "‘", "’", "«", "»", "‹", "›", "„", "‚"],
        ["‛", "‟", "&quot;", "&apos;", '"hello"', "'hi'", "“curly”", "‘single’", "«guillemets»"],
        ["`backtick'", "``latex''", '""', "''''", "'s", "'S", "'", "x'"],
    ),
    "brackets": (
        ["(", ")", "[", "]", "{", "}", "<", ">", "<<", ">>", "(a)", "[sic]", "{x}"],
        ["(red)", "((", "))", "<b>", "</i>", "<br/>", "<a href='x'>", "<!-- c -->", "&lt;", "&gt;"],
        ["-LRB-", "-rrb-", "()", "[]"],
    ),
    "hyphens_slashes": (
        ["t-shirt", "black-and-white", "and/or", "hat/cap", "24/7", "x-ray"],
        ["up-to-date", "a-", "-b", "non-U.S.", "pro-", "anti-", "co-op", "e-mail", "1/2", "3/4"],
        ["1 1/2", "2-1/2", "½", "¼", "⅔", "⅝", "a/b/c", "A/B", "w/", "\\", "\\/", "5\u20448"],
        ["self\u2010made", "soft\u00adhyphen", "\u00ad", "under_score", "__", "a_b"],
    ),
    "numbers": (
        ["1,000", "3.5", "10,000.50", "-5", "+3", "0.5", "1.", ".5", "2nd", "1990s"],
        ["'90s", "$5", "$5.99", "US$5", "us$5", "€20", "£3", "¢", "¥100", "#1", "100%", "555-1234"],
        ["(555) 123-4567", "+1 555 123 4567", "1.2.3.4", "12/25/2020", "3-4", "1,5", "٣", "²"],
        ["10km", "5kg", "4x4", "3D", "007", "1e5", "v2.0", "9-11", "₂", "1st", "½-mile"],
    ),
    "times": (["10:30", "10:30am", "10:30 a.m.", "5 p.m.", "12:00:01", "5pm", "noon:", "3:15PM"],),
    "ampersands": (
        ["&", "AT&T", "S&P", "&amp;", "R&B", "B&amp;B", "&nbsp;", "&HT;", "&#160;"],
        ["&eacute;", "S&P-500", "Q&A", "&&", "rock&roll", "A&amp;P"],
    ),
    "contractions": (
        ["don't", "can't", "won't", "it's", "I'm", "you're", "they'll", "we've"],
        ["he'd", "dog's", "dogs'", "rock 'n' roll", "'em", "'tis", "'twas", "o'clock", "y'all"],
        ["ma'am", "cannot", "gonna", "gotta", "wanna", "lemme", "gimme", "don’t", "it`s"],
        ["DON'T", "Can't", "isn't", "ain't", "c'mon", "'cause", "'til", "O'Neil", "d'Arc"],
        ["l'hotel", "cont'd", "ol'", "li'l", "nor'easter", "jack-o'-lantern", "'n'", "n't"],
    ),
    "abbreviations": (
        ["u.s.", "U.S.", "mr.", "Mr.", "Mrs.", "Dr.", "St.", "etc.", "e.g."],
        ["i.e.", "a.m.", "p.m.", "vs.", "Inc.", "Jan.", "No.", "fig. 3", "Co. Ltd", "Jr.", "I."],
        ["U.K.", "Ph.D.", "Calif.", "Mt.", "Ave.", "Corp.", "approx.", "A.", "z.", "N.Y.C."],
        ["ca. 5", "Mass.", "Wash.", "Pty. Ltd.", "U.S.A.", "a.k.a.", "C.D.s", "c++", "C#"],
    ),
    "urls_emails": (
        ["http://example.com", "https://www.example.org/path?q=1&r=2", "www.cat.com"],
        ["example.com", "a@b.com", "john.doe@mail.example.org", "<a@b.com>", "@user", "#tag"],
        ["file.jpg", "photo.png", "HTTP://X.ORG/A.", "http://x.com/a(b)", "ftp://x.y", "x.net/y"],
        ["me@x", "www.a-b.co.uk", "index.html", "a.b.c", "user@example.com."],
    ),
    "unicode": (
        ["café", "naïve", "résumé", "Ångström", "ÉCOLE", "straße", "İstanbul", "ΣΟΦΙΑΣ"],
        ["Москва", "日本語", "ﬁsh", "e\u0301", "Ǆ", "ǅ", "ß", "ÀÉÎÕÜ", "Ω", "µ", "ı", "ŉ", "ﬀ"],
        ["한국", "עברית", "العربية", "ไทย", "हिन्दी", "ĳ", "Ⅻ", "ⓐ", "\u0237", "\u01c5x"],
    ),
    "emoji": (
        ["😀", "🐶", "👍🏽", "❤️", "☕", "🇺🇸", "😀😀", "a😀b", "🐈‍⬛", "✨", "©", "™", "®"],
        ["°", "×", "±", "§", "¶", "†", "‰", "→", "∞", "★", "♥", "^", "~", "|", "*", "**"],
        ["+", ":)", ";-)", ":D", "^_^", ":-(", "=)", "<3", "x_x", "(^_^)", "(-_-)", ":p"],
    ),
    "whitespace": (
        ["\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2009", "\u200b", "\ufeff"],
        ["\u2028", "\u0085", "\x0b", "\x0c", "  ", "\t\t", " \n ", "\x00", "\x07", "\x7f"],
        ["\x1b", "&nbsp;"],
    ),
}
CATEGORIES = {name: [f for part in parts for f in part] for name, parts in _GROUPS.items()}

# The line breaks of the PTB lexer besides \n (which pycocoevalcap replaces by a space).
LINE_BREAKS = re.compile("[\r\u2028\u2029\x0b\x0c\x85]")

# Whole captions that are only whitespace or nothing.
BLANK = ["", " ", "  ", "\t", " \t ", "\n", " \n", "\u00a0", "\u3000"]


def _case(rng: random.Random, words: list[str]) -> list[str]:
    style = rng.random()
    if style < 0.35:
        return [words[0].capitalize(), *words[1:]]
    if style < 0.45:
        return [w.upper() for w in words]
    if style < 0.55:
        return [w.capitalize() for w in words]
    return words


def _sentence(rng: random.Random) -> list[str]:
    return _case(rng, [rng.choice(WORDS) for _ in range(rng.randint(3, 12))])


def _join(rng: random.Random, parts: list[str]) -> str:
    out = parts[0]
    for part in parts[1:]:
        gap = rng.random()
        out += ("" if gap < 0.2 else "  " if gap < 0.25 else "\t" if gap < 0.27 else " ") + part
    return out


def _pad(rng: random.Random, caption: str) -> str:
    r = rng.random()
    if r < 0.08:
        caption = rng.choice([" ", "  ", "\t", "\n", " \n"]) + caption
    r = rng.random()
    if r < 0.12:
        caption += rng.choice([" ", "  ", "\n", " \n", "\t", ". ", ".\n"])
    return caption


def captions(n: int = 20_000, seed: int = 12) -> list[str]:
    """At least `n` captions: every fragment in several positions, then random mixes."""
    rng = random.Random(seed)
    out = list(BLANK)
    fragments = [f for fs in CATEGORIES.values() for f in fs]
    for fragment in fragments:
        words = _sentence(rng)
        out.append(fragment)
        out.append(_join(rng, [fragment, *words]))
        out.append(" ".join(words) + fragment)
        out.append(" ".join(words) + " " + fragment)
        at = rng.randrange(1, len(words))
        out.append(" ".join(words[:at]) + fragment + " ".join(words[at:]))
        out.append(" ".join(words[:at]) + " " + fragment + " " + " ".join(words[at:]))
        for other in rng.sample(fragments, 3):  # fragments that meet
            out.append(_join(rng, [*words[:at], fragment + other, *words[at:]]))
    while len(out) < n:
        words = _sentence(rng)
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
            fragment = rng.choice(CATEGORIES[rng.choice(list(CATEGORIES))])
            at = rng.randrange(len(words) + 1)
            if at and rng.random() < 0.4:
                words[at - 1] += fragment
            else:
                words.insert(at, fragment)
        if rng.random() < 0.5:
            words[-1] += rng.choice([".", ".", " .", "!", "!!", "?", "...", "?!", ". "])
        out.append(_pad(rng, _join(rng, words)))
    return out


def _render(rng: random.Random, words: list[str], pool: list[str]) -> str:
    words = _case(rng, list(words))
    if rng.random() < 0.5:
        if rng.random() < 0.3:
            fragment = rng.choice(pool)
        else:
            fragment = rng.choice(CATEGORIES[rng.choice(list(CATEGORIES))])
        words.insert(rng.randrange(len(words) + 1), fragment)
    if rng.random() < 0.6:
        words[-1] += rng.choice([".", " .", "!", "!!", "...", "?!", ". \n", ""])
    return _pad(rng, _join(rng, words))


def image_case(n_images: int = 1000, seed: int = 16) -> tuple[dict[int, list[str]], dict[int, str]]:
    """A scoring case: per image, five references and one generated caption, all noisy
    renderings (case, punctuation, quotes, spacing, corpus fragments) of related sentences,
    so that no metric is near 0 or 1. Line breaks other than '\\n' are left out: they
    shift the official pipeline's captions (tested on their own)."""
    rng = random.Random(seed)
    pool = [LINE_BREAKS.sub(" ", c) for c in captions(5_000, seed)]
    references: dict[int, list[str]] = {}
    hypotheses: dict[int, str] = {}
    for image in range(n_images):
        base = [rng.choice(WORDS) for _ in range(rng.randint(5, 11))]
        refs = []
        for _ in range(5):
            words = list(base)
            for _ in range(rng.randint(0, 3)):  # paraphrase a little
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            refs.append(LINE_BREAKS.sub(" ", _render(rng, words, pool)))
        references[image] = refs
        hyp = list(base) if rng.random() < 0.8 else [rng.choice(WORDS) for _ in range(6)]
        caption = _render(rng, hyp[: rng.randint(3, len(hyp))], pool)
        hypotheses[image] = "" if rng.random() < 0.03 else LINE_BREAKS.sub(" ", caption)
    return references, hypotheses


def require_java() -> None:
    """Skip a test that compares with the official Java tools where Java is missing,
    except in CI (CI=true), where it must have been installed: there, fail."""
    import os

    import pytest

    from showtell.evaluation.metrics import java_available

    if java_available():
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("Java is missing in CI: .ci/run installs default-jre-headless")
    pytest.skip("needs Java (the official tokenizer and METEOR)")
