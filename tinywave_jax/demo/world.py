"""The demo's text: a small town of scenes, stories about its people, and word / non-word pairs.

A scene binds three words: a place, the person who works there and the thing one gets there
(bakery, baker, bread); each story visits one scene with one or two people. Eight templates,
twenty-four scenes, sixteen names and five times of day give tens of thousands of distinct
stories, so the teacher's pretraining corpus can hold far more of them than the distillation set.
The cloze tests, on held-out stories:

  sSC  entity tracking: the wrong ending is the same sentence about someone the story never
       mentions ("Then Max went home with the bread" after a story about Anna and Leo); only a
       model that follows who the story is about prefers the right one;
  tSC  topic: the wrong ending is the ending of another test story (another template, scene and
       people).

A teacher learns to track who a story is about (copying names from the context, an induction
behaviour) from thousands of stories; a model trained from scratch on a few hundred mostly does
not. Stories are drawn once from a fixed seed and split by story: test, validation, then training
stories (every text distinct, so held-out stories are in no training corpus). `world_hash`
fingerprints the texts, so a teacher pretrained on one world refuses another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re

# (place, worker, item): each word belongs to one scene only.
SCENES = (
    ("bakery", "baker", "bread"),
    ("library", "librarian", "book"),
    ("river", "fisherman", "fish"),
    ("farm", "farmer", "eggs"),
    ("school", "teacher", "pencil"),
    ("garage", "mechanic", "wheel"),
    ("beach", "lifeguard", "shells"),
    ("zoo", "keeper", "monkey"),
    ("hospital", "doctor", "medicine"),
    ("cafe", "waiter", "coffee"),
    ("garden", "gardener", "roses"),
    ("market", "grocer", "apples"),
    ("station", "driver", "ticket"),
    ("forest", "ranger", "mushrooms"),
    ("post office", "postman", "letter"),
    ("bank", "cashier", "money"),
    ("museum", "guide", "painting"),
    ("circus", "clown", "balloon"),
    ("kitchen", "cook", "soup"),
    ("theatre", "actor", "costume"),
    ("harbour", "sailor", "boat"),
    ("mountain", "climber", "rope"),
    ("airport", "pilot", "suitcase"),
    ("stable", "rider", "horse"),
)
NAMES = (
    "Tom",
    "Anna",
    "Ben",
    "Lucy",
    "Sam",
    "Mia",
    "Jack",
    "Emma",
    "Max",
    "Lily",
    "Leo",
    "Ruby",
    "Finn",
    "Nora",
    "Zoe",
    "Hugo",
)
TIMES = ("in the morning", "after lunch", "on Sunday", "in the evening", "before school")

# (context sentences, ending). {A}, {B}: people; {time}; {place}, {worker}, {item}: the scene.
TEMPLATES = (
    (
        ("{A} went to the {place} with {B} {time}.", "{A} talked to the {worker} for a while."),
        "Then {A} went home with the {item}.",
    ),
    (
        ("{A} and {B} walked to the {place} {time}.", "They stayed there until dark."),
        "{B} carried the {item} all the way home.",
    ),
    (
        ("{A} needed the {item} {time}.", "{A} asked {B} where to find it."),
        "{B} said it was at the {place}.",
    ),
    (
        ("{A} lost the {item} {time}.", "{A} and {B} looked for it everywhere."),
        "At last {A} found it at the {place}.",
    ),
    (
        ("{A} works at the {place}.", "{A} meets {B} there {time}."),
        "{A} is the best {worker} in town.",
    ),
    (
        ("{A} wanted to meet the {worker}.", "So {A} took the bus with {B} {time}."),
        "{A} met the {worker} at the {place}.",
    ),
    (
        ("{A} wanted the {item} very much.", "{A} asked {B} for money {time}."),
        "The {worker} gave {A} the {item}.",
    ),
    (("{B} is the {worker} in our town.", "{A} visited {B} {time}."), "{B} showed {A} the {item}."),
)

# Real words of the town, each paired with a made-up non-word that sounds like English.
WORD_PAIRS = (
    ("bakery", "bakeny"),
    ("library", "limbrary"),
    ("river", "rimer"),
    ("farmer", "farsner"),
    ("school", "schoom"),
    ("garage", "gorage"),
    ("beach", "beash"),
    ("monkey", "monkel"),
    ("doctor", "doctel"),
    ("coffee", "coffel"),
    ("garden", "gorben"),
    ("market", "markot"),
    ("station", "stotion"),
    ("forest", "forust"),
    ("letter", "lekker"),
    ("money", "monnip"),
    ("museum", "mupeum"),
    ("balloon", "balloop"),
    ("kitchen", "kitchun"),
    ("sailor", "sailon"),
    ("mountain", "mountoon"),
    ("pilot", "pilut"),
    ("horse", "horsk"),
    ("bread", "brede"),
    ("pencil", "pensit"),
    ("teacher", "teapher"),
    ("waiter", "waiber"),
    ("roses", "rovers"),
    ("ticket", "tickat"),
    ("painting", "paingting"),
    ("morning", "morfing"),
    ("evening", "evelling"),
    ("lunch", "lunsh"),
    ("home", "hobe"),
    ("walked", "wolked"),
    ("stayed", "stoyed"),
    ("found", "fount"),
    ("lost", "lopst"),
    ("visited", "vipited"),
    ("wanted", "wonted"),
)

_WORD_RE = re.compile(r"[a-z']+")


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation, as they are spoken and as the text stream spells them."""
    return [w.strip("'") for w in _WORD_RE.findall(text.lower()) if w.strip("'")]


