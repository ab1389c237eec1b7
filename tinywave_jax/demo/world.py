"""The demo's text: a small town of scenes, stories about its people, and word / non-word pairs.

A scene binds three words: a place, the person who works there and the thing one gets there
(bakery, baker, bread). Twenty-four scenes, sixteen names and five times of day give tens of
thousands of distinct stories, so the teacher's pretraining corpus can hold far more of them than
the distillation set. Three kinds of story (`WorldSplits.kind`), each with its own sSC:

  scene     (the default) one scene, one or two people (the stranger stories' templates whose
            ending names only scene words the context does not: "Lily needed the monkey on
            Sunday. Lily asked Leo where to find it." / "Leo said it was at the zoo."); sSC's
            wrong ending takes that word from another scene ("... at the forest."). Neither
            ending's differing word is in the story, so copying cannot tell them apart; a
            model must know which words go together (the 6 x 128 teacher shape learns it in
            text; it did not learn the binding). The benchmarks pair each held-out story
            with its `mirror` (the same sentences told of the wrong ending's scene), so the
            two endings are right once and wrong once: scored without the story, an ending
            wins exactly half of the pairs.
  binding   two people, each bound to one scene's place, worker or item ("Anna went to the
            bakery. Leo went to the river."); the ending says something new about one binding
            in words the context never uses together ("Later Anna came back from the
            bakery."), and sSC's wrong ending swaps in the *other* binding's value or person
            ("... from the river."), which the story does mention, in the same sentence shape.
            Copying from the context cannot tell the endings apart (`tinywave eval --reference
            copy` measures it on the audio); a model must know who did what.
  stranger  (the shipped teachers' world) one story, one or two people; sSC's wrong ending names
            someone the story never mentions, which copying names from the context solves.

tSC (every kind): the wrong ending is the ending of another test story. Stories are drawn once
from a fixed seed and split by story: test, validation, then training stories (every text
distinct, so held-out stories are in no training corpus). `world_hash` fingerprints the texts,
so a teacher pretrained on one world refuses another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from typing import Literal

from ..errors import ConfigError

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
    wrong: str  # sSC's wrong ending: `decoy` in place of the right word
    decoy: str  # stranger stories: a name the story never mentions; binding stories: the
    #             other person's place / worker / item (or the other person), which it does;
    #             scene stories: the other scene's word(s) in the wrong ending

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
    kind: Literal["stranger", "binding", "scene"] = "scene"  # which sSC the stories are built for

    def validate(self):
        if self.test < 2 or self.validation < 2 or self.train < 1:
            raise ConfigError("world: need test >= 2, validation >= 2 and train >= 1 stories")
        if self.kind not in KINDS:
            raise ConfigError(f"world.kind: {self.kind!r} is not one of {list(KINDS)}")


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


def _balanced(n: int, rng: random.Random, templates: int = len(TEMPLATES)) -> list[tuple[int, int]]:
    """n (template, scene) pairs cycling through templates and, per template, through scenes."""
    per_template = [rng.sample(range(len(SCENES)), len(SCENES)) for _ in range(templates)]
    return [
        (k % templates, per_template[k % templates][(k // templates) % len(SCENES)])
        for k in range(n)
    ]


ALL_TEMPLATES = tuple(range(len(TEMPLATES)))


def _template_split(
    name, n, rng, seen, total, wrong_ending, fits=None, templates=ALL_TEMPLATES
) -> list[Story]:
    """One split of stories on `templates` (TEMPLATES indices; one scene, one or two people);
    `wrong_ending(rng, template, scene, people, time)` gives sSC's (wrong ending, decoy);
    `fits(template, scene, context)`, if given, must accept a story's draw (else redrawn)."""
    combos = (
        _balanced(n, rng, len(templates))
        if name != "train"
        else [(rng.randrange(len(templates)), rng.randrange(len(SCENES))) for _ in range(n)]
    )
    stories = []
    for index, scene in combos:
        template = templates[index]
        for _ in range(1000):
            people = tuple(rng.sample(NAMES, 2))
            time = rng.choice(TIMES)
            context, ending = _fill(template, scene, people, time)
            text = " ".join((*context, ending))
            if text not in seen and (fits is None or fits(template, scene, context)):
                break
        else:
            _too_many(total)
        seen.add(text)
        wrong, decoy = wrong_ending(rng, template, scene, people, time)
        stories.append(
            Story(
                f"{PREFIX[name]}{len(stories):04d}",
                template,
                scene,
                people,
                context,
                ending,
                wrong,
                decoy,
            )
        )
    return stories


