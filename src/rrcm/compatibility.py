"""Does a checkpoint fit a data set? Shape, class count and class names, checked before any work.

A model's output k means "the k-th class it was trained on". Certifying it on a data set whose k-th
class is another one gives a log whose `correct` column is meaningless, with no error anywhere, so
the class names recorded in the checkpoint are compared with the data set's, in order.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import UserError


def check_checkpoint_matches_data(ckpt_config: dict[str, Any], info, checkpoint: str) -> None:
    """Channels, image size and class count of the checkpoint must match the data set."""
    model = ckpt_config["model"]
    expected = {"channels": model.get("in_channels"), "image size": model.get("image_size"),
                "classes": model.get("num_classes")}
    actual = {"channels": info.channels, "image size": info.image_size, "classes": info.num_classes}
    for key in expected:
        if expected[key] is not None and expected[key] != actual[key]:
            raise UserError(f"checkpoint {checkpoint} expects {expected[key]} {key} but the data set has "
                            f"{actual[key]}; certify it on the data it was trained for")


def _shown(names: Sequence[str], limit: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_class_names(recorded: Sequence[str] | None, actual: Sequence[str], checkpoint: str) -> None:
    """The data set's class names, in label order, must be the ones `checkpoint` recorded.

    Checkpoints that record no class names (written before rrcm kept them) are not checked.
    """
    if recorded is None:
        return
    recorded, actual = [str(c) for c in recorded], [str(c) for c in actual]
    if recorded == actual:
        return
    if sorted(recorded) == sorted(actual):
        problem = "the same class names in another order"
    else:
        first = next((i for i, (a, b) in enumerate(zip(recorded, actual)) if a != b), min(len(recorded), len(actual)))
        got = actual[first] if first < len(actual) else "nothing"
        want = recorded[first] if first < len(recorded) else "nothing"
        problem = f"class {first} is {got!r} where the checkpoint has {want!r} (data: {_shown(actual)})"
    raise UserError(f"checkpoint {checkpoint} was trained on classes {_shown(recorded)} but the data set has "
                    f"{problem}; use the data it was trained for, or pass --ignore-class-names if the labels "
                    "really mean the same")


def recorded_class_names(ckpt_config: dict[str, Any]) -> list[str] | None:
    data = ckpt_config.get("data")
    if isinstance(data, dict) and isinstance(data.get("classes"), list):
        return data["classes"]
    return None
