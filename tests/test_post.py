"""The LP-AFT post-processing stage (settings: bench.methodkit.post; driver: bench.evaluation.post, on the
finetuning and clustering code): pseudo-labels, linear probe, TRADES finetuning, the released attack
variants, and what the stage may and may not change in an encoder."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bench.engine.attacks as attacks
from bench.engine.attacks import trades_kl_attack
from bench.engine.data import to_float
from bench.engine.models import Classifier, build_contrastive_model
from bench.evaluation.finetune import scheme_loss, trades_loss, train_classifier
from bench.evaluation.post import finetune_settings, post_process, probe_settings, pseudo_labels
from bench.methodkit.post import PostSettings, check_settings
from bench.methodkit.pseudo_labels import kmeans_labels, model_features

SMALL = dict(
    clusters=4,
    head_epochs=2,
    epochs=1,
    milestones=(),
    batch_size=32,
    attack_steps=2,
    epsilon=0.06,
    step_size=0.015,
    augment=False,
)


def dual_bn_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_contrastive_model("small_cnn", ("normal", "pgd"), "acl", normalization="imagenet")


def test_kmeans_labels_recover_separated_blobs():
    generator = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([centre + 0.1 * generator.standard_normal((20, 2)) for centre in centres])
    labels = kmeans_labels(points, 3, seed=0)
    truth = np.repeat(np.arange(3), 20)
    assert all(len(set(labels[truth == k])) == 1 for k in range(3)) and len(set(labels)) == 3


def test_more_clusters_than_images_is_refused(digits):
    with pytest.raises(ValueError, match="post clusters=100 is invalid: allowed at most the 60 training images"):
        pseudo_labels(dual_bn_model(), digits.x_train[:60], PostSettings(**{**SMALL, "clusters": 100}), seed=0)


def test_features_come_from_the_requested_branch_in_eval_mode(digits):
    model = dual_bn_model()
    with torch.no_grad():
        model.encoder.bns[0].branches["pgd"].running_mean.fill_(0.5)
    model.train()
    images = digits.x_train[:10]
    normal, adversarial = model_features(model, images, "normal"), model_features(model, images, "pgd")
    assert model.training and not np.allclose(normal, adversarial)
    model.eval()
    with torch.no_grad():
        assert np.allclose(normal, model.features(to_float(images), "normal").numpy(), atol=1e-6)


def test_linear_probe_trains_the_zero_head_only(digits):
    model = dual_bn_model()
    classifier = Classifier(model, 4, "pgd")
    torch.nn.init.zeros_(classifier.head.weight)
    torch.nn.init.zeros_(classifier.head.bias)
    encoder_state = copy.deepcopy(model.state_dict())
    images, labels = digits.x_train[:64], torch.arange(64) % 4
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    def probe(settings):
        generators = dict(generator=torch.Generator().manual_seed(0), order=torch.Generator().manual_seed(0))
        loop = dict(device=torch.device("cpu"), drop_last=True, **generators)
        return train_classifier(classifier, probe_settings(settings, 64), images, labels, **loop)

    history = probe(PostSettings(**{**SMALL, "head_lr": 0.0}))
    assert history[0] == pytest.approx(math.log(4), abs=1e-6)  # zero logits: CE = log K exactly
    probe(PostSettings(**SMALL))
    assert torch.count_nonzero(classifier.head.weight) > 0
    assert all(torch.equal(v, encoder_state[k]) for k, v in model.state_dict().items())  # BN stats too (eval mode)


def test_trades_loss_matches_the_formula():
    torch.manual_seed(1)
    head = torch.nn.Linear(3, 4).double()
    x, x_adv, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64), torch.arange(5) % 4
    ours = trades_loss(head(x), head(x_adv), y, beta=6.0)
    p, q = torch.softmax(head(x), 1), torch.softmax(head(x_adv), 1)
    ce = -torch.log(p[torch.arange(5), y]).mean()
    expected = ce + 6.0 * (p * (p.log() - q.log())).sum() / 5
    assert ours.item() == pytest.approx(expected.item(), abs=1e-12)
    (weight_grad,) = torch.autograd.grad(ours, head.weight)
    (expected_grad,) = torch.autograd.grad(expected, head.weight)
    assert torch.allclose(weight_grad, expected_grad, atol=1e-12)


def aft_loss(classifier, x, settings: PostSettings, seed: int = 0, reference_bn: str = "") -> torch.Tensor:
    """The post stage's AFT loss on one batch, as ``bench.evaluation.post`` asks the finetuning code for it."""
    aft = finetune_settings(settings, x.shape[0])
    y = torch.arange(x.shape[0]) % 4
    return scheme_loss(classifier, aft, x, y, torch.Generator().manual_seed(seed), reference_bn)


