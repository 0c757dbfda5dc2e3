"""Evaluation: finetuning schemes (SLF/ALF/AFF), the published protocols, attacks' evaluation
(PGD, AutoAttack) and common corruptions, for one encoder at a time.
"""
