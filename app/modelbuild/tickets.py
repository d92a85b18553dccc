"""A seeded generator of realistic, labelled support tickets for the ticket-triage demo model.

Each ticket has a ``category`` (what it is about) and an ``urgency`` (how fast it needs an
answer). Texts run from two words ("refund please ASAP") to several paragraphs with greeting,
context, the actual problem, details, an urgency cue and a sign-off, plus the usual noise:
typos, missing punctuation, a stray side note about something else.

The phrases live in ``app/data/ticket_phrases.json`` (see :class:`PhraseBank`): per category
``issues`` (the sentence stating the problem), ``details`` (context for longer tickets) and
``short`` (a whole ticket in a few words); per urgency level ``urgency_cues`` and two-word
``short_cues``; per category the concrete ``urgent_by_category`` "what is on fire" sentences;
``greetings``, ``signoffs``, ``fillers``; and ``slots`` that fill ``{slot}`` markers.

Honesty of the held-out set: every phrase list is split by index (:func:`split_pool`), and
the held-out tickets are composed only from the held-out quarter, with a different seed.
The classifier therefore never saw a held-out sentence or urgency cue during training; it
only shares slot values (plan names, carriers, amounts) and the overall ticket shape.

``python -m app.modelbuild.tickets`` rewrites ``app/data/tickets_heldout.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

CATEGORIES: tuple[str, ...] = (
    "billing",
    "technical",
    "account_access",
    "shipping",
    "cancellation",
    "feature_request",
)
URGENCIES: tuple[str, ...] = ("low", "normal", "high", "urgent")

TRAIN_SEED = 20_240_611
HELDOUT_SEED = 7_340_001
HELDOUT_SIZE = 300
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
HELDOUT_PATH = DATA_DIR / "tickets_heldout.jsonl"
PHRASES_PATH = DATA_DIR / "ticket_phrases.json"

Split = Literal["train", "heldout"]

# P(urgency | category), in URGENCIES order: feature requests are rarely urgent, outages often.
URGENCY_PRIOR: dict[str, tuple[float, float, float, float]] = {
    "billing": (0.15, 0.45, 0.25, 0.15),
    "technical": (0.10, 0.35, 0.30, 0.25),
    "account_access": (0.08, 0.40, 0.30, 0.22),
    "shipping": (0.12, 0.45, 0.28, 0.15),
    "cancellation": (0.20, 0.45, 0.20, 0.15),
    "feature_request": (0.50, 0.35, 0.10, 0.05),
}

_SLOT = re.compile(r"\{(\w+)\}")


class PhraseBank(BaseModel):
    """The phrase lists of ``ticket_phrases.json``, or one split of them."""

    issues: dict[str, list[str]]
    details: dict[str, list[str]]
    short: dict[str, list[str]]
    urgency_cues: dict[str, list[str]]
    short_cues: dict[str, list[str]]
    urgent_by_category: dict[str, list[str]]
    greetings: list[str]
    signoffs: list[str]
    fillers: list[str]
    slots: dict[str, list[str]]

    @classmethod
    def load(cls, path: Path = PHRASES_PATH) -> PhraseBank:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def for_split(self, split: Split) -> PhraseBank:
        """The same bank with every phrase list cut to ``split``; slot values are shared."""

        def each(d: dict[str, list[str]]) -> dict[str, list[str]]:
            return {k: split_pool(v, split) for k, v in d.items()}

        return PhraseBank(
            issues=each(self.issues),
            details=each(self.details),
            short=each(self.short),
            urgency_cues=each(self.urgency_cues),
            short_cues=each(self.short_cues),
            urgent_by_category=each(self.urgent_by_category),
            greetings=split_pool(self.greetings, split),
            signoffs=split_pool(self.signoffs, split),
            fillers=split_pool(self.fillers, split),
            slots=self.slots,
        )


@dataclass(frozen=True)
class Ticket:
    """One labelled ticket."""

    text: str
    category: str
    urgency: str


def split_pool(items: Sequence[str], split: Split) -> list[str]:
    """The training (3 of every 4) or held-out (every 4th, index % 4 == 3) part of a list."""
    held = [x for i, x in enumerate(items) if i % 4 == 3]
    if split == "heldout":
        return held
    return [x for i, x in enumerate(items) if i % 4 != 3]


class _Writer:
    """Composes tickets from one split's phrase bank with one seeded RNG."""

    def __init__(self, bank: PhraseBank, rng: random.Random) -> None:
        self.bank = bank
        self.rng = rng

    def slot(self, name: str) -> str:
        """A value for ``{name}``: generated ids, or a pick from ``bank.slots``."""
        rng = self.rng
        if name == "invoice":
            return f"INV-{rng.randint(10_000, 99_999)}"
        if name == "order":
            return f"#{rng.randint(100_000, 999_999)}"
        if name == "account":
            return f"AC-{rng.randint(1_000, 9_999)}-{rng.randint(100, 999)}"
        if name == "request_id":
            return f"req_{rng.getrandbits(48):012x}"
        if name == "phone":
            return f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        if name == "email":
            user = rng.choice(self.bank.slots["name"]).lower()
            domain = rng.choice(self.bank.slots["company"]).split()[0].lower().strip("&")
            return f"{user}@{domain}.com"
        return rng.choice(self.bank.slots[name])

    def pick(self, pool: Sequence[str]) -> str:
        """One phrase of ``pool`` with its slots filled."""
        return _SLOT.sub(lambda m: self.slot(m.group(1)), self.rng.choice(pool))

    def short_ticket(self, category: str, urgency: str) -> str:
        rng = self.rng
        text = self.pick(self.bank.short[category])
        if urgency == "normal" and rng.random() < 0.5:
            return text
        cue = self.pick(self.bank.short_cues[urgency])
        if rng.random() < 0.3:
            return f"{cue}: {text}" if urgency == "urgent" else f"{cue} - {text}"
        return f"{text}{rng.choice([' ', ', ', ' - ', '. '])}{cue}"

    def cue_sentences(self, category: str, urgency: str) -> list[str]:
        """The urgency-bearing sentences of a longer ticket (possibly none for ``normal``)."""
        rng = self.rng
        cues: list[str] = []
        if urgency == "urgent" and rng.random() < 0.5:
            cues.append(self.pick(self.bank.urgent_by_category[category]))
        if (not cues or rng.random() < 0.6) and (urgency != "normal" or rng.random() < 0.6):
            cues.append(self.pick(self.bank.urgency_cues[urgency]))
        if urgency != "normal" and rng.random() < 0.2:
            cues.append(self.pick(self.bank.urgency_cues[urgency]))
        return cues

    def body_ticket(self, category: str, urgency: str, *, long: bool) -> str:
        """A one-paragraph (medium) or multi-paragraph (long) ticket."""
        rng, bank = self.rng, self.bank
        issue = self.pick(bank.issues[category])
        pool = bank.details[category]
        n_details = min(len(pool), rng.randint(2, 4) if long else int(rng.random() < 0.4))
        details = [self.pick([d]) for d in rng.sample(pool, n_details)]
        cues = self.cue_sentences(category, urgency)
        if not long:
            body = [issue, *details]
            body = [*cues, *body] if rng.random() < 0.3 else [*body, *cues]
            paragraphs = [" ".join(body)]
        else:
            n_fill = min(len(bank.fillers), rng.randint(0, 2))
            opening = [self.pick([f]) for f in rng.sample(bank.fillers, n_fill)]
            first = [*opening, issue, *details[:1]]
            if urgency == "urgent" and rng.random() < 0.5:
                first = [*cues[:1], *first]
                cues = cues[1:]
            paragraphs = [" ".join(first), " ".join([*details[1:], *cues])]
        if rng.random() < 0.07:
            other = rng.choice([c for c in CATEGORIES if c != category])
            paragraphs.append(f"P.S. Unrelated, but also: {self.pick(bank.short[other])}.")
        if long or rng.random() < 0.5:
            paragraphs.insert(0, self.pick(bank.greetings))
        if long or rng.random() < 0.4:
            paragraphs.append(self.pick(bank.signoffs))
        sep = "\n\n" if long else "\n"
        return sep.join(p for p in paragraphs if p)

    def noise(self, text: str) -> str:
        """Real tickets are sloppy: a typo, no final punctuation, all lower case."""
        rng = self.rng
        if rng.random() < 0.1:
            text = _typo(text, rng)
        if rng.random() < 0.1:
            text = text.rstrip(".!?")
        if rng.random() < 0.1:
            text = text.lower()
        return text

    def ticket(self, category: str) -> Ticket:
        rng = self.rng
        urgency = rng.choices(URGENCIES, weights=URGENCY_PRIOR[category])[0]
        shape = rng.random()
        if shape < 0.2:
            text = self.short_ticket(category, urgency)
        else:
            text = self.body_ticket(category, urgency, long=shape >= 0.7)
        return Ticket(self.noise(text), category, urgency)