def test_default_attack_is_bench_trades_kl_attack(digits, monkeypatch):
    classifier = Classifier(dual_bn_model(), 4, "pgd")
    x = to_float(digits.x_train[:8])
    reference = trades_kl_attack(
        copy.deepcopy(classifier).eval(),
        x,
        epsilon=0.06,
        step_size=0.015,
        steps=2,
        generator=torch.Generator().manual_seed(2),
    )
    seen = []
    real = attacks.trades_kl_attack
    monkeypatch.setattr(
        "bench.evaluation.finetune.trades_kl_attack", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    )
    aft_loss(classifier, x, PostSettings(**SMALL), seed=2)
    assert torch.equal(seen[0], reference) and (seen[0] - x).abs().max() <= 0.06 + 1e-7


def test_released_attack_variants(digits, monkeypatch):
    """DYNACL's TRADES starts at x itself; AIR's takes its reference through BN 'normal'."""
    classifier = Classifier(dual_bn_model(), 4, "pgd")
    with torch.no_grad():
        classifier.backbone.encoder.bns[0].branches["normal"].running_mean.fill_(0.3)
    x = to_float(digits.x_train[:8])
    calls = []
    monkeypatch.setattr(attacks, "pgd", lambda loss_fn, x, **kw: calls.append((loss_fn, kw)) or x)
    aft_loss(classifier, x, PostSettings(**SMALL, attack_start="clean"))
    assert torch.equal(calls[-1][1]["start"], x)
    aft_loss(classifier, x, PostSettings(**SMALL), reference_bn="normal")
    loss_fn, kwargs = calls[-1]
    assert 0 < (kwargs["start"] - x).abs().max() < 0.01  # x + 0.001·N(0, 1)
    classifier.eval()
    with torch.no_grad():
        p_normal = torch.softmax(classifier.head(classifier.backbone.features(x, "normal")), 1)
        expected = F.kl_div(F.log_softmax(classifier(x), 1), p_normal, reduction="sum")
    assert loss_fn(x).item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 1e-6


def test_post_process_trains_one_branch_and_leaves_the_input_alone(digits):
    model = dual_bn_model()
    before = copy.deepcopy(model.state_dict())
    encoder = post_process(
        model, digits.x_train[:96], PostSettings(**SMALL), torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert encoder is not model and not encoder.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    after = encoder.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert "encoder.convs.0.weight" in changed and any(".branches.pgd.running_mean" in k for k in changed)
    assert not any(".branches.normal." in k or k.startswith("projector.") for k in changed)
    assert all(p.requires_grad for p in encoder.parameters())
    again = post_process(
        model, digits.x_train[:96], PostSettings(**SMALL), torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())  # reproducible from the generator


def test_settings_are_checked_before_any_work():
    branches = ("normal", "pgd")
    with pytest.raises(ValueError, match="post clusters=1 is invalid: allowed integers >= 2"):
        check_settings(PostSettings(clusters=1), branches)
    with pytest.raises(ValueError, match="post attack_start='zero' is invalid: allowed \\['noise', 'clean'\\]"):
        check_settings(PostSettings(attack_start="zero"), branches)
    with pytest.raises(ValueError, match="post bn='adv' is invalid: allowed the model's BN branches"):
        check_settings(PostSettings(bn="adv"), branches)
    check_settings(PostSettings(), branches)
