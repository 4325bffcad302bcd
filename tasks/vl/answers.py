"""Answers of the VQA tasks: the official VQA answer normalisation, and answer vocabularies.

``normalize_answer`` reproduces the rules of the official VQA evaluation script (processPunctuation and
processDigitArticle), so that training labels, vocabularies and the metric see the same strings.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Iterable

# Punctuation the official script strips or turns into a space. Not in it: the apostrophe (contractions),
# the period (own rule below), and : # $ % & * ^ ~ |, which it leaves alone.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official pattern is meant as "a period not between digits", but its look-behind is misspelt and never
# applies: what it does is drop every period not followed by a digit ("yes." -> "yes", "2.5" kept).
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# "written form -> contraction" of the official script, as "key value" pairs. Its keys with capitals
# (Id've, I'dve, Im, Ive) are left out: words are lower-cased first, so they never match there either.
# "somebody'd -> somebodyd" is the official table's (reversed) entry, kept as it is.
_CONTRACTIONS = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't  couldn'tve couldn't've
couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't  hadnt hadn't  hadnt've hadn't've
hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd  hed've he'd've  he'dve he'd've  hes he's
howd how'd  howll how'll  hows how's  isnt isn't  itd it'd  itd've it'd've  it'dve it'd've  itll it'll
let's let's  maam ma'am  mightnt mightn't  mightnt've mightn't've  mightn'tve mightn't've  mightve might've
mustnt mustn't  mustve must've  neednt needn't  notve not've  oclock o'clock  oughtnt oughtn't
ow's'at 'ow's'at  'ows'at 'ow's'at  'ow'sat 'ow's'at  shant shan't  shed've she'd've  she'dve she'd've
she's she's  shouldve should've  shouldnt shouldn't  shouldnt've shouldn't've  shouldn'tve shouldn't've
somebody'd somebodyd  somebodyd've somebody'd've  somebody'dve somebody'd've  somebodyll somebody'll
somebodys somebody's  someoned someone'd  someoned've someone'd've  someone'dve someone'd've
someonell someone'll  someones someone's  somethingd something'd  somethingd've something'd've
something'dve something'd've  somethingll something'll  thats that's  thered there'd  thered've there'd've
there'dve there'd've  therere there're  theres there's  theyd they'd  theyd've they'd've  they'dve they'd've
theyll they'll  theyre they're  theyve they've  twas 'twas  wasnt wasn't  wed've we'd've  we'dve we'd've
weve we've  werent weren't  whatll what'll  whatre what're  whats what's  whatve what've  whens when's
whered where'd  wheres where's  whereve where've  whod who'd  whod've who'd've  who'dve who'd've
wholl who'll  whos who's  whove who've  whyll why'll  whyre why're  whys why's  wont won't
wouldve would've  wouldnt wouldn't  wouldnt've wouldn't've  wouldn'tve wouldn't've  yall y'all
yall'll y'all'll  y'allll y'all'll  yall'd've y'all'd've  y'alld've y'all'd've  y'all'dve y'all'd've
youd you'd  youd've you'd've  you'dve you'd've  youll you'll  youre you're  youve you've
"""
_words = _CONTRACTIONS.split()
CONTRACTIONS = dict(zip(_words[::2], _words[1::2]))
del _words


def strip_punctuation(text: str) -> str:
    """processPunctuation: a mark next to a space, or any mark in a text with a comma between digits
    ("1,000"), is removed; any other mark becomes a space ("red,blue" -> "red blue"). The tests are made
    on the input text, one mark at a time. Then periods not followed by a digit go."""
    out = text
    remove_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        out = out.replace(mark, "" if remove_all or f"{mark} " in text or f" {mark}" in text else " ")
    # the official call passes re.UNICODE where ``count`` goes, so at most 32 periods are removed
    return PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=int(re.UNICODE))


def digits_and_articles(text: str) -> str:
    """processDigitArticle: lower-case, number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


@lru_cache(maxsize=1 << 16)
def normalize_answer(answer: str) -> str:
    """The official normalisation of one answer (newlines and tabs become spaces, then the two rules)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return digits_and_articles(strip_punctuation(text))


def frequent_answers(answers: Iterable[str], min_count: int, max_answers: int | None = None) -> list[str]:
    """The answers given at least ``min_count`` times, most frequent first (ties alphabetical, so the
    vocabulary and its class ids are deterministic), at most ``max_answers`` of them."""
    counts = Counter(answers)
    kept = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return kept if max_answers is None else kept[:max_answers]


def answer_table(vocabulary: list[str], seen: Iterable[str]) -> list[str]:
    """The vocabulary (the classes) followed by every other answer seen, alphabetically: label ids index
    it, so answers outside the vocabulary still count in the VQA accuracy."""
    known = set(vocabulary)
    return list(vocabulary) + sorted({a for a in seen if a not in known})
