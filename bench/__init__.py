"""acl-bench: one harness to pretrain, finetune, attack and report adversarial contrastive learning."""

__version__ = "0.1.0"
