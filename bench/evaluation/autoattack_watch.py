"""AutoAttack made visible: its own reliability checks and its progress, captured from its logger.

pyautoattack (fra31/auto-attack repackaged; pinned to 0.2.x in pyproject.toml, whose message texts
this module parses) reports everything through the standard logger ``'auto-attack'``:
- its checks (pyautoattack/checks.py, documented in fra31/auto-attack flags_doc.md) at WARNING:
  ``check_randomized`` (outputs change between identical forwards), ``check_range_output``
  (outputs look like probabilities, not logits), ``check_dynamic`` (the forward calls
  ``grad``/``backward``), ``check_n_classes`` (too few classes for the targeted attacks),
  ``check_zero_gradients`` (inside APGD: inputs with an all-zero gradient), ``check_square_sr``
  (Square, which needs no gradients, still lowered the accuracy left by the gradient attacks);
- its progress at DEBUG: the initial accuracy, each attack's start and the robust accuracy after it.
Nobody sees either by default (DEBUG is off, and a WARNING reaches stderr only through logging's
last-resort handler, never the sanity record). ``watch_autoattack`` attaches a handler for the
duration of one AutoAttack run, turns the warnings into a structured list for the sanity record
and forwards progress lines to a callback (e.g. ``bench.engine.progress.log``).

One upstream defect is neutralised: ``check_dynamic`` counts traced calls in a module-level dict
(``checks.funcs``) that is never reset, so once one model in a process was flagged dynamic,
every later model would be too. The counters are zeroed before each watched run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

LOGGER_NAME = "auto-attack"
ProgressFn = Callable[[str], None]

# (check name, a fragment of pyautoattack 0.2's message for it)
_CHECKS = (
    ("randomized", "randomized defense"),
    ("output-range", "probability distribution"),
    ("dynamic", "dynamic defense"),
    ("zero-gradients", "zero gradient"),
    ("square-success", "Square Attack has decreased"),
    ("n-classes", "target classes"),
    ("n-classes", "not possible to use the"),
)
_INITIAL = re.compile(r"initial accuracy: ([\d.]+)%")
_RUNNING = re.compile(r"running ([\w-]+)$")
_AFTER = re.compile(r"robust accuracy after ([\w-]+): ([\d.]+)% \(total time ([\d.]+) s\)")


def check_name(message: str) -> str:
    """The check a pyautoattack warning comes from ('other' for a message this version does not know)."""
    return next((name for name, fragment in _CHECKS if fragment in message), "other")


@dataclass
class AutoAttackWatch:
    """What one AutoAttack run reported: its checks (one entry per check) and its per-attack progress."""

    checks: list[dict] = field(default_factory=list)  # {"check", "message", "count"}
    progress: list[dict] = field(default_factory=list)  # {"attack", "robust_accuracy", "elapsed_s"}

    def add_warning(self, message: str) -> dict:
        name = check_name(message)
        for entry in self.checks:
            if entry["check"] == name:
                entry["count"] += 1
                return entry
        entry = {"check": name, "message": message, "count": 1}
        self.checks.append(entry)
        return entry

    def summary(self) -> str:
        """One line for the sanity record: the checks that fired, or that none did."""
        return checks_summary(self.checks)


def checks_summary(checks: list[dict]) -> str:
    """One line for the sanity record from ``AutoAttackWatch.checks``: the checks that fired, or that none did."""
    if not checks:
        return "no AutoAttack check fired"
    return "; ".join(f"{entry['check']} (×{entry['count']}): {entry['message']}" for entry in checks)


class _Handler(logging.Handler):
    def __init__(self, watch: AutoAttackWatch, say: ProgressFn):
        super().__init__(logging.DEBUG)
        self.watch, self.say = watch, say

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            entry = self.watch.add_warning(message)
            if entry["count"] == 1:
                self.say(f"AutoAttack check '{entry['check']}': {message}")
        elif match := _INITIAL.search(message):
            self.say(f"AutoAttack: clean accuracy {float(match.group(1)):.2f} %")
        elif match := _RUNNING.search(message):
            self.say(f"AutoAttack: running {match.group(1)}")
        elif match := _AFTER.search(message):
            attack, accuracy, elapsed = match.group(1).lower(), float(match.group(2)), float(match.group(3))
            self.watch.progress.append({"attack": attack, "robust_accuracy": accuracy, "elapsed_s": elapsed})
            self.say(f"AutoAttack: robust accuracy {accuracy:.2f} % after {attack} ({elapsed:.1f} s)")


def _reset_dynamic_check() -> None:
    from pyautoattack import checks

    for name in checks.funcs:
        checks.funcs[name] = 0


@contextmanager
def watch_autoattack(progress: ProgressFn | None = None) -> Iterator[AutoAttackWatch]:
    """Capture the 'auto-attack' logger while inside; progress lines go to ``progress`` if given."""
    _reset_dynamic_check()
    watch = AutoAttackWatch()
    logger = logging.getLogger(LOGGER_NAME)
    handler = _Handler(watch, progress or (lambda line: None))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # captured here; DEBUG lines must not reach the root handlers
    try:
        yield watch
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
