"""bench.config.coerce: one typed string-to-value coercion for --set and --param."""

from __future__ import annotations

from typing import Any

import pytest

from bench.coercion import coerce
from bench.config import ConfigError, preset, set_field


@pytest.mark.parametrize(
    "hint, raw, expected",
    [
        (bool, "true", True),
        (bool, "Off", False),
        (bool, "1", True),
        (bool, False, False),
        (int, "7", 7),
        (int, 3, 3),
        (float, "0.5", 0.5),
        (float, "8/255", 8 / 255),
        (float, 2, 2.0),
        (float, "-1e-3", -1e-3),
        (str, "official", "official"),
        (str, "", ""),
        (tuple[int, ...], "2,10,50", (2, 10, 50)),
        (tuple[int, ...], [2, 10], (2, 10)),
        (tuple[int, ...], "", ()),
        (tuple[str, ...], "SLF,AFF", ("SLF", "AFF")),
        (tuple[float, ...], "2/255,0.1", (2 / 255, 0.1)),
        (int | None, "none", None),
        (int | None, "", None),
        (int | None, "None", None),
        (int | None, "5", 5),
        (float | None, "8/255", 8 / 255),
        (float | None, None, None),
        (Any, "anything", "anything"),
    ],
)
def test_coerce_turns_strings_and_values_into_the_annotated_type(hint, raw, expected):
    value = coerce(hint, raw, "field")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "hint, raw, message",
    [
        (float, "nan", "x='nan' is invalid: allowed finite numbers"),
        (float, "inf", "x='inf' is invalid: allowed finite numbers"),
        (float, float("-inf"), "x=-inf is invalid: allowed finite numbers"),
        (float | None, "nan", "x='nan' is invalid: allowed finite numbers"),
        (float, "1/0", "x='1/0' is invalid: allowed float values"),
        (float, "abc", "x='abc' is invalid: allowed float values"),
        (float, True, "x=True is invalid: allowed float values"),
        (int, "2.5", "x='2.5' is invalid: allowed int values"),
        (int, 2.0, "x=2.0 is invalid: allowed int values"),
        (int, True, "x=True is invalid: allowed int values"),
        (bool, "maybe", "x='maybe' is invalid: allowed true/false"),
        (bool, 1, "x=1 is invalid: allowed true/false"),
        (str, 3, "x=3 is invalid: allowed strings"),
        (tuple[int, ...], "2,ten", "x='ten' is invalid: allowed int values"),
        (tuple[int, ...], 5, "x=5 is invalid: allowed comma-separated int values"),
    ],
)
def test_coerce_rejects_bad_values_in_one_line(hint, raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        coerce(hint, raw, "x")


def test_set_field_coerces_by_the_field_annotation():
    config = preset("smoke")
    set_field(config, "pretrain.lr", "8/255")
    set_field(config, "pretrain.amp", "yes")
    set_field(config, "finetune.schemes", "SLF,ALF")
    set_field(config, "finetune.milestones", "3")
    set_field(config, "evaluate.epsilon_curve", "0.02,4/255")
    set_field(config, "pretrain.warmup_epochs", 10)
    assert config.pretrain.lr == pytest.approx(8 / 255) and config.pretrain.amp is True
    assert config.finetune.schemes == ("SLF", "ALF") and config.finetune.milestones == (3,)
    assert config.evaluate.epsilon_curve == pytest.approx((0.02, 4 / 255))
    assert config.pretrain.warmup_epochs == 10.0 and isinstance(config.pretrain.warmup_epochs, float)
    set_field(config, "finetune.schemes", "")  # `bench pretrain`: no finetuning
    assert config.finetune.schemes == ()


@pytest.mark.parametrize(
    "dotted, raw, message",
    [
        ("pretrain.nope", "1", "field='pretrain.nope' is invalid"),
        ("nope.lr", "1", "field='nope.lr' is invalid"),
        ("pretrain", "1", "field='pretrain' is invalid: allowed dotted names of single RunConfig fields"),
        ("method_params", "x", "field='method_params' is invalid"),
        ("pretrain.lr", "nan", "pretrain.lr='nan' is invalid: allowed finite numbers"),
        ("pretrain.epochs", "1.5", "pretrain.epochs='1.5' is invalid: allowed int values"),
    ],
)
def test_set_field_rejects_unknown_fields_and_bad_values(dotted, raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        set_field(preset("smoke"), dotted, raw)
