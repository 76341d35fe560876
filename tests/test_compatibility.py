"""Does a checkpoint fit a data set: channels, image size, class count and class names, with the whole
message a user reads when it does not."""

from __future__ import annotations

import pytest

from rrcm.compatibility import check_checkpoint_matches_data, check_class_names, recorded_class_names
from rrcm.data.base import DataInfo
from rrcm.errors import UserError

FIX = "use the data it was trained for, or pass --ignore-class-names if the labels really mean the same"


def digits_info(**changes) -> DataInfo:
    fields = dict(name="digits", num_classes=10, channels=1, image_size=8, classes=tuple(str(i) for i in range(10)),
                  mean=(0.3,), std=(0.4,))
    return DataInfo(**{**fields, **changes})


def lenet_config(**model) -> dict:
    return {"model": {"arch": "lenet5", "num_classes": 10, "in_channels": 1, "image_size": 8, **model}}


# -- shape and class count --------------------------------------------------------------------------

@pytest.mark.parametrize("model, data, message", [
    ({"in_channels": 3}, {}, "checkpoint m.safetensors expects 3 channels but the data set has 1"),
    ({}, {"channels": 3}, "checkpoint m.safetensors expects 1 channels but the data set has 3"),
    ({"image_size": 32}, {}, "checkpoint m.safetensors expects 32 image size but the data set has 8"),
    ({"num_classes": 100}, {}, "checkpoint m.safetensors expects 100 classes but the data set has 10"),
    ({}, {"num_classes": 2}, "checkpoint m.safetensors expects 10 classes but the data set has 2"),
], ids=["channels", "channels-of-the-data", "image-size", "classes", "classes-of-the-data"])
def test_a_checkpoint_for_other_data_is_refused_naming_what_differs(model, data, message):
    with pytest.raises(UserError) as err:
        check_checkpoint_matches_data(lenet_config(**model), digits_info(**data), "m.safetensors")
    assert str(err.value) == f"{message}; certify it on the data it was trained for"


def test_channels_are_checked_before_the_image_size_and_the_class_count():
    config = lenet_config(in_channels=3, image_size=32, num_classes=100)
    with pytest.raises(UserError) as err:
        check_checkpoint_matches_data(config, digits_info(), "m.safetensors")
    assert str(err.value) == ("checkpoint m.safetensors expects 3 channels but the data set has 1; "
                              "certify it on the data it was trained for")


def test_a_matching_checkpoint_and_one_that_records_no_shape_pass():
    check_checkpoint_matches_data(lenet_config(), digits_info(), "m.safetensors")
    check_checkpoint_matches_data({"model": {"arch": "lenet5"}}, digits_info(channels=3, num_classes=2), "m")


# -- class names ------------------------------------------------------------------------------------

def test_the_same_class_names_in_another_order_are_refused():
    with pytest.raises(UserError) as err:
        check_class_names(["cat", "dog"], ["dog", "cat"], "m.safetensors")
    assert str(err.value) == ("checkpoint m.safetensors was trained on classes cat, dog but the data set has the same "
                              f"class names in another order; {FIX}")


def test_the_first_class_that_differs_is_named_not_an_earlier_equal_one():
    with pytest.raises(UserError) as err:
        check_class_names(["cat", "dog", "eel"], ["cat", "fox", "eel"], "m.safetensors")
    assert str(err.value) == ("checkpoint m.safetensors was trained on classes cat, dog, eel but the data set has "
                              f"class 1 is 'fox' where the checkpoint has 'dog' (data: cat, fox, eel); {FIX}")


def test_a_data_set_with_fewer_classes_names_the_first_one_it_lacks():
    with pytest.raises(UserError) as err:
        check_class_names(["cat", "dog", "eel"], ["cat", "dog"], "m.safetensors")
    assert str(err.value) == ("checkpoint m.safetensors was trained on classes cat, dog, eel but the data set has "
                              f"class 2 is 'nothing' where the checkpoint has 'eel' (data: cat, dog); {FIX}")


def test_a_data_set_with_more_classes_names_the_first_extra_one():
    with pytest.raises(UserError) as err:
        check_class_names(["cat", "dog"], ["cat", "dog", "eel"], "m.safetensors")
    assert str(err.value) == ("checkpoint m.safetensors was trained on classes cat, dog but the data set has "
                              f"class 2 is 'eel' where the checkpoint has 'nothing' (data: cat, dog, eel); {FIX}")


def test_long_class_lists_show_their_first_four_names_and_their_count():
    four, five = ["a", "b", "c", "d"], ["a", "b", "c", "d", "e"]
    with pytest.raises(UserError) as err:  # four names: all shown
        check_class_names(four, ["a", "b", "c", "x"], "m")
    assert str(err.value) == ("checkpoint m was trained on classes a, b, c, d but the data set has "
                              f"class 3 is 'x' where the checkpoint has 'd' (data: a, b, c, x); {FIX}")
    with pytest.raises(UserError) as err:  # five: four and the count
        check_class_names(five, ["a", "b", "c", "d", "x"], "m")
    assert str(err.value) == ("checkpoint m was trained on classes a, b, c, d, ... (5 in all) but the data set has "
                              f"class 4 is 'x' where the checkpoint has 'e' (data: a, b, c, d, ... (5 in all)); {FIX}")


def test_class_names_are_compared_as_strings_and_unrecorded_ones_are_not_checked():
    check_class_names(["0", "1"], [0, 1], "m")  # a data set may list its labels as numbers
    check_class_names(["cat", "dog"], ("cat", "dog"), "m")
    check_class_names(None, ["anything"], "m")  # written before rrcm recorded class names


def test_recorded_class_names():
    assert recorded_class_names({"model": {}, "data": {"classes": ["cat", "dog"]}}) == ["cat", "dog"]
    assert recorded_class_names({"model": {}, "data": {"name": "digits"}}) is None
    assert recorded_class_names({"model": {}}) is None
    assert recorded_class_names({"model": {}, "data": {"classes": "cat,dog"}}) is None
