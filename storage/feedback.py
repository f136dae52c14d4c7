"""The feedback prompt set as the service names it: the prompts the style page's round samples are made over.

The engine owns the set (`trainer.feedback.FEEDBACK_CONTENTS`, with why these contents); storage may not import
trainer/, so the API's copy lives here and `tests/test_api_rounds.py` keeps the two equal.
"""

from __future__ import annotations

FEEDBACK_CONTENTS: tuple[str, ...] = (
    "A chihuahua", "A tabby cat walking on the street", "An apple on the table", "A church in the mountain",
    "A cabin on the beach", "A bear", "A penguin standing on ice", "A horse in a field", "An owl on a branch",
    "A goldfish in a bowl", "A cup of coffee", "A vase of flowers", "A pair of boots", "A guitar", "A teapot",
    "A lighthouse on a cliff", "A castle", "A bridge over a river", "A city street at night", "A windmill",
    "A waterfall in the forest", "A snowy mountain", "A desert with cacti", "A sunflower field",
    "An old man reading a book", "A child flying a kite", "A woman riding a bicycle", "A sailboat on the sea",
    "A steam train", "A hot air balloon",
)


def feedback_prompts(descriptor: str) -> list[str]:
    """"<content> in <descriptor> style" for every content (the engine's `training_prompt` form)."""
    d = descriptor.strip()
    if d.lower().endswith(" style"):
        d = d[: -len(" style")].rstrip()
    return [f"{c} in {d} style" for c in FEEDBACK_CONTENTS]