def _stranger_wrong(rng, template, scene, people, time):
    """The ending's first person swapped for someone the story never mentions (copying names
    from the context solves it)."""
    stranger = rng.choice([x for x in NAMES if x not in people])
    swapped = dict(zip("AB", people), **{ending_person(template): stranger})
    return _fill(template, scene, (swapped["A"], swapped["B"]), time)[1], stranger


SLOTS = ("place", "worker", "item")


def new_slots(template: int) -> tuple[str, ...]:
    """The scene slots a template's ending names and its context does not."""
    context, ending = TEMPLATES[template]
    said = " ".join(context)
    return tuple(k for k in SLOTS if "{" + k + "}" in ending and "{" + k + "}" not in said)


# Scene stories use the templates whose ending names only scene words the context does not
# say: an ending that also repeats one (the worker, then the place) would pair a right
# ending's two words from one scene against a wrong ending's from two, given away without
# the story.
SCENE_TEMPLATES = tuple(
    t
    for t, (_, ending) in enumerate(TEMPLATES)
    if set(new_slots(t)) == {k for k in SLOTS if "{" + k + "}" in ending}
)


def _unsaid(template: int, scene: int, context) -> bool:
    """None of the scene's words for the ending's new slots occurs in the context (a time of
    day can say one: "before school")."""
    said = set(words_of(" ".join(context)))
    return not any(set(words_of(SCENES[scene][SLOTS.index(k)])) & said for k in new_slots(template))


def _scene_wrong(rng, template, scene, people, time):
    """The ending's new scene words (those the context does not say) taken from another
    scene: the same people, the same sentence, words the story never says in either ending."""
    context = _fill(template, scene, people, time)[0]
    other = rng.choice(
        [x for x in range(len(SCENES)) if x != scene and _unsaid(template, x, context)]
    )
    new = new_slots(template)
    words = {k: SCENES[other if k in new else scene][i] for i, k in enumerate(SLOTS)}
    ending = TEMPLATES[template][1]
    wrong = ending.format(A=people[0], B=people[1], time=time, **words)
    return wrong, " ".join(words[k] for k in new)


def mirror(story: Story) -> Story:
    """A scene story told of its wrong ending's scene: the same template, people and time, the
    context filled from the other scene, `story.wrong` its right ending and `story.ending` its
    wrong one. A story and its mirror hold the same two endings, right once and wrong once, so
    whatever scores an ending without the story wins exactly one of the two pairs."""
    new = new_slots(story.template)
    other = next(
        i
        for i, sc in enumerate(SCENES)
        if " ".join(sc[SLOTS.index(k)] for k in new) == story.decoy and i != story.scene
    )
    people = story.people
    time = next(
        t for t in TIMES if _fill(story.template, story.scene, people, t)[0] == story.context
    )
    context, ending = _fill(story.template, other, people, time)
    assert ending == story.wrong, (ending, story.wrong)
    decoy = " ".join(SCENES[story.scene][SLOTS.index(k)] for k in new)
    return Story(
        story.id + "m", story.template, other, people, context, ending, story.ending, decoy
    )


def mirrored(world: dict[str, list[Story]], split: str, kind: str) -> list[Story | None] | None:
    """For a scene world (`kind`), the mirror of each story of `split`, or None where the
    mirror's text is a story of any split (a training story's would leak its answer) or its
    context says the story's own scene word (a time of day can: "before school"); for other
    kinds None (their sSC has no mirrors)."""
    if kind != "scene":
        return None
    texts = {s.text for stories in world.values() for s in stories}
    out: list[Story | None] = []
    for story in world[split]:
        m = mirror(story)
        fits = m.text not in texts and _unsaid(m.template, story.scene, m.context)
        out.append(m if fits else None)
    return out


def _stranger_split(name: str, n: int, rng: random.Random, seen: set, total: int) -> list[Story]:
    """Name-swap stories (the first world's sSC)."""
    return _template_split(name, n, rng, seen, total, _stranger_wrong)


def _scene_split(name: str, n: int, rng: random.Random, seen: set, total: int) -> list[Story]:
    """Scene stories: sSC asks which scene's words continue the story."""
    return _template_split(name, n, rng, seen, total, _scene_wrong, _unsaid, SCENE_TEMPLATES)


