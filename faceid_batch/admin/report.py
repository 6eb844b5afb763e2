"""Read results back for people: the ``results`` table."""

from __future__ import annotations

from collections.abc import Iterable

from faceid_batch.admin.queries import ResultRow


def format_results_table(rows: Iterable[ResultRow]) -> str:
    """A plain-text table of query rows (queries.list_results, iter_results), one job a line."""
    rows = list(rows)
    header = ("ID", "KEY", "LANE", "STATE", "TRIES", "RESULT", "SIM", "PASS", "REQUEST ID")
    lines = [header]
    for r in rows:
        verdict = {True: "pass", False: "fail", None: "-"}[r.passed]
        lines.append((
            str(r.id), r.key, r.lane, r.state, str(r.attempts), r.code or "-",
            f"{r.sim:.2f}" if r.sim is not None else "-", verdict, r.request_id or "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    errors = [f"  job {r.id}: {r.error}" for r in rows if r.error]
    if errors:
        out += ["", "errors:", *errors]
    return "\n".join(out)
