"""The embedded default data set: synthetic SMS messages labelled spam or ham.

It stands in for the SMS spam collection the teaching texts fine-tune GPT-2 on, so `make train`
needs no download. The messages come from templates with a fixed random seed, so the file is
the same on every machine. Ham and spam share words ("free", "call", "win", "prize", "£"),
some spam reads like a friend's message, and LABEL_NOISE of the labels are flipped, as in real
hand-labelled data: a perfect score is not reachable, and runs can be told apart.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from pipeline.files import write_text

_NAMES = ["Sam", "Alex", "Priya", "Tom", "Mei", "Jo", "Carlos", "Nina", "Ben", "Aisha", "Leo"]
_PLACES = ["the station", "the pub", "mum's", "the gym", "work", "the cinema", "the library"]
_TIMES = ["tonight", "tomorrow", "at 7", "after lunch", "on Friday", "this weekend", "later"]
_THINGS = ["the match", "that film", "the game", "the news", "the show", "the concert"]
_ITEMS = ["milk", "bread", "the keys", "my charger", "some eggs", "the tickets"]
_PRIZES = ["holiday", "iPhone", "gift voucher", "cash prize", "mobile upgrade", "camcorder"]
_PRODUCTS = ["ringtones", "loans", "meds", "dating chat", "poly tones", "credit"]

_HAM = [
    "Hey {name}, are we still on for {thing} {time}?",
    "I'll be late, stuck at {place}. See you {time}.",
    "Can you pick up {item} on the way home?",
    "Are you free {time}? Fancy going to {place}?",
    "Call me when you get a chance, nothing urgent.",
    "Did we win {thing}? I missed the end.",
    "Happy birthday {name}! Hope you have a great day x",
    "Ok, I'm leaving {place} now. Want anything?",
    "Thanks for {time}, it was really fun.",
    "{name} said the prize draw at work was a joke, nobody won anything lol",
    "Sorry I missed your call, was at {place}. Free to talk {time}.",
    "Don't forget {item}! Mum will kill us.",
    "Lol did you see {thing}? Can't believe it.",
    "Meet you at {place} {time}, text me when you're there.",
    "Won £{small}0 on the quiz at {place} haha, drinks on me {time}",
    "Mum says free dinner at hers {time}, call her back when you can",
    "Can you text me the code for the wifi? Need it for {thing}",
    "Did you claim the refund for {item}? The shop said call them before {date}",
    "{name} won tickets for {thing}! Free {time}? Could be fun",
]
_SPAM = [
    "WINNER!! You have been selected to receive a £{amount} {prize}. Call {phone} now to claim.",
    "URGENT! Your mobile number has won a £{amount} {prize}. To claim call {phone} before {date}.",
    "Congratulations! You are awarded a FREE {prize}. Text CLAIM to {short} now. T&Cs apply.",
    "FREE entry into our £{amount} weekly draw! Text WIN to {short} to receive your entry.",
    "You have 1 new voicemail. Please call {phone} to hear your {prize} offer. 18+ only",
    "Get cheap {products} now! Reply YES to {short} for your free trial. Stop? txt STOP",
    "Your account has been credited with £{amount}. Call {phone} to confirm, offer ends {date}.",
    "Hi {name}, u have been chosen 4 a free {prize}! Just txt GO to {short} 150p/msg",
    "Last chance to claim your guaranteed £{amount} {prize}! Call {phone} now, lines close {date}",
    "Want {products}? Only £{small}/wk. Text {short} to subscribe, msg&data rates apply",
    "Hey {name}, it's been ages! Are you free {time}? Text me back on {short} x",
    "Your parcel could not be delivered {time}. Call {phone} to rebook, fee £{small}",
    "{name} has sent you a message. Call {phone} to listen, it's about {thing}",
]
LABEL_NOISE = 0.03
SPAM_FRACTION = 0.35


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        name=rng.choice(_NAMES),
        place=rng.choice(_PLACES),
        time=rng.choice(_TIMES),
        thing=rng.choice(_THINGS),
        item=rng.choice(_ITEMS),
        prize=rng.choice(_PRIZES),
        products=rng.choice(_PRODUCTS),
        amount=rng.choice([100, 250, 500, 900, 1000, 2000, 5000]),
        small=rng.choice([1, 2, 3, 5]),
        phone="0" + "".join(rng.choice("0123456789") for _ in range(10)),
        short=str(rng.randint(80000, 89999)),
        date=f"{rng.randint(1, 28)}/{rng.randint(1, 12)}",
    )


def generate(n_examples: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n_examples` (text, label) pairs, label 'spam' or 'ham'; the same for the same arguments."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_examples):
        label = "spam" if rng.random() < SPAM_FRACTION else "ham"
        text = _fill(rng.choice(_SPAM if label == "spam" else _HAM), rng)
        if rng.random() < LABEL_NOISE:
            label = "ham" if label == "spam" else "spam"
        rows.append((text, label))
    return rows


def ensure_file(path: str | Path, n_examples: int) -> Path:
    """Write the demo TSV (columns `label`, `text`) at `path` unless it is already there."""
    path = Path(path)
    if path.is_file():
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["label", "text"])
    writer.writerows((label, text) for text, label in generate(n_examples))
    return write_text(path, buffer.getvalue())


def instructions(n_examples: int, seed: int = 0) -> list[dict[str, str]]:
    """`n_examples` instruction records whose answers can be checked exactly: arithmetic,
    unit conversion, reversing and sorting words, and labelling an SMS of the spam demo."""
    rng = random.Random(seed)
    words = [w for w in " ".join(_NAMES + _ITEMS + _PLACES).replace("'", "").split() if w.isalpha()]
    sms = generate(max(n_examples, 10), seed)

    def arithmetic() -> tuple[str, str, str]:
        # One-digit operands: a table a small model can learn in a minute.
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.5:
            return f"What is {a} plus {b}?", "", str(a + b)
        return f"What is {max(a, b)} minus {min(a, b)}?", "", str(max(a, b) - min(a, b))

    def convert() -> tuple[str, str, str]:
        value = rng.randint(1, 40)
        unit, factor, target = rng.choice([("km", 1000, "m"), ("kg", 1000, "g"), ("h", 60, "min")])
        return f"Convert {value} {unit} to {target}.", "", f"{value * factor} {target}"

    def reverse() -> tuple[str, str, str]:
        chosen = rng.sample(words, 3)
        return "Reverse the order of these words.", " ".join(chosen), " ".join(chosen[::-1])

    def sort() -> tuple[str, str, str]:
        chosen = rng.sample(words, 3)
        return "Sort these words alphabetically.", " ".join(chosen), " ".join(sorted(chosen))

    def label() -> tuple[str, str, str]:
        text, answer = rng.choice(sms)
        return "Is this message spam or ham?", text, answer

    tasks = [arithmetic, convert, reverse, sort, label]
    rows = []
    for _ in range(n_examples):
        instruction, given, output = rng.choice(tasks)()
        row = {"instruction": instruction, "output": output}
        if given:
            row["input"] = given
        rows.append(row)
    return rows


def ensure_instruct_file(path: str | Path, n_examples: int) -> Path:
    """Write the instruction demo (JSONL) at `path` unless it is already there."""
    import json

    path = Path(path)
    if path.is_file():
        return path
    lines = [json.dumps(row) for row in instructions(n_examples)]
    return write_text(path, "\n".join(lines) + "\n")


def ensure_synthetic(cfg) -> None:
    """data.path written with data.synthetic_examples examples when it is not there yet
    (`cfg`: a DataConfig)."""
    if cfg.synthetic_examples:
        write = ensure_instruct_file if cfg.task == "instruct" else ensure_file
        write(cfg.path, cfg.synthetic_examples)
