"""Stage inputs (``MethodRun.inputs``): what a run's stages are handed besides its config, as its method
asks for it: a teacher run (the method's ``TeacherSpec``), the AdvCL family's pseudo-label source. The
runs named there (``MethodRun.upstream``) finish first, and a failed one fails its dependants."""

from __future__ import annotations

from bench.runs.pipeline import RunOutcome, next_ready
from bench.runs.plan import RunRequest, build_plan
from bench.store.results import ResultsStore


def plan_of(*methods: str):
    return build_plan(RunRequest(preset="paper", methods=methods, overrides={"data.name": "cifar10"}, dry_run=True))


def test_a_teacher_spec_asks_for_the_teacher_run_and_pseudo_label_parameters_for_their_source():
    teacher, student = plan_of("deacl").runs
    assert (teacher.method, student.method) == ("simclr", "deacl")
    assert student.inputs == {"teacher": teacher.run_id} and student.upstream == {"teacher": teacher.run_id}
    assert teacher.inputs == {} and teacher.upstream == {}
    (advcl,) = plan_of("advcl").runs
    assert set(advcl.inputs) == {"pseudo_labels"} and advcl.upstream == {}  # a file, not a run to wait for
    assert advcl.to_dict()["pseudo_labels"] == advcl.inputs["pseudo_labels"].to_dict()


def test_a_run_waits_for_its_upstream_runs_and_fails_when_one_failed(tmp_path):
    teacher, student = plan_of("deacl").runs
    store = ResultsStore(tmp_path)
    assert next_ready([student], {}, store) is None  # its teacher has not finished
    outcomes = {teacher.run_id: RunOutcome(teacher.run_id, "simclr", "completed")}
    assert next_ready([student], outcomes, store) is student and student.run_id not in outcomes
    outcomes = {teacher.run_id: RunOutcome(teacher.run_id, "simclr", "failed", "Boom")}
    assert next_ready([student], outcomes, store) is student
    assert outcomes[student.run_id].reason == f"TeacherFailed: its teacher run {teacher.run_id} failed (Boom)"
