"""Everyday instruction prompts for the SmolLM2 setting (model=smollm2 data=smollm2).

The project owns these prompts: short, everyday requests (definitions, explanations,
lists, rewrites, comparisons, tips, classification, opposites, short messages,
one-line summaries) built from templates with varied slots. Every request asks for a
short answer, so that a 135M teacher finishes its answers within a few dozen tokens
on a CPU.

``make_prompt_splits(seed)`` gives deterministic, disjoint ``train`` / ``valid`` /
``test`` lists of ``{"instruction", "category"}`` records; no instruction occurs twice.
There are no reference answers: the teacher's responses are the labels
(``distillm generate-student generate=teacher``).

``write_prompt_files(out_dir, tokenizer)`` renders each instruction as one user turn
with the tokenizer's chat template and writes ``train.jsonl`` / ``valid.jsonl`` /
``test.jsonl`` with a ``prompt`` field, the form the data loader uses verbatim.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

# Sizes of the shipped splits (at least 300 prompts in all, held-out test set).
SPLIT_SIZES: dict[str, int] = {"test": 60, "valid": 16, "train": 324}

# ----------------------------------------------------------------------------- slots
WORDS_TO_DEFINE = (
    "umbrella", "library", "volcano", "recipe", "passport", "orchestra", "harvest", "compass", "battery",
    "bakery", "glacier", "thermometer", "newspaper", "museum", "calendar", "ladder", "telescope", "vaccine",
    "budget", "festival", "microscope", "island", "desert", "neighbour", "password", "bicycle", "keyboard",
    "satellite", "hospital", "vitamin", "forest", "election", "recycling", "planet", "rainbow", "dictionary",
    "alarm clock", "lighthouse", "savings account", "pharmacy", "habit", "deadline", "hobby", "interview",
    "journey", "kindness", "curiosity", "patience", "courage", "friendship", "vacation", "weekend",
    "breakfast", "garden", "airport", "bridge", "candle", "mirror", "pillow", "sandwich",
)

TOPICS = (
    "why the sky is blue", "how a refrigerator keeps food cold", "why we need sleep", "how rain forms",
    "why leaves change colour in autumn", "how a bicycle stays upright", "why bread rises",
    "how a compass works", "why the moon has phases", "how plants make food from sunlight",
    "why we should drink water", "how a vaccine protects people", "why ice floats on water",
    "how a rainbow appears", "why exercise is good for the heart", "how bees make honey",
    "why the sea is salty", "how a thermometer measures temperature", "why we have seasons",
    "how recycling helps the environment", "why cats purr", "how a battery stores energy",
    "why birds fly south in winter", "how a library organises its books", "why we brush our teeth",
    "how an airplane stays in the air", "why it is colder on a mountain top", "how soap cleans our hands",
    "why the stars twinkle", "how a seed grows into a plant", "why saving money is useful",
    "how a microwave heats food", "why some animals hibernate", "how wind is created",
    "why the heart beats faster when we run", "how a camera takes a picture", "why we feel thirsty",
    "how clouds stay in the sky", "why reading is good for the mind", "how a volcano erupts",
)

LIST_THINGS = (
    "fruits that are rich in vitamin C", "ways to save water at home", "animals that live in the ocean",
    "things to pack for a beach trip", "healthy breakfast ideas", "ways to reduce stress",
    "indoor activities for a rainy day", "vegetables that grow well in a small garden",
    "tips for a good night's sleep", "musical instruments with strings", "ways to be kind to a neighbour",
    "things you can recycle", "games children can play outside", "colours of the rainbow",
    "ways to stay warm in winter", "simple exercises you can do at home", "uses for a lemon",
    "things to bring to a picnic", "ways to learn a new language", "kitchen tools every cook needs",
    "birds that cannot fly", "ways to save energy at home", "reasons to keep a diary",
    "things that make a good friend", "ways to stay focused while studying", "popular pets",
    "hobbies that cost little money", "planets in our solar system", "safety rules for riding a bike",
    "foods that contain a lot of protein", "ways to welcome a new classmate", "jobs that help other people",
    "things you can do to help the environment", "winter sports", "parts of a flower",
    "questions to ask at a job interview", "ways to make a small room feel bigger",
    "snacks that are good for you", "ways to spend a sunny afternoon", "habits of tidy people",
)

LIST_COUNTS = ("three", "four", "five")

SENTENCES = (
    "the meeting got moved to friday because lots of people cant come",
    "I think the movie was kind of boring but the music was good",
    "we was going to the park yesterday when it started raining",
    "Please send me the report as soon as you possibly can.",
    "The cat sat on the warm windowsill and watched the birds outside.",
    "our team did a really great job on the project this year",
    "He don't like eating vegetables, especially broccoli.",
    "The train was late again, so I missed the start of the concert.",
    "can you tell me where the nearest train station is",
    "I am very sorry for being late to the meeting this morning.",
    "The new cafe on the corner sells the best coffee in town.",
    "she have finished her homework before dinner",
    "The weather today is sunny with a light breeze from the west.",
    "I would like to order a large pizza with extra cheese.",
    "the children played football in the garden until it got dark",
    "Thank you so much for helping me move into my new flat.",
    "The library will be closed on Monday for the public holiday.",
    "my brother and me went fishing at the lake last weekend",
    "This phone is cheap, but the battery does not last very long.",
    "We need to buy milk, eggs and bread before the shop closes.",
    "The museum has a new exhibition about ancient Egypt.",
    "i cant find my keys anywhere, have you seen them",
    "The students listened carefully while the teacher explained the lesson.",
    "Our flight leaves at six in the morning, so we must wake up early.",
    "The garden looks beautiful now that the roses are in bloom.",
    "He finished the marathon even though his legs were very tired.",
    "the food at the restaurant was ok but the service was really slow",
    "Please remember to turn off the lights when you leave the room.",
    "The dog barked loudly when the postman knocked on the door.",
    "It is important to drink enough water on a hot day.",
)

REWRITES = (
    "Rewrite this sentence in a more formal tone: {s}",
    "Correct the grammar and spelling of this sentence: {s}",
    "Make this sentence shorter without changing its meaning: {s}",
    "Rewrite this sentence in a friendly, casual tone: {s}",
    "Rewrite this sentence in the past tense: {s}",
    "Rewrite this sentence so that a young child can understand it: {s}",
)

PAIRS = (
    ("weather", "climate"), ("a virus", "a bacterium"), ("a lake", "a sea"), ("a town", "a city"),
    ("a fruit", "a vegetable"), ("a frog", "a toad"), ("a crocodile", "an alligator"), ("jam", "jelly"),
    ("a hurricane", "a tornado"), ("a laptop", "a tablet"), ("a rabbit", "a hare"), ("a star", "a planet"),
    ("baking", "frying"), ("a poem", "a story"), ("a moth", "a butterfly"), ("a hill", "a mountain"),
    ("speed", "velocity"), ("a library", "a bookshop"), ("a doctor", "a nurse"), ("coffee", "tea"),
    ("a violin", "a cello"), ("saving", "investing"), ("a river", "a stream"), ("an ocean", "a sea"),
    ("a cold", "the flu"), ("a debit card", "a credit card"), ("a bee", "a wasp"), ("a cup", "a mug"),
)

COMPARES = (
    "What is the difference between {a} and {b}? Answer in two sentences.",
    "Explain briefly how {a} differs from {b}.",
    "In one sentence, what is one difference between {a} and {b}?",
)

ACTIVITIES = (
    "learning to cook", "keeping a plant alive indoors", "running your first five kilometres",
    "studying for an exam", "making new friends in a new city", "saving money each month",
    "writing a clear email", "giving a short speech", "taking better photos with a phone",
    "staying healthy during winter", "keeping a tidy desk", "learning to play the guitar",
    "waking up early", "packing a suitcase", "planting tomatoes", "reading more books",
    "drinking more water", "staying calm before a test", "training a puppy", "cooking rice",
    "working from home", "riding a bike in the city", "making a good first impression",
    "keeping a conversation going", "organising a birthday party", "walking in the mountains",
    "caring for a cat", "making a budget", "remembering names", "spending less time on the phone",
)

TIPS = (
    "Give two tips for {x}.",
    "What are three simple tips for {x}? Keep each tip short.",
    "Give me one piece of advice for {x}, in one sentence.",
)

ANIMALS = (
    "dolphin", "eagle", "salmon", "crocodile", "bat", "penguin", "shark", "frog", "butterfly", "whale",
    "ostrich", "turtle", "ant", "owl", "snake", "horse", "tuna", "spider", "bee", "lizard", "seal",
    "parrot", "goldfish", "kangaroo", "ladybird", "duck", "tortoise", "camel", "octopus", "chicken",
)

OBJECTS_TO_SORT = (
    ("apple", "fruit or vegetable"), ("carrot", "fruit or vegetable"), ("tomato", "fruit or vegetable"),
    ("banana", "fruit or vegetable"), ("spinach", "fruit or vegetable"), ("grape", "fruit or vegetable"),
    ("hammer", "tool or toy"), ("kite", "tool or toy"), ("screwdriver", "tool or toy"), ("doll", "tool or toy"),
    ("Paris", "city or country"), ("Brazil", "city or country"), ("Tokyo", "city or country"),
    ("Kenya", "city or country"), ("Madrid", "city or country"), ("Canada", "city or country"),
    ("ice", "solid, liquid or gas"), ("steam", "solid, liquid or gas"), ("milk", "solid, liquid or gas"),
    ("stone", "solid, liquid or gas"), ("oxygen", "solid, liquid or gas"), ("honey", "solid, liquid or gas"),
)

OPPOSITE_WORDS = (
    "hot", "happy", "early", "strong", "quiet", "generous", "ancient", "empty", "bright", "brave", "rough",
    "shallow", "polite", "cheap", "narrow", "heavy", "tidy", "honest", "fast", "simple", "loud", "wet",
    "safe", "begin", "accept", "remember", "increase", "arrive", "buy", "win",
)

WORD_TASKS = (
    "What is the opposite of the word '{w}'? Answer with one word.",
    "Give a synonym for the word '{w}'.",
    "Use the word '{w}' in a short sentence.",
)

RECIPIENTS = ("a friend", "a coworker", "your neighbour", "your teacher", "your grandmother", "a classmate",
              "your manager", "your sister")
OCCASIONS = ("to say thank you for a birthday gift", "to congratulate them on a new job",
             "to invite them to dinner on Saturday", "to say sorry for missing their party",
             "to wish them a quick recovery", "to ask if they can help you move on Sunday",
             "to wish them good luck in an exam", "to tell them you will be ten minutes late")

PASSAGES = (
    "The town library opened a new reading room this week. It has comfortable chairs, large windows and "
    "shelves full of books for children. Visitors can borrow up to five books at a time.",
    "Tomatoes grow best in warm, sunny places. They need regular watering, but too much water can damage "
    "the roots. Most plants give fruit about two months after planting.",
    "Maria started running three times a week in January. At first she could only run for ten minutes. "
    "By June she finished her first ten-kilometre race.",
    "The city will close the main bridge for repairs during August. Buses will take a longer route, and "
    "drivers are asked to use the northern road instead.",
    "Honeybees live in large groups called colonies. Worker bees collect nectar from flowers and turn it "
    "into honey, which feeds the colony through the winter.",
    "Our school held a bake sale on Friday. Students sold cakes, cookies and bread, and the money will pay "
    "for new books for the library.",
    "Walking for thirty minutes a day can improve your mood and your heart health. It needs no special "
    "equipment, and you can do it almost anywhere.",
    "The museum's new exhibition shows tools and jewellery from ancient Egypt. It is open every day except "
    "Monday, and entry is free for children.",
    "A storm passed over the coast last night. Strong winds knocked down several trees, but nobody was hurt, "
    "and power returned by the morning.",
    "Sam forgot his umbrella and got wet on the way to work. His colleague lent him a dry shirt, and he "
    "promised to check the weather forecast next time.",
    "Recycling paper saves trees and energy. Clean paper and cardboard can be turned into new boxes, "
    "newspapers and notebooks.",
    "The bakery on Green Street now opens at six in the morning. It sells fresh bread, pastries and coffee, "
    "and it gives a discount to students.",
)

SUMMARIES = (
    "Summarise this text in one sentence: {p}",
    "What is the main point of this text? Answer in one sentence. Text: {p}",
)


# ----------------------------------------------------------------------- generation
def _all_instructions() -> list[dict]:
    """Every instruction the templates can make, grouped by category (deterministic order)."""
    out: list[dict] = []

    def add(category: str, text: str) -> None:
        out.append({"instruction": text, "category": category})

    for word in WORDS_TO_DEFINE:
        add("definition", f"What does the word '{word}' mean? Answer in one sentence.")
        add("definition", f"Give a short definition of '{word}' for a ten-year-old.")
    for topic in TOPICS:
        add("explanation", f"Explain {topic} in two sentences.")
        add("explanation", f"In simple words, explain {topic}. Keep it short.")
    for things in LIST_THINGS:
        for count in LIST_COUNTS:
            add("list", f"List {count} {things}.")
    for template in REWRITES:
        for sentence in SENTENCES:
            add("rewrite", template.format(s=sentence))
    for template in COMPARES:
        for a, b in PAIRS:
            add("comparison", template.format(a=a, b=b))
    for template in TIPS:
        for activity in ACTIVITIES:
            add("advice", template.format(x=activity))
    for animal in ANIMALS:
        add("classification", f"Is a {animal} a mammal, a bird, a fish, a reptile, an amphibian or an insect? "
                              "Answer in one short sentence.")
    for thing, choices in OBJECTS_TO_SORT:
        add("classification", f"Is '{thing}' a {choices}? Answer in a few words.")
    for template in WORD_TASKS:
        for word in OPPOSITE_WORDS:
            add("words", template.format(w=word))
    for recipient in RECIPIENTS:
        for occasion in OCCASIONS:
            add("message", f"Write a short, friendly message to {recipient} {occasion}. Use at most two sentences.")
    for template in SUMMARIES:
        for passage in PASSAGES:
            add("summary", template.format(p=passage))
    return out


def make_prompt_splits(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Disjoint train/valid/test prompt lists, balanced over the categories.

    Categories take turns (round robin over a seeded shuffle of each category), so
    every split holds every kind of request in about the same share.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    rng = random.Random(seed)
    by_category: dict[str, list[dict]] = {}
    for record in _all_instructions():
        by_category.setdefault(record["category"], []).append(record)
    for records in by_category.values():
        rng.shuffle(records)
    interleaved: list[dict] = []
    depth = max(len(r) for r in by_category.values())
    for i in range(depth):
        for category in sorted(by_category):
            if i < len(by_category[category]):
                interleaved.append(by_category[category][i])
    total = sum(sizes.values())
    if total > len(interleaved):
        raise ValueError(f"asked for {total} prompts; the templates make {len(interleaved)}")
    splits, start = {}, 0
    for name, size in sizes.items():  # test first: growing train never changes the test set
        splits[name] = interleaved[start:start + size]
        start += size
    return splits


def chat_prompt(tokenizer, instruction: str) -> str:
    """One user turn in the tokenizer's chat template, ending where the assistant answers."""
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def write_prompt_files(out_dir: str | Path, tokenizer, seed: int = 0) -> dict[str, Path]:
    """train/valid/test.jsonl with chat-rendered prompts (written atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, records in make_prompt_splits(seed).items():
        path = out_dir / f"{name}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({"prompt": chat_prompt(tokenizer, record["instruction"]), **record}) + "\n")
        tmp.replace(path)
        paths[name] = path
    return paths


if __name__ == "__main__":
    splits = make_prompt_splits()
    for split_name, split_records in splits.items():
        print(f"{split_name}: {len(split_records)} prompts")
    for split_record in splits["test"][:12]:
        print(f"  [{split_record['category']}] {split_record['instruction']}")
