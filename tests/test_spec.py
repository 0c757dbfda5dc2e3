"""The typed specs a method declares (bench.methodkit.spec): checked when built, shared by the ACL
family, derived by the variants with ``dataclasses.replace``, and the old loose attributes folded in
with one warning so that plugins written against them keep working."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.methodkit import registry
from bench.methodkit.method import Method, Published
from bench.methodkit.spec import (
    ACL_MODEL,
    LEGACY,
    ModelSpec,
    PublishedSettings,
    TeacherSpec,
    VariantSpec,
)
from bench.methodkit.variants import make_variant

METHODS = Path(__file__).resolve().parent.parent / "methods"


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- the old spellings


def test_old_attributes_fold_into_the_specs_with_one_warning_naming_the_new_spelling():
    row = Published(source="a plugin's script")
    with pytest.warns(DeprecationWarning) as caught:

        class Legacy(Method):
            bn_branches = ("normal", "pgd")
            finetune_bn = "pgd"
            projector = "advcl"
            synced_batch_norm = True
            has_adversarial_views = True
            uses_contrastive_loss = False
            official_quirks = True
            requires_teacher = True
            teacher_method = "simclr"
            paper = {"legacy": {"*": row}}
            smoke = {"legacy": row}

    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Legacy" in message and "bn_branches -> model = ModelSpec(branches=...)" in message
    assert "requires_teacher -> teacher = TeacherSpec(method=...)" in message
    assert "has_adversarial_views -> variant = VariantSpec(adversarial_views=...)" in message
    assert Legacy.model == ModelSpec(branches=("normal", "pgd"), projector="advcl", finetune_bn="pgd", synced_bn=True)
    assert Legacy.variant == VariantSpec(adversarial_views=True, uses_contrastive_loss=False, official_quirks=True)
    assert Legacy.teacher == TeacherSpec("simclr")
    assert Legacy.published_settings == PublishedSettings(paper={"legacy": {"*": row}}, smoke={"legacy": row})
    assert not set(LEGACY) & set(vars(Legacy))  # folded: the specs are the one place they live
    Legacy.name = "legacy"
    assert Legacy.published("paper", "svhn") == row
    assert Legacy().build_model("small_cnn").spec["branches"] == ["normal", "pgd"]


def test_reading_an_old_attribute_reads_the_spec_with_a_warning():
    method = registry.get("acl-ip")()
    with pytest.warns(DeprecationWarning, match=r"inferior_positives is deprecated: variant = VariantSpec"):
        assert method.inferior_positives is True
    with pytest.warns(DeprecationWarning, match=r"bn_branches is deprecated: model = ModelSpec\(branches"):
        assert registry.get("acl").bn_branches == ("normal", "pgd")
    with pytest.warns(DeprecationWarning):
        deacl = registry.get("deacl")
        assert (deacl.requires_teacher, deacl.teacher_method) == (True, "simclr")
    with pytest.warns(DeprecationWarning):
        assert (registry.get("acl").requires_teacher, registry.get("acl").teacher_method) == (False, "")


def test_old_attributes_override_only_what_they_name_of_the_inherited_specs():
    with pytest.warns(DeprecationWarning):

        class Student(Method):
            teacher = TeacherSpec("acl")
            model = ACL_MODEL
            normalization = "cifar10"

    assert Student.model == dataclasses.replace(ACL_MODEL, normalization="cifar10")
    assert ACL_MODEL.normalization == "imagenet"  # frozen and shared: never changed in place
    with pytest.warns(DeprecationWarning):

        class NoTeacher(Student):
            requires_teacher = False

    assert NoTeacher.teacher is None and Student.teacher == TeacherSpec("acl")


def test_a_plugin_in_the_old_spelling_still_registers_without_variants():
    with pytest.warns(DeprecationWarning):

        class OldPlugin(Method):
            has_adversarial_views = True
            uses_contrastive_loss = False

    registry.available()
    registry.register("spec-old-plugin")(OldPlugin)
    try:
        registry.derive_variants()
        assert registry.get("spec-old-plugin") is OldPlugin
        assert not registry.is_registered("spec-old-plugin-ip")
    finally:
        registry.unregister("spec-old-plugin")


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: ModelSpec(projector="byol"), r"ModelSpec.projector='byol' is invalid: allowed \['acl', "),
        (lambda: ModelSpec(normalization="cifar"), r"ModelSpec.normalization='cifar' is invalid: allowed \["),
        (lambda: ModelSpec(conv_init="xavier"), r"ModelSpec.conv_init='xavier' is invalid: allowed \['default'"),
        (lambda: ModelSpec(finetune_bn="pgd"), r"ModelSpec.finetune_bn='pgd' is invalid: allowed \['normal'\]"),
        (lambda: ModelSpec(branches="normal"), r"ModelSpec.branches='normal' is invalid: allowed a non-empty tuple"),
        (lambda: ModelSpec(synced_bn="yes"), r"ModelSpec.synced_bn='yes' is invalid: allowed \[True, False\]"),
        (lambda: VariantSpec(adversarial_views="False"), r"VariantSpec.adversarial_views='False' is invalid"),
        (lambda: TeacherSpec(""), r"TeacherSpec.method='' is invalid: allowed a registered method name"),
        (lambda: PublishedSettings(smoke={"x": {"lr": 1}}), r"row \{'lr': 1\} is invalid: allowed Published"),
    ],
)
def test_a_bad_spec_value_fails_in_one_line_naming_the_allowed_ones(build, expected):
    with pytest.raises(ConfigError) as error:
        build()
    assert re.search(expected, one_line(error))


def test_a_spec_attribute_of_the_wrong_type_or_a_bad_old_value_fails_when_the_class_is_made():
    with pytest.raises(ConfigError) as error:
        type("Tupled", (Method,), {"model": ("normal", "pgd")})
    assert "Tupled.model=('normal', 'pgd') is invalid: allowed a ModelSpec" in one_line(error)
    with pytest.raises(ConfigError) as error, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        type("OldBad", (Method,), {"projector": "byol"})
    assert "ModelSpec.projector='byol' is invalid" in one_line(error)
    with pytest.raises(ConfigError) as error, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        type("NoName", (Method,), {"requires_teacher": True})
    assert "TeacherSpec.method='' is invalid" in one_line(error)


# --------------------------------------------------------------------------- built-in methods and variants


def test_the_acl_family_shares_one_model_spec():
    for name in ("acl", "dynacl", "dynacl++", "acl-air", "dynacl-air", "dynacl-air++", "acl-iphn"):
        assert registry.get(name).model is ACL_MODEL, name
    assert ACL_MODEL == ModelSpec(("normal", "pgd"), "acl", "imagenet", "kaiming_normal", "pgd")


def test_each_variant_derives_its_specs_from_its_base_by_replace():
    for name, cls in registry.available().items():
        if not cls.variant.base:
            continue
        base = registry.get(cls.variant.base)
        suffix = name.removeprefix(f"{base.name}-")
        flags = {"inferior_positives": "ip" in suffix, "hard_negatives": suffix.endswith("hn")}
        assert cls.variant == dataclasses.replace(base.variant, base=base.name, **flags), name
        assert (cls.model, cls.teacher, cls.published_settings) == (
            base.model,
            base.teacher,
            base.published_settings,
        ), name
    variant = make_variant(registry.get("rocl"), "hn")
    assert variant.variant.official_quirks and variant.model.synced_bn  # RoCL's own, kept


def test_the_harness_reads_no_old_attribute_and_the_methods_declare_none():
    """The built-in methods use the new spelling (their source sets no old name), and listing, planning
    and building every registered method reads only the specs (an old read would warn: an error here)."""
    assignment = re.compile(rf"^    ({'|'.join(LEGACY)})\s*[:=]", re.M)  # a class body's own line
    for path in sorted(METHODS.glob("*.py")):
        assert not assignment.findall(path.read_text()), path.name
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        registry.resolve(["all", "*"])
        for cls in registry.available().values():
            cls.published("smoke", "digits")
            cls.unread_params()
            cls.check_params(cls.make_params({}))
            cls().build_model("small_cnn")
