"""The released repositories' checkpoint formats, as data: what ``bench.engine.checkpoints.load_encoder``
maps, keeps and drops for each (``--format``).

Released formats (key maps; verified against the repositories' code)
-------------------------------------------------------------------
Our encoder keys are ``encoder.<path>`` with BN tensors at ``<bn>.branches.<name>.<t>``
(t = weight, bias, running_mean, running_var, num_batches_tracked).

acl (VITA-Group/Adversarial-Contrastive-Learning, models/resnet_multi_bn.py; train_simCLR.py
saves ``{'epoch', 'state_dict', 'optim'}`` without DataParallel; DynACL saves the same names
under ``encoder_q.`` / ``encoder_k.``)
    <bn>.bn_list.<i>.<t>               -> <bn>.branches.<name_i>.<t>, i: 0 = normal, 1 = pgd
    layerN.0.downsample.conv.weight    -> layerN.0.shortcut.0.weight
    layerN.0.downsample.bn.bn_list.<i> -> layerN.0.shortcut.1.branches.<name_i>
    normalize.mean / normalize.std     -> normalize.mean / std (shape [3] -> [1, 3, 1, 1];
                                          ImageNet statistics in the released code)
    ignored: ``fc.*`` (proj_head fc.fc1-3 / fc.bn1-3, or a linear head) and, for DynACL,
    ``encoder_q.*`` (the momentum key encoder ``encoder_k.*`` is the one DynACL evaluates;
    ``encoder_q.`` is used only when there is no ``encoder_k.``).
advcl (LijieFan/AdvCL and yqy2001/A-InfoNCE Asym-AdvCL, models/resnet_cifar_multibn_ensembleFC.py;
pretraining_advCL.py saves ``{'model', 'epoch', 'rng_state'}`` of an nn.DataParallel, so every
key starts with ``module.``, stripped here)
    the same names as acl, i: 0 = normal, 1 = pgd, 2 = pgd_ce; no normalisation layer.
    ignored: ``head_proj.*``, ``head_pred.*``, ``head_ce.*``, ``fc_002.*``, ``fc_010.*``,
    ``fc_050.*``, ``fc_100.*``, ``fc_500.*`` (projector, predictor and pseudo-label heads).
rocl (Kim-Minseon/RoCL src/models/resnet.py, kuangliu-style; rocl_train.py saves
``{'epoch', 'acc', 'model', 'optimizer_state', 'rng_state'}`` of a DDP model: ``module.``;
the projector goes to a separate ``*_projector`` file)
    <bn>.<t> -> <bn>.branches.normal.<t> (bn1, bn2, shortcut.1); every other name is ours;
    one BN set, no normalisation layer. ``avg_pool2d(4)`` = our global pool at 32×32.
    ignored: ``linear.*`` (the classifier of contrastive_learning=False), ``linear_1.*``,
    ``linear_2.*`` (the Projector, should it be merged in).
dynacl (PKU-ML/DYNACL train_DynACL.py: ``model_encoder_k.pt`` = ``{'epoch', 'state_dict'}`` of the
key encoder alone, ACL's names; ``model.pt`` = the momentum pair under ``encoder_q.`` / ``encoder_k.``)
    acl's key map and ignored prefixes; ``encoder_k.`` preferred, ``encoder_q.*`` ignored.
dynacl++ (LPAFT.py's ``model.pt``: single-BN models/resnet.py ResNet-18, torchvision names, the
adversarial route's statistics (bnNameCnt 1), a pseudo-label linear head ``fc``)
    <bn>.<t> -> <bn>.branches.<branch>.<t>; layerN.0.downsample.0 / .1 -> layerN.0.shortcut.0 / .1;
    its one BN set is reported as branch 'pgd'; normalize.mean / std as acl; ignored: ``fc.*``.
dynacl++-dual (LPAFT_AFF.py's ``model.pt``: dual-BN ResNet-18 with a linear head ``fc``)
    acl's key map, i: 0 = normal, 1 = pgd; ignored: ``fc.*``.
robustssl (GodXuxilie/RobustSSL_Benchmark, Vanilla_Finetuning/utils.py ``get_model``: the state
dict is under ``state_dict_dual``, ``state_dict`` or ``model``, else the file itself; the
encoders it releases keep their authors' names). The family is detected from the keys:
``bn_list.2`` or AdvCL heads -> advcl; ``encoder_k.``/``bn_list``/``normalize.`` -> acl;
kuangliu ``shortcut.`` -> rocl; single-BN ``downsample.0.`` with ``normalize.`` -> dynacl++;
solo-learn ``backbone.`` -> deacl, loaded into DeACL's padding-2
stem (RobustSSL loads it into a padding-1 stem silently: the pitfall behind its DeACL cells).
deacl (pantheon5100/DeACL: a Lightning checkpoint ``{'state_dict': ...}`` of ``mocov2_kd_at``; its
``adv_finetune.py`` keeps the ``backbone.`` keys and loads them strictly into its padding-2 model)
    backbone.<path> -> <path> in DeACL's ResNet-18 (arch ``resnet18_deacl``): torchvision names,
    layerN.0.downsample.0/1 -> layerN.0.shortcut.0/1, <bn>.<t> -> <bn>.branches.normal.<t>;
    backbone.normalize.mean / std -> normalize (CIFAR-10 statistics in the released model class).
    ignored: ``momentum_backbone.*`` (the frozen SimCLR teacher), ``classifier.*``,
    ``classifier_adv.*`` (online linear probes on detached features).
deacl-teacher (the solo-learn SimCLR checkpoint DeACL distils from, e.g. ``simclr-cifar10-b30xch14-ep=999.ckpt``)
    the same ``backbone.`` names without normalisation buffers: DeACL's model class supplies
    CIFAR-10 statistics in the model, and so does this format. ignored: ``projector.*``,
    ``classifier.*``, ``momentum_*`` (a MoCo teacher's EMA copies).
"""

