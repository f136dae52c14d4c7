"""The prompt rules the engine and the service share: StyleDrop's prompt form and the feedback prompt set.

Training captions, a new version's previews (and the scores made from them), a round's samples and the automatic
round's candidates all build their prompts here, so a descriptor that already ends in "style" reads the same
everywhere ("a cat in watercolor style", never "... style style").
"""

from __future__ import annotations

from collections.abc import Sequence

# The feedback prompt set: "<content> in <descriptor> style", 30 contents. The first five are the paper's own
# examples (appendix: "A chihuahua {}", "A tabby cat walking on the street {}", ...); the other 25 are ours, in the
# same pattern, spread over animals, objects, buildings, landscapes, people and vehicles so that no single kind of
# content dominates what round 2 learns.
FEEDBACK_CONTENTS: tuple[str, ...] = (
    "A chihuahua",
    "A tabby cat walking on the street",
    "An apple on the table",
    "A church in the mountain",
    "A cabin on the beach",
    "A bear",
    "A penguin standing on ice",
    "A horse in a field",
    "An owl on a branch",
    "A goldfish in a bowl",
    "A cup of coffee",
    "A vase of flowers",
    "A pair of boots",
    "A guitar",
    "A teapot",
    "A lighthouse on a cliff",
    "A castle",
    "A bridge over a river",
    "A city street at night",
    "A windmill",
    "A waterfall in the forest",
    "A snowy mountain",
    "A desert with cacti",
    "A sunflower field",
    "An old man reading a book",
    "A child flying a kite",
    "A woman riding a bicycle",
    "A sailboat on the sea",
    "A steam train",
    "A hot air balloon",
)


def training_prompt(descriptor: str, content: str | None = None) -> str:
    """StyleDrop's prompt form "⟨content⟩ in ⟨style descriptor⟩ style" (arXiv 2306.00983, §3); a descriptor that
    already ends in "style" is not given a second one."""
    descriptor = descriptor.strip()
    if descriptor.lower().endswith(" style"):
        descriptor = descriptor[: -len(" style")].rstrip()
    subject = (content or "").strip() or "an image"
    return f"{subject} in {descriptor} style"


def feedback_prompts(descriptor: str, contents: Sequence[str] = FEEDBACK_CONTENTS) -> list[str]:
    """The prompt set for `descriptor`: "A chihuahua in watercolor painting style", ... (one per content)."""
    if not descriptor.strip():
        raise ValueError("descriptor must not be empty")
    return [training_prompt(descriptor, c) for c in contents]