def _typo(text: str, rng: random.Random) -> str:
    """Swap two adjacent letters in one longer word, the commonest real typo."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def generate(n: int, *, seed: int, split: Split, bank: PhraseBank | None = None) -> list[Ticket]:
    """``n`` tickets (categories balanced) from the ``split`` phrase pools; deterministic."""
    rng = random.Random(seed)
    writer = _Writer((bank or PhraseBank.load()).for_split(split), rng)
    tickets = [writer.ticket(CATEGORIES[i % len(CATEGORIES)]) for i in range(n)]
    rng.shuffle(tickets)
    return tickets


def heldout_tickets() -> list[Ticket]:
    """The committed held-out set, as generated by :func:`write_heldout`."""
    return read_jsonl(HELDOUT_PATH)


def read_jsonl(path: Path) -> list[Ticket]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Ticket(**json.loads(line)) for line in lines if line.strip()]


def write_jsonl(path: Path, tickets: Sequence[Ticket]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for t in tickets:
            f.write(json.dumps(asdict(t), ensure_ascii=False) + "\n")


def write_heldout(path: Path = HELDOUT_PATH) -> list[Ticket]:
    """Regenerate the held-out file (seed ``HELDOUT_SEED``, held-out phrase pools)."""
    tickets = generate(HELDOUT_SIZE, seed=HELDOUT_SEED, split="heldout")
    write_jsonl(path, tickets)
    return tickets


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the held-out support-ticket set.")
    parser.add_argument("--out", type=Path, default=HELDOUT_PATH)
    args = parser.parse_args(argv)
    tickets = write_heldout(args.out)
    print(f"wrote {len(tickets)} tickets to {args.out}")


if __name__ == "__main__":
    main()
