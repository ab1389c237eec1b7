"""Teacher vs student report (the paper's Table 2 form): one row per task and group with the
teacher's and the student's value and student/teacher in percent, as markdown and JSON, with the
95 % paired-bootstrap intervals of both and of their difference (`harness.intervals`)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import storage

TASK_TITLES = {
    "ssc": "sSC",
    "tsc": "tSC",
    "salmon": "SALMon",
    "swuggy": "sWUGGY",
    "sblimp": "sBLIMP",
    "pairs": "pairs",
    "ppl": "perplexity",
}


def metric_rows(task: str, result: dict) -> list[dict]:
    """[{"task", "group", "metric", "value", "higher_is_better"}] from one `evaluate` result."""
    title = TASK_TITLES.get(task, task)
    if task == "ppl":
        rows = [
            dict(
                task=title,
                group="",
                metric="ppl per token",
                value=result["ppl"],
                higher_is_better=False,
            )
        ]
        if "ppl_per_second" in result:
            rows.append(
                dict(
                    task=title,
                    group="",
                    metric="NLL nats/s",
                    value=result["nll_per_second"],
                    higher_is_better=False,
                )
            )
        return rows
    rows = [
        dict(
            task=title,
            group="",
            metric="accuracy %",
            value=100 * result["accuracy"],
            higher_is_better=True,
        )
    ]
    rows += [
        dict(
            task=title,
            group=g,
            metric="accuracy %",
            value=100 * r["accuracy"],
            higher_is_better=True,
        )
        for g, r in result.get("groups", {}).items()
    ]
    return rows


def compare_rows(task: str, teacher: dict, student: dict) -> list[dict]:
    rows = []
    for t, s in zip(metric_rows(task, teacher), metric_rows(task, student)):
        ratio = 100 * s["value"] / t["value"] if t["value"] else None
        rows.append(dict(t, teacher=t.pop("value"), student=s["value"], student_over_teacher=ratio))
    return rows


def _ci(value: float, ci: list, digits: int, sign: str = "") -> str:
    f = f"{sign}.{digits}f"
    return f"{value:{f}} [{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]"


def interval_line(task: str, intervals: dict) -> str:
    """One line of `evaluate`'s "intervals": each model's value [lo, hi] and, with a teacher,
    student - teacher [lo, hi] (accuracy in %, or perplexity)."""
    digits = 3 if task == "ppl" else 2
    r = intervals["result"]
    what = "sequences" if task == "ppl" else "pairs"
    kind = "paired-bootstrap intervals" if "teacher_result" in intervals else "bootstrap interval"
    head = (
        f"eval {task}: 95 % {kind} ({intervals['draws']} resamples of "
        f"{r['n']} {what}, seed {intervals['seed']}; "
        + ("perplexity" if task == "ppl" else "accuracy %")
        + "): "
    )
    if "teacher_result" not in intervals:
        return head + "model " + _ci(r["value"], r["ci"], digits)
    t, d = intervals["teacher_result"], intervals["difference"]
    return head + ", ".join(
        (
            "student " + _ci(r["value"], r["ci"], digits),
            "teacher " + _ci(t["value"], t["ci"], digits),
            "student - teacher " + _ci(d["diff"], d["ci"], digits, "+"),
        )
    )


def markdown(
    rows: list[dict], teacher: str, student: str, task: str = "", intervals: dict | None = None
) -> str:
    """The report's markdown; with `intervals` (`evaluate`'s, of `task`) their line below."""
    lines = [
        f"Teacher: `{teacher}`  ",
        f"Student: `{student}`",
        "",
        "| task | group | metric | teacher | student | student/teacher % |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "-" if r["student_over_teacher"] is None else f"{r['student_over_teacher']:.1f}"
        lines.append(
            f"| {r['task']} | {r['group'] or 'all'} | {r['metric']} | {r['teacher']:.2f} "
            f"| {r['student']:.2f} | {ratio} |"
        )
    lines += [
        "",
        "student/teacher % is student / teacher x 100; for perplexity and NLL lower "
        "is better, so above 100 means the student is worse.",
    ]
    if intervals is not None:
        lines += ["", interval_line(task, intervals).removeprefix(f"eval {task}: ")]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path, rows: list[dict], teacher: str, student: str, details: dict
) -> tuple[Path, Path]:

    out_dir = storage.path(out_dir)
    if not storage.is_remote(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "report.md", out_dir / "report.json"
    md.write_text(markdown(rows, teacher, student, details["task"], details.get("intervals")))
    js.write_text(
        json.dumps(
            {"teacher": teacher, "student": student, "rows": rows, "results": details}, indent=2
        )
        + "\n"
    )
    return md, js
