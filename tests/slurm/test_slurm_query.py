"""slurm_query: parsing on output captured from the real test cluster (captured/, made by
capture_output.py), and the query against live clusters in each accounting mode."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from itwinai_hpc.backends.slurm import exit_status as x
from itwinai_hpc.backends.slurm import query as q

CAPTURED = Path(__file__).parent / "captured"


def captured(mode: str, name: str) -> str:
    return (CAPTURED / mode / name).read_text()


def jobs(mode: str) -> dict[str, str]:
    return json.loads(captured(mode, "jobs.json"))


# (mode, file, parser): every live snapshot of every mode, parsed by the parser for its command
LIVE = [("jobcomp", "scontrol-live.txt", q.parse_scontrol_jobs),
        ("dbd", "scontrol-live.txt", q.parse_scontrol_jobs),
        ("dbd", "sacct-live.txt", q.parse_sacct)]
FINAL = [("jobcomp", "scontrol-final.txt", q.parse_scontrol_jobs),
         ("dbd", "scontrol-final.txt", q.parse_scontrol_jobs),
         ("dbd", "sacct-final.txt", q.parse_sacct)]
ids = pytest.mark.parametrize("mode,name,parse", LIVE, ids=[f"{m}-{n}" for m, n, _ in LIVE])
final_ids = pytest.mark.parametrize("mode,name,parse", FINAL,
                                    ids=[f"{m}-{n}" for m, n, _ in FINAL])


@ids
def test_completed_job_has_exit_code_zero(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["completed"]]
    assert (info.state, info.exit_code, info.finished, info.succeeded) == \
        ("COMPLETED", 0, True, True)
    assert info.nodes in ("node1", "node2")


@ids
def test_failed_job_keeps_its_exit_code(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["failed"]]
    assert (info.state, info.exit_code, info.signal) == ("FAILED", 3, 0)


@ids
def test_job_cancelled_while_pending_has_no_exit_code_and_no_nodes(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["cancelled_pending"]]
    assert (info.state, info.exit_code, info.nodes) == ("CANCELLED", None, "")


@ids
def test_array_with_one_failed_task_is_failed_with_that_tasks_exit_code(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["array"]]
    assert (info.state, info.exit_code) == ("FAILED", 5)
    assert sorted(info.tasks) == ["0", "1", "2", "3"]
    assert info.tasks["2"].state == "FAILED"
    assert {t.state for k, t in info.tasks.items() if k != "2"} == {"COMPLETED"}


@ids
def test_array_tasks_are_not_reported_as_separate_jobs(mode, name, parse):
    found = parse(captured(mode, name))
    assert set(found) == set(jobs(mode).values())


@ids
def test_dependent_of_failed_job_pends_with_reason(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["dependent_of_failed"]]
    assert (info.state, info.reason, info.exit_code) == \
        ("PENDING", "DependencyNeverSatisfied", None)


@ids
def test_running_job_has_nodes_and_no_exit_code_yet(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["running"]]
    assert (info.state, info.exit_code, info.finished) == ("RUNNING", None, False)
    assert info.nodes and info.elapsed is not None


@ids
def test_throttled_array_is_running_while_its_other_tasks_pend(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["array_throttled"]]
    assert info.state == "RUNNING"
    assert info.tasks["0"].state == "RUNNING"
    assert info.tasks["[1-3%1]"].state == "PENDING"


@final_ids
def test_job_that_hit_its_time_limit_is_timeout(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["timeout"]]
    assert info.state == "TIMEOUT" and info.elapsed >= 60


@final_ids
def test_cancelled_running_job_is_cancelled_and_ran_on_a_node(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["running"]]
    assert info.state == "CANCELLED"
    assert info.nodes


@final_ids
def test_cancelled_array_is_cancelled(mode, name, parse):
    info = parse(captured(mode, name))[jobs(mode)["array_throttled"]]
    assert info.state == "CANCELLED"


def test_sacct_writes_cancelled_by_uid_which_becomes_cancelled():
    assert "CANCELLED by 0" in captured("dbd", "sacct-live.txt")
    assert q.normalize_state("CANCELLED by 0") == "CANCELLED"


def test_squeue_gives_states_and_reasons_but_no_exit_codes():
    found = q.parse_squeue(captured("jobcomp", "squeue-live.txt"))
    j = jobs("jobcomp")
    assert found[j["failed"]].state == "FAILED" and found[j["failed"]].exit_code is None
    assert found[j["dependent_of_failed"]].reason == "DependencyNeverSatisfied"
    assert found[j["array"]].state == "FAILED"
    assert found[j["array_throttled"]].tasks["[1-3%1]"].reason == "JobArrayTaskLimit"


def test_jobcomp_log_has_finished_jobs_only():
    found = q.parse_sacct(captured("jobcomp", "jobcomp-final.txt"))
    j = jobs("jobcomp")
    assert found[j["failed"]].exit_code == 3
    assert found[j["timeout"]].state == "TIMEOUT"
    assert j["dependent_of_failed"] in found  # cancelled by capture_output.py: finished
    assert j["cancelled_pending"] in found


def test_jobcomp_log_finds_an_array_only_by_the_task_that_carries_the_array_id():
    # sacct -c knows no array ids: -j 4 matches the one task whose own id is 4 (the last), so
    # its answer for an array is one task's record, never the array's state
    found = q.parse_sacct(captured("jobcomp", "jobcomp-live.txt"))
    array = found[jobs("jobcomp")["array"]]
    assert array.tasks == {} and array.state == "COMPLETED"


def test_array_known_only_to_the_jobcomp_log_is_failed_by_its_tasks_exit_statuses():
    job = jobs("jobcomp")["array"]
    record = q.parse_sacct(captured("jobcomp", "jobcomp-live.txt"))[job]
    info = x.complete_array(job, "0-3", record, {"0": 0, "1": 0, "2": 5, "3": 0})
    assert (info.state, info.exit_code) == ("FAILED", 5)


def test_purged_array_without_accounting_is_read_from_its_tasks_exit_statuses():
    info = x.complete_array("9", "0-3", None, {"0": 0, "1": 0, "2": 0, "3": 0})
    assert (info.state, info.exit_code, info.finished) == ("COMPLETED", 0, True)


def test_array_task_the_controller_still_runs_keeps_the_array_running():
    live = q.parse_scontrol_jobs(captured("jobcomp", "scontrol-live.txt"))
    job = jobs("jobcomp")["array_throttled"]
    assert x.complete_array(job, "0-3%1", live[job], {}).state == "RUNNING"


def test_array_tasks_purged_one_by_one_combine_controller_and_exit_statuses():
    tasks = {"2": q.JobInfo("9_2", "COMPLETED", 0), "3": q.JobInfo("9_3", "COMPLETED", 0)}
    still_known = q.aggregate("9", tasks)
    info = x.complete_array("9", "0-3", still_known, {"0": 0, "1": 7})
    assert (info.state, info.exit_code) == ("FAILED", 7)


def test_array_task_that_left_no_exit_status_is_not_taken_for_completed():
    info = x.complete_array("9", "0-3", None, {"0": 0, "1": 0, "3": 0})
    assert info.state == "CANCELLED" and "without an exit status" in info.reason


def test_array_cancelled_before_any_task_ran_is_cancelled_by_its_jobcomp_record():
    record = q.parse_sacct("9|9|CANCELLED|0:0|00:00:00|(null)\n")["9"]
    assert x.complete_array("9", "0-3", record, {}).state == "CANCELLED"


def test_array_that_full_accounting_has_recorded_in_part_is_not_final_yet():
    # seen on the dbd cluster: right after the tasks ended, sacct had the last task only
    partial = q.aggregate("9", {"3": q.JobInfo("9_3", "COMPLETED", 0)})
    info = x.until_recorded_in_full("0-3", partial)
    assert not info.finished and "task(s) 0, 1, 2" in info.reason
    full = q.parse_sacct(captured("dbd", "sacct-live.txt"))[jobs("dbd")["array"]]
    assert x.until_recorded_in_full("0-3", full) == full


def test_nothing_known_about_an_array_is_none_so_the_caller_can_infer():
    assert x.complete_array("9", "0-3", None, {}) is None


def test_exit_status_143_is_explained_as_sigterm():
    info = x.info_from_exit_status("9", 143)
    assert (info.state, info.exit_code) == ("FAILED", 143) and "SIGTERM" in info.reason


@pytest.mark.parametrize("mode", ["jobcomp", "dbd"])
def test_accounting_mode_is_read_from_the_controller_config(mode):
    assert q.parse_accounting_mode(captured(mode, "config.txt")) == mode


def test_accounting_mode_without_storage_or_jobcomp_is_none():
    text = ("AccountingStorageType   = accounting_storage/none\n"
            "JobCompType             = jobcomp/none\n")
    assert q.parse_accounting_mode(text) == "none"


@pytest.mark.parametrize("raw,state", [
    ("COMPLETING", "RUNNING"), ("CONFIGURING", "RUNNING"), ("BOOT_FAIL", "NODE_FAIL"),
    ("OUT_OF_MEMORY", "OUT_OF_MEMORY"), ("REQUEUED", "REQUEUED"), ("PREEMPTED", "PREEMPTED"),
    ("DEADLINE", "TIMEOUT"), ("RUNNING+", "RUNNING")])
def test_slurm_state_names_are_folded_into_the_documented_set(raw, state):
    assert q.normalize_state(raw) == state


def test_completing_job_is_not_final_so_callers_do_not_cache_it():
    info = q.parse_scontrol_jobs("JobId=7 JobState=COMPLETING Reason=NonZeroExitCode "
                                 "ExitCode=3:0 RunTime=00:00:02 NodeList=node1")["7"]
    assert not info.finished and info.exit_code is None


@pytest.mark.parametrize("text,seconds", [
    ("00:00:07", 7), ("1:02", 62), ("2-03:04:05", 183845), ("01:00:00.123", 3600),
    ("INVALID", None), ("", None)])
def test_elapsed_formats_of_sacct_scontrol_and_squeue(text, seconds):
    assert q.parse_elapsed(text) == seconds


def test_array_of_finished_tasks_takes_the_worst_state():
    tasks = {"0": q.JobInfo("1_0", "COMPLETED", 0), "1": q.JobInfo("1_1", "CANCELLED", 0),
             "2": q.JobInfo("1_2", "TIMEOUT", 0, 15), "3": q.JobInfo("1_3", "COMPLETED", 0)}
    assert q.aggregate("1", tasks).state == "TIMEOUT"
    tasks["4"] = q.JobInfo("1_4", "FAILED", 2)
    agg = q.aggregate("1", tasks)
    assert (agg.state, agg.exit_code) == ("FAILED", 2)


def test_array_with_any_active_task_is_not_finished_even_after_a_failure():
    tasks = {"0": q.JobInfo("1_0", "FAILED", 1), "[1-3]": q.JobInfo("1_[1-3]", "PENDING")}
    assert q.aggregate("1", tasks).state == "PENDING"


def test_sacct_command_names_ids_start_time_and_allocation_only():
    cmd = q.build_sacct_command(["12", "15"], datetime(2026, 11, 26, 14, 0, 5))
    assert cmd[:2] == ["sacct", "-X"]
    assert cmd[cmd.index("-j") + 1] == "12,15"
    assert cmd[cmd.index("--starttime") + 1] == "2026-11-26T14:00:05"
    assert cmd[cmd.index("-o") + 1].startswith("JobIDRaw,JobID,State,ExitCode")


def test_scontrol_fields_keep_values_with_slashes_and_colons():
    f = q.parse_scontrol_fields("JobId=3 ReqB:S:C:T=0:0:*:* Socks/Node=* "
                                "StdOut=/tmp/a b/out.txt Power=")
    assert f == {"JobId": "3", "ReqB:S:C:T": "0:0:*:*", "Socks/Node": "*",
                 "StdOut": "/tmp/a b/out.txt", "Power": ""}


class FakeSlurm:
    """A `run` for query_jobs: answers scontrol and sacct with the given text, records calls."""

    def __init__(self, scontrol: str = "", sacct: str = ""):
        self.outputs, self.calls = {"scontrol": scontrol, "sacct": sacct}, []

    def __call__(self, cmd, **kw):
        self.calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, self.outputs[cmd[0]], "")


def test_query_in_scontrol_mode_is_one_call_when_the_controller_knows_every_job():
    run = FakeSlurm(scontrol=captured("jobcomp", "scontrol-live.txt"))
    j = jobs("jobcomp")
    found = q.query_jobs([j["failed"], j["array"]], "now-1hour", "jobcomp", run=run)
    assert len(run.calls) == 1 and found[j["failed"]].exit_code == 3
    assert set(found) == {j["failed"], j["array"]}


def test_query_asks_the_jobcomp_log_only_for_jobs_the_controller_forgot():
    run = FakeSlurm(scontrol="JobId=1 JobState=RUNNING RunTime=00:00:02 NodeList=node1 "
                             "ExitCode=0:0", sacct="2|2|FAILED|3:0|00:00:01|node2\n")
    found = q.query_jobs(["1", "2", "3"], "now-1hour", "jobcomp", run=run)
    assert run.calls[1] == q.build_jobcomp_command(["2", "3"])
    assert (found["1"].state, found["2"].state, "3" in found) == ("RUNNING", "FAILED", False)


def test_query_of_jobs_that_all_ended_asks_only_the_jobcomp_log():
    run = FakeSlurm(sacct=captured("jobcomp", "jobcomp-final.txt"))
    j = jobs("jobcomp")
    ids = [j["failed"], j["timeout"]]
    found = q.query_jobs(ids, "now-1hour", "jobcomp", run=run, ended=set(ids))
    assert run.calls == [q.build_jobcomp_command(ids)]
    assert (found[j["failed"]].exit_code, found[j["timeout"]].state) == (3, "TIMEOUT")


def test_a_requeued_runs_record_in_the_jobcomp_log_is_not_final():
    # jobcomp-requeued.txt: `sacct -c` for a job (sbatch --requeue) that ran
    # `scontrol requeue $SLURM_JOB_ID` once, then completed: one record per run
    text = captured("jobcomp", "jobcomp-requeued.txt")
    assert not q.parse_sacct(text.splitlines()[0])["63"].finished
    assert q.parse_sacct(text)["63"].state == "COMPLETED"      # the latest record wins


def test_ended_job_whose_log_record_is_not_final_is_asked_from_the_controller():
    run = FakeSlurm(scontrol="JobId=63 JobState=RUNNING RunTime=00:00:02 NodeList=node1 "
                             "ExitCode=0:0", sacct="63|63|PENDING|0:0|00:00:00|node1\n")
    found = q.query_jobs(["63"], "now-1hour", "jobcomp", run=run, ended={"63"})
    assert [c[0] for c in run.calls] == ["sacct", "scontrol"]
    assert found["63"].state == "RUNNING"


def test_failing_query_command_raises_with_its_stderr():
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "Unable to contact slurm controller")

    with pytest.raises(q.SlurmQueryError, match="Unable to contact"):
        q.query_jobs(["1"], "now", "dbd", run=run)


# ---- live: the real clusters ------------------------------------------------------------

@pytest.mark.slurm
def test_main_test_cluster_uses_the_jobcomp_log(slurm_cluster):
    assert q.detect_accounting() == "jobcomp" == slurm_cluster.accounting


@pytest.mark.slurm
def test_query_reports_failed_and_running_jobs_of_the_live_cluster(slurm_cluster, tmp_path):
    failed = slurm_cluster.sbatch("-D", str(tmp_path), "--wrap", "exit 3")
    running = slurm_cluster.sbatch("-D", str(tmp_path), "--wrap", "sleep 60")
    slurm_cluster.wait_for_jobs([failed])
    slurm_cluster.wait_for_state(running, {"RUNNING"})
    start = datetime.now() - timedelta(minutes=5)
    found = q.query_jobs([failed, running], start, q.detect_accounting())
    slurm_cluster.run("scancel", running)
    assert (found[failed].state, found[failed].exit_code) == ("FAILED", 3)
    assert found[running].state == "RUNNING"


# A job the controller has purged, in each accounting mode: tests/test_slurm_purged.py
