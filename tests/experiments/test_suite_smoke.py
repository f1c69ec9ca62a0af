"""Smoke test of the experiment suite: a minimal quick subset runs end to end and writes its files (no accuracy
thresholds), a second call skips the finished jobs, and post-training MC loads a ``none`` model into an MC one."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from mc_jax.experiments import budget, report
from mc_jax.experiments.definitions import CORE_TIER, EXPERIMENTS, plan_of
from mc_jax.experiments.evaluation import transplant
from mc_jax.experiments.jobs import LRS, Job, Outcome, run_jobs
from mc_jax.experiments.suite import main, run_experiment
from mc_jax.models import create_model
from mc_jax.train import load_run_config
from mc_jax.train.step import split_model


@pytest.mark.slow
def test_quick_experiment_writes_jobs_tables_plots_and_resumes(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    summary = run_experiment("e5", quick=True, out=out, results=results, log=lambda *_: None)
    assert set(summary) == {"grm", "residual", "token_gates", "uniform"}
    jobs = sorted((out / "e5" / "jobs").glob("*.json"))
    assert [p.name for p in jobs] == ["grm-lr0.003-s0.json", "residual-lr0.003-s0.json",
                                      "token_gates-lr0.003-s0.json", "uniform-lr0.003-s0.json"]
    record = json.loads(jobs[0].read_text())
    for key in ("config", "seed", "accuracy", "wall_seconds", "git_revision", "by_segment"):
        assert key in record, key
    assert 0.0 <= record["accuracy"] <= 1.0
    for name in ("table.md", "summary.json", "accuracy_by_segment.png"):
        assert (results / "e5" / name).stat().st_size > 0, name
    overview = (results / "results.md").read_text()
    assert "E5 ablation" in overview and "Paper:" in overview and (
        "E1 stacked MQAR capacity\nNot run yet.\n\nPaper: MQAR" in overview)
    # resumable: nothing is trained again
    lines = []
    run_experiment("e5", quick=True, out=out, results=results, log=lines.append)
    assert not any("to run" in line for line in lines)


def test_a_stopped_job_continues_from_its_checkpoint(tmp_path):
    """A job stopped after a checkpoint (SIGTERM, a crash: no final.json, no job JSON) continues from it when the
    suite runs again; a run of another config in its directory is replaced."""
    import shutil

    from mc_jax.experiments.definitions import _quick_train
    from mc_jax.experiments.jobs import job_file, run_dir, run_job

    job = Job("e5", "g", None, _quick_train(8) + ("train.ckpt_every=4",) + ("train.task.num_kv_pairs=8",
              "train.task.seq_len=16"), 0, lr=1e-3, evaluate="final")
    first = run_job(job, tmp_path)
    rdir = run_dir(tmp_path, job)
    for done in (job_file(tmp_path, job), rdir / "final.json", rdir / "checkpoints" / "8"):  # stopped after step 4
        shutil.rmtree(done) if done.is_dir() else done.unlink()
    again = run_job(job, tmp_path)
    sessions = json.loads((rdir / "run.json").read_text())["sessions"]
    assert len(sessions) == 2  # continued (an overwrite starts run.json again), and exactly: same accuracy
    assert again["accuracy"] == pytest.approx(first["accuracy"], abs=1e-6)
    job_file(tmp_path, job).unlink()
    (rdir / "final.json").unlink()
    changed = dataclasses.replace(job, overrides=job.overrides + ("train.weight_decay=0.5",))
    run_job(changed, tmp_path)
    assert len(json.loads((rdir / "run.json").read_text())["sessions"]) == 1  # replaced, not continued


def test_cli_refuses_unknown_names_and_bad_jobs(capsys):
    assert main(["e9", "--quick"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["e1", "--jobs", "0"]) == 2


def test_failed_job_is_recorded_not_fatal(tmp_path):
    bad = Job("e5", "broken", None, ("model.mixer.memory=nonexistent",), 0, lr=1e-3)
    outcome, = run_jobs([bad], tmp_path, log=lambda *_: None)
    assert "error" in outcome.result and "nonexistent" in outcome.result["error"]


def test_transplant_adds_only_the_router():
    none = load_run_config(None, ["model.mixer.kind=none"])
    mc = load_run_config(None, ["model.mixer.router_init=zeros"])
    _, src, _ = split_model(create_model(none.model, 0))
    _, dst, _ = split_model(create_model(mc.model, 1))
    moved = transplant(src, dst)
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(moved)}
    source = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(src)}
    new = [k for k in flat if k not in source]
    assert new and all("u_proj" in k for k in new) and all(np.all(flat[k] == 0) for k in new)
    assert all(np.array_equal(flat[k], source[k]) for k in source)
    with pytest.raises(ValueError, match="not in the checkpoint"):
        transplant(src, dst, allowed_new=())


def test_gap_closed_and_verdicts():
    s = {"kv32-linear-none": {"mean": 0.2}, "kv32-linear-grm": {"mean": 0.6}, "kv32-linear-grm_log": {"mean": 0.3},
         "kv32-attention": {"mean": 1.0}}
    assert report.gap_closed(s) == pytest.approx({"kv32-linear-grm": 0.5, "kv32-linear-grm_log": 0.125})
    text = " ".join(report.verdict("e1", s))
    assert "closes 50%" in text and "above Log-Linear++ (grm_log): grm" in text


def test_seeds_stuck_at_the_chance_plateau_are_marked_and_still_counted():
    config = {"model": {"vocab_size": 1024}}
    o = lambda seed, acc, loss: Outcome(Job("e1", "kv64-delta-none", None, (), seed, lr=1e-2),
                                        {"accuracy": acc, "train_loss": loss, "config": config})
    runs = [o(1, 0.001, 6.9315), o(0, 0.08, 4.96), o(2, 0.002, 0.99 * np.log(1024) - 0.01)]
    s = report.summarise(runs)["kv64-delta-none"]
    assert s["seeds"] == [0, 1, 2] and s["stuck"] == [False, True, False]
    assert s["mean"] == pytest.approx((0.08 + 0.001 + 0.002) / 3)  # a stuck seed is reported, not dropped
    text = report.table("e1", report.summarise(runs))
    assert "| 8.0, 0.1‡, 0.2 |" in text and "never left the initial plateau" in text
    assert "‡" not in report.table("e1", report.summarise(runs[1:2]))
    assert not report.stuck_at_chance({"bits_per_byte": 7.0, "train_loss": 7.0, "config": config})


def test_sweep_table_marks_each_models_rate_and_the_e4_verdict_compares_the_swept_pair():
    o = lambda group, lr, seed, r: Outcome(Job("e4", group, None, (), seed, lr=lr), r)
    runs = [o("mc_swept", 1e-3, 100, {"bits_per_byte": 2.7}), o("mc_swept", 1e-2, 100, {"bits_per_byte": 2.4}),
            o("none_swept", 1e-3, 100, {"bits_per_byte": 2.5}), o("none_swept", 1e-2, 100, {"error": "nan"}),
            o("mc_swept", 1e-2, 0, {"bits_per_byte": 2.3}), o("none_swept", 1e-3, 0, {"bits_per_byte": 2.6})]
    text = report.sweep_table(runs)
    assert "| lr 0.001 | lr 0.01 |" in text
    assert "| mc_swept | 2.700 | 2.400* |" in text and "| none_swept | 2.500* | failed |" in text
    assert report.sweep_table(runs[4:]) == ""  # no validation-seed runs: no table
    verdict = report.verdict("e4", report.summarise(runs))
    assert verdict == ["MC better than no caching at lr 0.01 / 0.001 (2.300 vs 2.600)"]


def test_e4_sweeps_each_model_only_in_the_extended_plan():
    core, whole = plan_of("e4"), plan_of("e4", extended=True)
    assert [m.group for m in core.models] == ["mc", "none", "attention"] and core.lrs == (3e-3,)
    swept = [m for m in whole.models if m.group.endswith("_swept")]
    assert [m.group for m in swept] == ["mc_swept", "none_swept", "attention_swept"]
    assert all(m.lrs == LRS and m.tier == 1 for m in swept)
    assert [m.all_overrides() for m in swept] == [m.all_overrides() for m in core.models]  # the same models


def test_lr_sweep_budget_cut_and_run_order(tmp_path, monkeypatch):
    """Only models without ``lr_from`` are swept; the others take their source's chosen rate; reported jobs run tier
    by tier, seed by seed."""
    import dataclasses

    from mc_jax.experiments import jobs as jobs_mod

    calls = []

    def fake_run_jobs(todo, out, workers, log, run=True):
        calls.append([j.id for j in todo])
        acc = lambda j: {1e-3: 0.2, 3e-3: 0.5, 1e-2: 0.1}[j.lr] if j.group == "a" else {1e-3: 0.9}.get(j.lr, 0.0)
        return [jobs_mod.Outcome(j, {"accuracy": acc(j)}) for j in todo]

    monkeypatch.setattr(jobs_mod, "run_jobs", fake_run_jobs)
    a = jobs_mod.Job("e", "a", None, (), 0)
    b = jobs_mod.Job("e", "b", None, (), 0)
    c = dataclasses.replace(jobs_mod.Job("e", "c", None, (), 0), lr_from="a", tier=1)
    d = dataclasses.replace(jobs_mod.Job("e", "d", None, (), 0), lr_from="b")
    out = jobs_mod.lr_sweep([c, a, b, d], (0, 1), jobs_mod.LRS, tmp_path, 1)
    assert sorted(calls[0]) == sorted(f"{g}-lr{lr:g}-s100" for g in "ab" for lr in jobs_mod.LRS)  # c, d not swept
    assert calls[1] == ["a-lr0.003-s0", "b-lr0.001-s0", "d-lr0.001-s0", "a-lr0.003-s1", "b-lr0.001-s1",
                        "d-lr0.001-s1", "c-lr0.003-s0", "c-lr0.003-s1"]
    assert len(out) == 6 + 8
    with pytest.raises(ValueError, match="not swept"):
        jobs_mod.lr_sweep([dataclasses.replace(a, lr_from="zz")], (0,), jobs_mod.LRS, tmp_path, 1)
    calls.clear()  # one plan rate, one model with rates of its own: only that model is swept
    e = dataclasses.replace(jobs_mod.Job("e", "e", None, (), 0), lrs=jobs_mod.LRS)
    f = dataclasses.replace(jobs_mod.Job("e", "f", None, (), 0), lr_from="e")  # e's chosen rate, not the plan's
    fake = {1e-3: 0.1, 3e-3: 0.2, 1e-2: 0.7}
    monkeypatch.setattr(jobs_mod, "run_jobs", lambda todo, *a, **k: calls.append([j.id for j in todo]) or [
        jobs_mod.Outcome(j, {"accuracy": fake[j.lr]}) for j in todo])
    out = jobs_mod.lr_sweep([a, e, f], (0,), (3e-3,), tmp_path, 1)
    assert sorted(calls[0]) == sorted(f"e-lr{lr:g}-s100" for lr in jobs_mod.LRS)
    assert calls[1] == ["a-lr0.003-s0", "e-lr0.01-s0", "f-lr0.01-s0"] and len(out) == 3 + 3


def test_worker_starts_no_job_after_the_suite_is_gone(tmp_path, monkeypatch):
    from mc_jax.experiments import jobs as jobs_mod

    monkeypatch.setattr(jobs_mod, "_SUITE_PID", -1)  # not our parent: the suite that started this worker has ended
    job = Job("e", "g", None, (), 0)
    _, result = jobs_mod._run_job_safe(job, str(tmp_path))
    assert "suite process ended" in result["error"]
    assert not (tmp_path / "e").exists()  # nothing started, nothing written


@pytest.mark.slow
def test_post_training_fine_tune_starts_from_the_base_checkpoint(tmp_path):
    """E3 quick: ``posttrain_ft`` / ``base_ft`` train from the base job's checkpoint (``init_from``) and get the NIAH
    grid; ``posttrain`` loads it without training."""
    out = tmp_path / "runs"
    summary = run_experiment("e3", quick=True, out=out, results=tmp_path / "results", log=lambda *_: None)
    names = ("base", "mc", "posttrain", "posttrain_ft", "base_ft")
    assert {f"passkey-{n}" for n in names} <= set(summary)
    for name in ("posttrain_ft", "base_ft"):
        record = json.loads((out / "e3" / "jobs" / f"passkey-{name}-lr0.003-s0.json").read_text())
        assert record["source"] == "passkey-base-lr0.003-s0" and "niah" in record
        final = json.loads((out / "e3" / "runs" / record["id"] / "final.json").read_text())
        assert "passkey-base-lr0.003-s0" in final["init_from"]["checkpoint"], final["init_from"]
        assert final["step"] == 10
    assert "posttrain_ft" in (tmp_path / "results" / "e3" / "table.md").read_text()


def test_estimate_counts_the_planned_runs_and_schedules_them():
    runs = budget.planned_runs(EXPERIMENTS["e2"](False))  # 4 models, 2 seeds; only attention sweeps (its own lrs)
    assert [sum(r.phase == p for r in runs) for p in ("sweep", "final", "after")] == [3, 8, 0]
    assert {r.job.group for r in runs if r.phase == "sweep"} == {"attention"}
    seconds = {r.job.group: r.seconds - budget.RUN_OVERHEAD for r in runs if r.phase == "final"}
    assert seconds["attention_4x"] == pytest.approx(4 * seconds["attention"], rel=0.01)  # 4x the steps, same eval
    e1 = budget.planned_runs(plan_of("e1"))  # the core: lr sweep of linear none / grm / ssc, attention on seed 100
    assert [sum(r.phase == p for r in e1) for p in ("sweep", "final", "after")] == [12, 12, 0]  # 4 models x 3
    e3 = budget.planned_runs(EXPERIMENTS["e3"](False))
    assert sum(r.phase == "after" for r in e3) == 3 * 3 * 2  # posttrain, posttrain_ft, base_ft x needles x seeds
    assert sum(r.phase == "after" for r in budget.planned_runs(plan_of("e3"))) == 3 * 2  # the core: passkey
    assert all(r.seconds > budget.RUN_OVERHEAD for r in runs)
    # the calibration point: a linear GRM stacked-MQAR run of 1500 steps at kv 32, alone
    ref = [r for r in budget.planned_runs(EXPERIMENTS["e5"](False)) if r.job.group == "grm"][0]
    assert ref.seconds == pytest.approx(budget.REFERENCE["seconds"], rel=0.02)
    deep = budget.run_seconds(Job("e1", "x", None, ("model.mixer.memory=titans",), 0, lr=1e-3))
    assert 4 <= (deep - budget.RUN_OVERHEAD) / budget.REFERENCE["seconds"] <= 6
    fake = [budget.RunCost(Job("e", str(i), None, (), 0), "final", c) for i, c in enumerate((4.0, 3.0, 3.0, 2.0))]
    assert budget.wall_seconds(fake, 1) == 12.0
    assert budget.wall_seconds(fake, 2) == pytest.approx(6.0 * budget.SHARED_SLOWDOWN[2])  # {4, 2} and {3, 3}


def test_the_budgeted_core_is_tier_0_and_extended_is_the_whole_plan():
    for name in EXPERIMENTS:
        whole, core = EXPERIMENTS[name](False), plan_of(name)
        assert len(plan_of(name, extended=True).models) == len(whole.models)
        assert [m.group for m in core.models] == [m.group for m in whole.models if m.tier <= CORE_TIER]
        assert {a.source for a in core.after} <= {m.group for m in core.models}
    assert plan_of("e1s").models == [] and len(plan_of("e1s", extended=True).models) > 0
    assert len(plan_of("e5", quick=True).models) == len(EXPERIMENTS["e5"](True).models)  # --quick: every tier


def test_seeds_restrict_the_reported_seeds_and_the_post_training_jobs():
    from mc_jax.experiments.suite import _only_seeds

    plan = plan_of("e3")
    one = _only_seeds(plan, (0,))
    assert one.seeds == (0,) and one.models == plan.models and one.after == plan.after and one.lrs == plan.lrs
    assert _only_seeds(plan, None) is plan
    with pytest.raises(ValueError, match="not seeds of this experiment"):
        _only_seeds(plan, (7,))


def test_only_restricts_the_models_and_keeps_their_rate_sources():
    from mc_jax.experiments.suite import _only_groups

    plan = plan_of("e1", extended=True)
    deep = _only_groups(plan, ("kv32-dla-soup", "kv32-titans-grm", "kv32-linear-residual"))
    groups = {m.group for m in deep.models}
    # the models a variant takes its rate from come along (finished ones are skipped)
    assert groups == {"kv32-dla-soup", "kv32-dla-grm", "kv32-titans-grm", "kv32-linear-residual",
                      "kv32-linear-grm"}
    assert deep.seeds == plan.seeds and deep.lrs == plan.lrs and _only_groups(plan, None) is plan
    e3 = _only_groups(plan_of("e3"), ("passkey-base",))
    assert e3.after and {a.source for a in e3.after} == {"passkey-base"}
    with pytest.raises(ValueError, match="matches no model of this experiment"):
        _only_groups(plan, ("kv32-rnn-*",))
    assert main(["all", "--only", "kv32-*", "--report-only"]) == 2  # one experiment at a time
    assert main(["e1", "--only", "kv32-rnn-*", "--report-only"]) == 2  # a clear error, nothing run


def test_cli_estimate_prints_the_plan_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["all", "--estimate", "--quick"]) == 0
    text = capsys.readouterr().out
    assert all(f"{name} " in text for name in EXPERIMENTS) and "with --jobs 2" in text and "total:" in text
    assert not any(tmp_path.iterdir())


def test_a_preempted_job_stops_the_suite(tmp_path, monkeypatch):
    """SIGTERM during a job (``Preempted``) must stop the suite, not be recorded as a failed job and skipped."""
    from mc_jax.experiments import jobs as jobs_module
    from mc_jax.train import Preempted

    def preempted(job, out):
        raise Preempted("SIGTERM: checkpoint saved", 3, tmp_path, "SIGTERM")

    monkeypatch.setattr(jobs_module, "run_job", preempted)
    with pytest.raises(Preempted):
        run_jobs([Job("e5", "a", None, (), 0, lr=1e-3), Job("e5", "b", None, (), 0, lr=1e-3)], tmp_path,
                 log=lambda *_: None)


def test_report_only_uses_finished_jobs_and_runs_nothing(tmp_path):
    """``run=False`` (``--report-only``): finished jobs are reported; a model whose rate is not chosen yet (its sweep
    is incomplete) and unfinished jobs are left out; nothing is started."""
    import dataclasses

    from mc_jax.experiments import jobs as jobs_mod

    a, b = Job("e", "a", None, (), 0), Job("e", "b", None, (), 0)
    c = dataclasses.replace(Job("e", "c", None, (), 0), lr_from="b")

    def finish(job, acc):
        path = jobs_mod.job_file(tmp_path, job)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": job.id, "accuracy": acc}))

    for lr, acc in zip(jobs_mod.LRS, (0.1, 0.3, 0.2)):
        finish(dataclasses.replace(a, seed=jobs_mod.VALIDATION_SEED, lr=lr), acc)
    finish(dataclasses.replace(b, seed=jobs_mod.VALIDATION_SEED, lr=1e-3), 0.5)  # b's sweep is incomplete
    finish(dataclasses.replace(a, seed=0, lr=3e-3), 0.4)
    out = jobs_mod.lr_sweep([a, b, c], (0, 1), jobs_mod.LRS, tmp_path, 1, run=False)
    assert sorted(o.job.id for o in out) == sorted(["a-lr0.001-s100", "a-lr0.003-s100", "a-lr0.01-s100",
                                                    "b-lr0.001-s100", "a-lr0.003-s0"])
    assert all(o.skipped for o in out)
    assert len(list((tmp_path / "e" / "jobs").iterdir())) == 5  # nothing new


def test_e1_sweeps_each_memory_and_the_rest_borrow_from_the_same_model():
    sources = {m.group: m.lr_from for m in plan_of("e1", extended=True).models}
    for memory in ("dla", "titans"):
        assert sources[f"kv32-{memory}-none"] is None and sources[f"kv32-{memory}-grm"] is None
        assert sources[f"kv32-{memory}-soup"] == f"kv32-{memory}-grm"
    for memory in ("linear", "delta", "swla"):
        for variant in ("none", "grm", "ssc"):
            assert sources[f"kv32-{memory}-{variant}"] is None  # swept on the validation seed
            assert sources[f"kv64-{memory}-{variant}"] == f"kv32-{memory}-{variant}"
        for variant in ("residual", "grm_log", "grm_checkpoint"):
            assert sources[f"kv32-{memory}-{variant}"] == f"kv32-{memory}-grm"
    assert sources["kv32-attention"] is None and sources["kv64-sliding_window"] == "kv32-attention"
