"""Bundled text of the demo, written for this project: short stories with a correct and a wrong
ending (spoken story cloze), and real words paired with made-up non-words (a spoken word test).

Each story is a few context sentences and an ending. The topic test (tSC) takes the ending of
another story as the wrong one. Two kinds of story:
  hand-written (`stories()`, 30)  the wrong ending is plausible English that contradicts the story;
  generated (`generated_stories(n)`)  six templates filled with people, a coloured object and a
      place; the wrong ending is the same sentence about people, an object, a colour and a place
      that are all absent from the story, so only tracking who and what the story is about can
      tell the two apart. Thirty stories cannot teach a toy model what a story means; hundreds
      of generated ones can teach it to follow entities, which is what the cloze tests then probe.
"""
from __future__ import annotations

import dataclasses
import random
import re


@dataclasses.dataclass(frozen=True)
class Story:
    id: str
    context: tuple[str, ...]
    ending: str
    wrong: str

    @property
    def sentences(self) -> tuple[str, ...]:
        return (*self.context, self.ending)


_RAW = [
    (["Tom had a red kite.", "One windy day he took it to the park.",
      "The wind pulled the kite high into the sky.", "Then the string slipped out of his hand."],
     "Tom ran after his red kite and caught it by the old tree.",
     "Tom sat down and ate a big bowl of soup at home."),
    (["Anna wanted to bake a cake for her mother.", "She bought eggs, milk and flour at the shop.",
      "She mixed everything in a big bowl.", "Then she put the cake in the oven."],
     "Her mother smiled when Anna gave her the warm cake.",
     "Anna forgot the cake and went swimming in the lake."),
    (["Ben found a small dog in the rain.", "The dog was cold and very hungry.",
      "Ben carried the dog to his house.", "He gave it water and a warm blanket."],
     "The little dog slept next to Ben all night.",
     "Ben threw the blanket away and bought a new car."),
    (["Lucy planted seeds in her garden.", "Every morning she gave them water.",
      "After a few weeks small green leaves came up.", "By summer the garden was full of flowers."],
     "Lucy picked the flowers and put them on the kitchen table.",
     "Lucy never saw a single plant in her garden."),
    (["Sam lost his blue hat at school.", "He looked in the classroom and in the hall.",
      "His friend Max helped him search the playground.", "They checked under every bench."],
     "At last Max found the blue hat under the slide.",
     "Sam decided he hated hats and sold his bike."),
    (["Mia was learning to ride a bike.", "Her father held the seat while she pedaled.",
      "She fell down twice and hurt her knee.", "But she kept trying every evening."],
     "On Friday Mia rode her bike all the way down the street.",
     "Mia gave up and never touched a bike again."),
    (["Jack wanted to catch a fish.", "He went to the river with his uncle.",
      "They waited for hours in the sun.", "Suddenly the line began to pull."],
     "Jack reeled in a big silver fish and laughed.",
     "Jack went to the library and read about trains."),
    (["Emma had a test on Monday.", "She studied her notes every night.",
      "Her brother asked her questions at dinner.", "On Monday she felt ready."],
     "Emma got the best mark in her class on the test.",
     "Emma stayed in bed and missed the whole week."),
    (["The old clock in the hall stopped.", "Grandpa opened the back of the clock.",
      "He found a broken spring inside.", "He bought a new spring at the market."],
     "Soon the old clock was ticking again in the hall.",
     "Grandpa painted the fence green and went to sleep."),
    (["Leo was hungry after football.", "He opened the fridge but it was empty.",
      "So he walked to the shop with his sister.", "They bought bread, cheese and tomatoes."],
     "Back home Leo made a big sandwich and ate it all.",
     "Leo decided to sleep on the roof of the shop."),
    (["Nora heard a strange noise in the attic.", "She climbed the stairs with a lamp.",
      "Something moved behind an old box.", "She looked closer and saw two bright eyes."],
     "It was only her cat, who had been hiding in the attic.",
     "Nora ran to the beach and built a sand castle."),
    (["Max wanted a pet fish.", "He saved his coins for many weeks.",
      "At last he had enough money.", "He went to the pet shop with his mother."],
     "Max came home with a small orange fish in a bowl.",
     "Max bought a heavy hammer and fixed the roof."),
    (["It snowed all night in the village.", "In the morning the roads were white.",
      "The children put on their coats and boots.", "They rolled three big balls of snow."],
     "The children built a tall snowman with a carrot nose.",
     "The children went swimming in the warm sea."),
    (["Kate broke her mother's blue vase.", "She felt very bad about it.",
      "She thought about hiding the pieces.", "Instead she went to find her mother."],
     "Kate told her mother the truth and said she was sorry.",
     "Kate climbed a mountain and never came back."),
    (["Paul wanted to win the race.", "He ran in the park every morning.",
      "He ate good food and slept early.", "On the day of the race the sun was shining."],
     "Paul crossed the line first and won the race.",
     "Paul stayed home and watched a film about cats."),
    (["The baby bird fell from its nest.", "Lily saw it on the grass below the tree.",
      "She carefully picked the bird up.", "Her father brought a ladder from the shed."],
     "Lily put the baby bird back in its nest.",
     "Lily ate the ladder and flew to the moon."),
    (["Dan forgot his lunch at home.", "At noon his stomach was empty.",
      "His friend Amy saw that he was sad.", "She opened her lunch box."],
     "Amy shared her apple and her bread with Dan.",
     "Dan bought a new coat and went skiing."),
    (["Rosa wanted to paint her room yellow.", "She moved the bed to the middle of the room.",
      "She covered the floor with old paper.", "Then she opened a can of yellow paint."],
     "By evening Rosa's room was bright and yellow.",
     "Rosa painted the dog blue and left the house."),
    (["The power went out during the storm.", "The house became dark and quiet.",
      "Father found some candles in a drawer.", "The family sat together in the kitchen."],
     "They told stories by candle light until the power came back.",
     "They planted tomatoes in the snow and went to school."),
    (["Tim saw an old man drop his bag.", "Apples rolled all over the street.",
      "Tim ran across to help him.", "Together they picked up every apple."],
     "The old man thanked Tim and gave him a red apple.",
     "Tim kicked the apples into the river and laughed."),
    (["Sara wanted to learn the piano.", "Her aunt gave her lessons every Sunday.",
      "At first her fingers were slow.", "She practiced a little every day."],
     "After a year Sara played a song for the whole family.",
     "Sara sold the piano and bought a horse."),
    (["Alex missed the bus to school.", "The next bus was in one hour.",
      "He did not want to be late.", "So he took his bike from the garage."],
     "Alex rode his bike fast and arrived just in time.",
     "Alex went back to bed and dreamed about cake."),
    (["Ella found a wallet on the train.", "Inside there was money and a card with a name.",
      "She called the number on the card.", "A man answered and sounded worried."],
     "Ella gave the wallet back to the man at the station.",
     "Ella kept the money and bought a boat."),
    (["The garden gate was open.", "The goat walked out onto the road.",
      "Farmer Joe heard the cars stop.", "He ran out with a rope."],
     "Joe led the goat back into the garden and closed the gate.",
     "Joe let the goat drive his car to town."),
    (["Mary wanted to see the stars.", "She waited until the sky was dark.",
      "She carried a blanket to the top of the hill.", "There were no clouds that night."],
     "Mary lay on the blanket and counted the bright stars.",
     "Mary stayed in the basement and cleaned the floor."),
    (["Peter's shoes were too small.", "His toes hurt when he walked.",
      "His mother took him to the shoe shop.", "He tried on many pairs."],
     "Peter walked home happy in new shoes that fit.",
     "Peter decided to wear a hat on his feet."),
    (["The class went to the zoo.", "They saw lions, bears and monkeys.",
      "The monkeys jumped and made funny faces.", "Ava laughed at the monkeys all afternoon."],
     "On the bus home Ava drew a picture of the funny monkeys.",
     "Ava said she had never seen an animal in her life."),
    (["Omar's grandmother was sick.", "He wanted to make her feel better.",
      "He picked flowers from the field.", "He made a card with a bright sun on it."],
     "Grandmother smiled when Omar gave her the card and the flowers.",
     "Omar threw the card in the bin and played games."),
    (["The milk in the fridge smelled bad.", "Mom checked the date on the bottle.",
      "It was two weeks old.", "She poured it down the sink."],
     "Then she wrote milk on the shopping list.",
     "Then she drank the whole bottle with a smile."),
    (["Jake built a sand castle at the beach.", "It had four towers and a wall.",
      "He was very proud of it.", "Then a big wave came in."],
     "The wave washed the castle away and Jake started again.",
     "The castle flew into the sky like a bird."),
    (["Ivy wanted to make new friends.", "She joined the school choir.",
      "On the first day she was shy.", "A girl named Zoe sat next to her."],
     "Ivy and Zoe sang together and became good friends.",
     "Ivy left the choir and never spoke again."),
    (["The family drove to the mountains.", "The road was long and had many turns.",
      "At the top they got out of the car.", "The air was cold and clean."],
     "They looked down at the valley and took many photos.",
     "They jumped into the pool at the hotel in the city."),
    (["Carl wanted to bake bread.", "He mixed flour, water and salt.",
      "He let the dough rest for an hour.", "Then he baked it in a hot oven."],
     "The kitchen smelled of fresh bread and Carl ate a warm slice.",
     "Carl washed his car and went to bed hungry."),
    (["A cat sat outside the window.", "It was raining hard.",
      "Lisa opened the window a little.", "The cat jumped inside and shook its fur."],
     "Lisa dried the wet cat with a towel.",
     "Lisa closed the window and the cat turned into a frog."),
    (["Hugo's team lost the first game.", "The coach told them to keep trying.",
      "They practiced passing every afternoon.", "The next game was on Saturday."],
     "On Saturday Hugo's team played well and won the game.",
     "On Saturday Hugo baked a pie and painted the house."),
    (["The library was very quiet.", "Nina was looking for a book about space.",
      "She asked the librarian for help.", "He showed her a shelf near the window."],
     "Nina found a book about the planets and read it all day.",
     "Nina found a fish and cooked it in the library."),
    (["Ray wanted to climb the tall tree.", "He put his foot on the lowest branch.",
      "Slowly he climbed higher and higher.", "Near the top he could see the whole town."],
     "Ray waved to his friends from the top of the tree.",
     "Ray dug a hole and hid under the ground."),
    (["Ada's phone fell into the pond.", "She reached into the cold water.",
      "Her fingers touched the muddy bottom.", "At last she felt the phone."],
     "Ada pulled the wet phone out and dried it in the sun.",
     "Ada bought a new pond and sold the water."),
    (["The birthday party was on Sunday.", "Mother hung balloons in the living room.",
      "Friends arrived with presents.", "Then the lights went off and everyone sang."],
     "Mother carried in a cake with seven candles for Ben.",
     "Everyone went home and nobody said a word."),
    (["Finn found a map in an old book.", "The map showed a tree with an X next to it.",
      "He found the same tree behind the school.", "He dug a hole next to the tree."],
     "In the hole Finn found a small box of old coins.",
     "Finn forgot about the map and watched the rain."),
    (["Jane had a sore throat.", "She could not stop coughing.",
      "Her mother made her hot tea with honey.", "Jane stayed in bed all day."],
     "The next morning Jane felt much better and went to school.",
     "The next morning Jane sang loudly on the roof in the rain."),
    (["The farmer planted corn in spring.", "There was no rain for many weeks.",
      "The corn began to dry.", "Every evening he carried water to the field."],
     "In autumn the farmer had a good crop of corn.",
     "In autumn the farmer moved to the city and forgot the corn."),
    (["Sophie's kitten climbed onto the roof.", "It was too scared to come down.",
      "Sophie called her neighbor for help.", "He brought a long ladder."],
     "He climbed up and carried the kitten down to Sophie.",
     "He painted the ladder and drove away."),
    (["Eric wanted to make his sister laugh.", "He put on his father's big shoes.",
      "He wore a funny hat and a long coat.", "Then he walked into the kitchen."],
     "His sister laughed so hard that she dropped her spoon.",
     "His sister ran outside and started to cry."),
    (["The teacher gave Clara a plant to take care of.", "Clara put it near the sunny window.",
      "She watered it every Monday.", "Soon it grew new leaves."],
     "The teacher praised Clara for her healthy plant.",
     "The teacher threw the plant into the lake."),
    (["Noah wanted to see the ocean.", "He lived far away in the hills.",
      "One summer his aunt drove him to the coast.", "He heard the waves before he saw them."],
     "Noah ran into the ocean and laughed in the waves.",
     "Noah stayed in the car and played with a stone."),
]