@dataclasses.dataclass(frozen=True)
class Story:
    id: str
    template: int
    scene: int
    people: tuple[str, str]
    context: tuple[str, ...]
    ending: str
    wrong: str  # sSC: the ending about `stranger` instead of its first person
    stranger: str  # a name the story never mentions

    @property
    def sentences(self) -> tuple[str, ...]:
        return (*self.context, self.ending)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclasses.dataclass(frozen=True)
class WorldSplits:
    """How many stories each split holds; the draw is fixed by `seed`."""

    test: int = 128
    validation: int = 64
    train: int = 2400
    seed: int = 0

    def validate(self):
        from ..config import ConfigError

        if self.test < 2 or self.validation < 2 or self.train < 1:
            raise ConfigError("world: need test >= 2, validation >= 2 and train >= 1 stories")


def _fill(template: int, scene: int, people: tuple[str, str], time: str) -> tuple:
    context, ending = TEMPLATES[template]
    place, worker, item = SCENES[scene]
    values = {
        "A": people[0],
        "B": people[1],
        "time": time,
        "place": place,
        "worker": worker,
        "item": item,
    }
    return tuple(c.format(**values) for c in context), ending.format(**values)


def ending_person(template: int) -> str:
    """The slot ("A" or "B") of the first person the template's ending names."""
    ending = TEMPLATES[template][1]
    found = {k: ending.find("{" + k + "}") for k in "AB"}
    return min((at, k) for k, at in found.items() if at >= 0)[1]


def _balanced(n: int, rng: random.Random) -> list[tuple[int, int]]:
    """n (template, scene) pairs cycling through templates and, per template, through scenes."""
    per_template = [rng.sample(range(len(SCENES)), len(SCENES)) for _ in TEMPLATES]
    return [
        (k % len(TEMPLATES), per_template[k % len(TEMPLATES)][(k // len(TEMPLATES)) % len(SCENES)])
        for k in range(n)
    ]


def make_world(splits: WorldSplits = WorldSplits()) -> dict[str, list[Story]]:
    """{"test", "validation", "train"}: distinct stories; test and validation stories cycle
    through every template and scene."""
    splits.validate()
    rng = random.Random(splits.seed)
    total = splits.test + splits.validation + splits.train
    seen: set[str] = set()
    out: dict[str, list[Story]] = {}
    for name, n in (
        ("test", splits.test),
        ("validation", splits.validation),
        ("train", splits.train),
    ):
        combos = (
            _balanced(n, rng)
            if name != "train"
            else [(rng.randrange(len(TEMPLATES)), rng.randrange(len(SCENES))) for _ in range(n)]
        )
        prefix = {"test": "test", "validation": "valid", "train": "train"}[name]
        stories = []
        for template, scene in combos:
            for _ in range(1000):
                people = tuple(rng.sample(NAMES, 2))
                time = rng.choice(TIMES)
                context, ending = _fill(template, scene, people, time)
                text = " ".join((*context, ending))
                if text not in seen:
                    break
            else:
                from ..errors import ConfigError

                raise ConfigError(
                    f"world: cannot draw {total} distinct stories (world.test + "
                    "world.validation + world.train); ask for fewer"
                )
            seen.add(text)
            stranger = rng.choice([x for x in NAMES if x not in people])
            swapped = dict(zip("AB", people), **{ending_person(template): stranger})
            wrong = _fill(template, scene, (swapped["A"], swapped["B"]), time)[1]
            stories.append(
                Story(
                    f"{prefix}{len(stories):04d}",
                    template,
                    scene,
                    people,
                    context,
                    ending,
                    wrong,
                    stranger,
                )
            )
        out[name] = stories
    return out


def world_hash(world: dict[str, list[Story]]) -> str:
    """sha256 of every split's story texts and wrong endings, in order."""
    doc = {k: [[s.id, s.text, s.wrong] for s in v] for k, v in sorted(world.items())}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def vocabulary() -> list[str]:
    """Every word the world can say (templates, scenes, names, times) and the non-words."""
    words = set()
    for context, ending in TEMPLATES:
        for s in (*context, ending):
            words.update(words_of(re.sub(r"\{\w+\}", " ", s)))
    for group in (*SCENES, NAMES, TIMES):
        for x in group:
            words.update(words_of(x))
    words.update(w for pair in WORD_PAIRS for w in pair)
    return sorted(words)


def word_pairs(vocab: set[str] | None = None) -> list[tuple[str, str]]:
    """(real word, non-word) pairs; with `vocab`, only real words that occur in it."""
    return [(w, n) for w, n in WORD_PAIRS if vocab is None or w in vocab]