from __future__ import annotations

from dataclasses import dataclass

ARCH_NOTES = {
    "resnet18": "our CIFAR ResNet-18 (3×3 stride-1 padding-1 stem, no max-pool, widths 64-512)",
    "resnet18_deacl": "DeACL's CIFAR ResNet-18 (3×3 stride-1 padding-2 stem, no max-pool, widths 64-512)",
}


@dataclass(frozen=True)
class ExternalFormat:
    """How one released code base names a CIFAR ResNet-18 encoder (see the module docstring)."""

    name: str
    containers: tuple[str, ...]  # dict keys that may hold the state dict, tried in order
    bn_names: tuple[str, ...]  # bn_list index -> our branch name
    default_branch: str
    layout: str  # 'multi_bn' (torchvision + bn_list) | 'kuangliu' (one plain BN) | 'torchvision' (one plain BN)
    normalized: bool  # the checkpoint carries normalize.mean / normalize.std buffers
    ignored: tuple[str, ...]  # key prefixes dropped on purpose
    encoder_prefixes: tuple[str, ...] = ()  # alternative sub-model prefixes, preferred first
    arch: str = "resnet18"  # the bench.engine.models encoder it was trained as (the stem is part of it)
    fixed_normalization: str = ""  # bench.engine.models.NORMALIZATIONS key the released model class adds itself


ACL = ExternalFormat(
    name="acl",
    containers=("state_dict", "P_state"),
    bn_names=("normal", "pgd"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=True,
    ignored=("fc.",),
    encoder_prefixes=("encoder_k.", "encoder_q."),
)


ADVCL = ExternalFormat(
    name="advcl",
    containers=("model", "state_dict"),
    bn_names=("normal", "pgd", "pgd_ce"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=False,
    ignored=("head_proj.", "head_pred.", "head_ce.", "fc_002.", "fc_010.", "fc_050.", "fc_100.", "fc_500."),
)


ROCL = ExternalFormat(
    name="rocl",
    containers=("model",),
    bn_names=("normal",),
    default_branch="normal",
    layout="kuangliu",
    normalized=False,
    ignored=("linear.", "linear_1.", "linear_2."),
)


DYNACL = ExternalFormat(
    name="dynacl",
    containers=("state_dict",),
    bn_names=("normal", "pgd"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=True,
    ignored=("fc.",),
    encoder_prefixes=("encoder_k.", "encoder_q."),
)


DYNACL_PLUS_PLUS = ExternalFormat(
    name="dynacl++",
    containers=("state_dict",),
    bn_names=("pgd",),
    default_branch="pgd",
    layout="torchvision",
    normalized=True,
    ignored=("fc.",),
)


DYNACL_PLUS_PLUS_DUAL = ExternalFormat(
    name="dynacl++-dual",
    containers=("state_dict",),
    bn_names=("normal", "pgd"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=True,
    ignored=("fc.",),
)


DEACL = ExternalFormat(
    name="deacl",
    containers=("state_dict",),
    bn_names=("normal",),
    default_branch="normal",
    layout="torchvision",
    normalized=True,
    ignored=("momentum_backbone.", "classifier.", "classifier_adv."),
    encoder_prefixes=("backbone.",),
    arch="resnet18_deacl",
)


DEACL_TEACHER = ExternalFormat(
    name="deacl-teacher",
    containers=("state_dict",),
    bn_names=("normal",),
    default_branch="normal",
    layout="torchvision",
    normalized=False,
    ignored=("projector.", "classifier.", "momentum_"),
    encoder_prefixes=("backbone.",),
    arch="resnet18_deacl",
    fixed_normalization="cifar10",
)


EXTERNAL = {
    spec.name: spec
    for spec in (ACL, ADVCL, ROCL, DYNACL, DYNACL_PLUS_PLUS, DYNACL_PLUS_PLUS_DUAL, DEACL, DEACL_TEACHER)
}


ROBUSTSSL_CONTAINERS = ("state_dict_dual", "state_dict", "model")