# Binding stories: each of two people is bound to one scene's place, worker or item; the ending
# says something new about one binding, in words the context never uses together:
#   relation: (context sentence, ending asking for the value, ending asking for the person)
BINDINGS = (
    (
        "place",
        "{P} went to the {v}.",
        "Later {P} came back from the {v}.",
        "At the {v}, a friend met {P}.",
    ),
    ("worker", "{P} talked to the {v}.", "{P} said goodbye to the {v}.", "The {v} waved at {P}."),
    ("item", "{P} got the {v}.", "{P} was very happy with the {v}.", "The {v} made {P} smile."),
)
FILLER = "It was {time}."


def _binding_split(name: str, n: int, rng: random.Random, seen: set, total: int) -> list[Story]:
    """One split of binding stories. sSC's wrong ending swaps in the *other* binding's value
    (or person), which the story does mention: both endings hold the same words but one, each
    word occurs in the context, in the same position of a sentence of the same shape. Only a
    model that knows which person went where can tell them apart; copying cannot.

    Template t = 2 * relation + direction (0: the ending asks for the value, 1: the person);
    held-out splits cycle through templates and, per template, through scenes."""
    n_templates = 2 * len(BINDINGS)
    combos = (
        _balanced(n, rng, n_templates)
        if name != "train"
        else [(rng.randrange(n_templates), rng.randrange(len(SCENES))) for _ in range(n)]
    )
    stories = []
    for template, scene in combos:
        relation, direction = divmod(template, 2)
        _, bind, ask_value, ask_person = BINDINGS[relation]
        for _ in range(1000):
            people = tuple(rng.sample(NAMES, 2))
            other_scene = rng.choice([x for x in range(len(SCENES)) if x != scene])
            asked = rng.randrange(2)  # which person the ending is about (0: A, 1: B)
            filler_at = rng.randrange(3)
            time = rng.choice(TIMES)
            scenes = (scene, other_scene) if asked == 0 else (other_scene, scene)
            values = [SCENES[sc][relation] for sc in scenes]
            context = [bind.format(P=p, v=v) for p, v in zip(people, values)]
            context.insert(filler_at, _capital(FILLER.format(time=time)))
            person, value = people[asked], values[asked]
            if direction == 0:
                ending = ask_value.format(P=person, v=value)
                decoy = values[1 - asked]
                wrong = ask_value.format(P=person, v=decoy)
            else:
                ending = _capital(ask_person.format(P=person, v=value))
                decoy = people[1 - asked]
                wrong = _capital(ask_person.format(P=decoy, v=value))
            text = " ".join((*context, ending))
            if text not in seen:
                break
        else:
            _too_many(total)
        seen.add(text)
        stories.append(
            Story(
                f"{PREFIX[name]}{len(stories):04d}",
                template,
                scene,
                people,
                tuple(context),
                ending,
                wrong,
                decoy,
            )
        )
    return stories


def _capital(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _too_many(total: int):
    raise ConfigError(
        f"world: cannot draw {total} distinct stories (world.test + world.validation + "
        "world.train); ask for fewer"
    )


KINDS = {"stranger": _stranger_split, "binding": _binding_split, "scene": _scene_split}
PREFIX = {"test": "test", "validation": "valid", "train": "train"}


def make_world(splits: WorldSplits = WorldSplits()) -> dict[str, list[Story]]:
    """{"test", "validation", "train"}: distinct stories of `splits.kind`; test and validation
    stories cycle through every template and scene."""
    splits.validate()
    rng = random.Random(splits.seed)
    total = splits.test + splits.validation + splits.train
    seen: set[str] = set()
    return {
        name: KINDS[splits.kind](name, n, rng, seen, total)
        for name, n in (
            ("test", splits.test),
            ("validation", splits.validation),
            ("train", splits.train),
        )
    }


def world_hash(world: dict[str, list[Story]]) -> str:
    """sha256 of every split's story texts and wrong endings, in order."""
    doc = {k: [[s.id, s.text, s.wrong] for s in v] for k, v in sorted(world.items())}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def vocabulary() -> list[str]:
    """Every word the world can say (templates, scenes, names, times) and the non-words."""
    words = set()
    frames = [s for context, ending in TEMPLATES for s in (*context, ending)]
    frames += [s for _, *binding in BINDINGS for s in binding] + [FILLER]
    for s in frames:
        words.update(words_of(re.sub(r"\{\w+\}", " ", s)))
    for group in (*SCENES, NAMES, TIMES):
        for x in group:
            words.update(words_of(x))
    words.update(w for pair in WORD_PAIRS for w in pair)
    return sorted(words)


def word_pairs(vocab: set[str] | None = None) -> list[tuple[str, str]]:
    """(real word, non-word) pairs; with `vocab`, only real words that occur in it."""
    return [(w, n) for w, n in WORD_PAIRS if vocab is None or w in vocab]