# Real words from the stories, each paired with a made-up non-word that sounds like English.
WORD_PAIRS = [
    ("garden", "gorbin"), ("kitten", "kiltan"), ("window", "windak"), ("morning", "morfing"),
    ("mother", "mosser"), ("father", "fanther"), ("flowers", "flowbers"), ("bread", "brede"),
    ("water", "wabter"), ("school", "schoom"), ("friend", "frind"), ("apple", "apsle"),
    ("ladder", "lagger"), ("blanket", "blonket"), ("market", "markot"), ("castle", "casple"),
    ("candles", "canbles"), ("monkeys", "monkites"), ("bottle", "bottak"), ("ocean", "oshun"),
    ("kitchen", "kitchun"), ("playground", "playgrumb"), ("river", "rimer"), ("summer", "summog"),
    ("evening", "evelling"), ("sandwich", "sanwitch"), ("table", "tabbel"), ("little", "lipple"),
    ("happy", "hoppy"), ("yellow", "yellon"), ("house", "houbs"), ("children", "chilbren"),
    ("money", "monnip"), ("street", "streep"), ("picture", "pictule"), ("birthday", "birthnay"),
    ("dinner", "dinnep"), ("station", "stotion"), ("wallet", "wallop"), ("presents", "presunts"),
]

_WORD_RE = re.compile(r"[a-z']+")


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation, as they are spoken and as the text stream spells them."""
    return [w.strip("'") for w in _WORD_RE.findall(text.lower()) if w.strip("'")]


def stories() -> list[Story]:
    return [Story(f"story{i:02d}", tuple(c), e, w) for i, (c, e, w) in enumerate(_RAW)]


# ---- generated stories: templates x entities ---------------------------------------------------
NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Jack", "Emma", "Max", "Lily", "Leo", "Ruby",
         "Finn", "Nora", "Zoe", "Hugo")
OBJECTS = ("kite", "ball", "hat", "cake", "book", "cup", "boat", "drum", "lamp", "bag", "key",
           "coat", "bottle", "blanket", "picture", "wallet")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "pink", "brown")
PLACES = ("garden", "market", "station", "school", "river", "kitchen", "playground", "castle",
          "beach", "street")
# (context sentences, ending); {A} and {B} are people, {o} an object, {c} its colour, {p} a place.
TEMPLATES = (
    (("{A} had a {c} {o}.", "One day {A} took the {o} to the {p}.",
      "{B} wanted to play with the {o} too."), "So {A} gave the {c} {o} to {B}."),
    (("{A} went to the {p} with {B}.", "They saw a {c} {o} near the door.", "{B} picked up the {o}."),
     "Then {A} and {B} took the {c} {o} home."),
    (("{A} lost a {c} {o} at the {p}.", "{A} asked {B} for help.",
      "They looked everywhere for the {o}."), "At last {B} found the {c} {o} at the {p}."),
    (("{A} made a {c} {o} for {B}.", "It took {A} three days.", "{A} brought the {o} to the {p}."),
     "{B} loved the {c} {o} from {A}."),
    (("{A} and {B} lived near the {p}.", "Every morning they looked at a {o}.",
      "One day {A} painted the {o} {c}."), "{B} said the {c} {o} was the best."),
    (("{A} wanted a {c} {o}.", "{A} saved money for many weeks.", "Then {A} walked to the {p}."),
     "At the {p} {A} bought the {c} {o}."),
)


def _entities(rng: random.Random) -> dict:
    a, b = rng.sample(NAMES, 2)
    return {"A": a, "B": b, "o": rng.choice(OBJECTS), "c": rng.choice(COLOURS),
            "p": rng.choice(PLACES)}


def _disjoint_entities(rng: random.Random, used: dict) -> dict:
    """Entities sharing no person, object, colour or place with `used`."""
    while True:
        e = _entities(rng)
        if ({e["A"], e["B"]}.isdisjoint({used["A"], used["B"]})
                and all(e[k] != used[k] for k in "ocp")):
            return e


def generated_stories(n: int, seed: int = 0) -> list[Story]:
    """`n` distinct template stories (ids gen000, gen001, ...), the same for the same seed."""
    rng = random.Random(seed)
    out, seen = [], set()
    distinct = (len(TEMPLATES) * len(NAMES) * (len(NAMES) - 1) * len(OBJECTS) * len(COLOURS)
                * len(PLACES))
    if n > distinct:
        raise ValueError(f"generated_stories: {n} asked, the templates give at most {distinct} "
                         "distinct stories")
    while len(out) < n:
        k, e = rng.randrange(len(TEMPLATES)), _entities(rng)
        key = (k, *sorted(e.items()))
        if key in seen:
            continue
        seen.add(key)
        context, ending = TEMPLATES[k]
        wrong = ending.format(**_disjoint_entities(rng, e))
        out.append(Story(f"gen{len(out):03d}", tuple(c.format(**e) for c in context),
                         ending.format(**e), wrong))
    return out


def word_pairs(vocabulary: set[str] | None = None) -> list[tuple[str, str]]:
    """(real word, non-word) pairs; with `vocabulary`, only real words that occur in it."""
    return [(w, n) for w, n in WORD_PAIRS if vocabulary is None or w in vocabulary]
