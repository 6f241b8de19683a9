"""``hyperct-agent explain UID | --dir PATH``: why a series is (or is not) screened.

With a UID, the series or study is read from the agent's database: each
series shows its job row's state and the reasons the sweep recorded, and the
completeness and eligibility checks judged now with the configured settings.
With ``--dir``, a folder is decided by the sweep's own functions without a
running agent or database; the folder is taken as all there is, so
completeness timers do not apply. Files left out are counted per reason.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="show the completeness, eligibility and selection decision with every reason",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "uid", nargs="?", type=args_.uid, help="a stored Series or Study Instance UID"
    )
    what.add_argument("--dir", type=args_.path, help="a folder of DICOM files (no agent needed)")
    p.add_argument("--config", type=args_.path, help="agent.toml (default: the embedded defaults)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.series.explain import render

    if args.dir is not None:
        print(render(_from_folder(args.dir, args.config)), end="")
        return 0
    studies, only = _from_database(args.uid, args.config)
    print(render(studies, only=only), end="")
    return 0


def _from_folder(folder: Path, config: Path | None) -> list[Any]:
    from agent.config import load_settings
    from agent.intake.folder import read_folder
    from agent.series.explain import decide_folder

    settings = load_settings(config, check_files=False)
    if not folder.is_dir():
        raise AgentError(f"{folder}: not a folder")
    found = read_folder(folder, settings.node.accepted_sop_classes)
    if found.skipped:
        print(skipped_summary(folder, found.skipped))
    if not found.series:
        reasons = " (reasons above)" if found.skipped else ""
        raise AgentError(f"{folder}: no DICOM files found that the node would store{reasons}")
    return decide_folder(
        found.series, settings.completeness, settings.eligibility, datetime.now(UTC)
    )


def skipped_summary(folder: Path, skipped: list[tuple[Path, str]], examples: int = 3) -> str:
    """One line per reason, most files first, with a few file names relative to ``folder``."""
    by_reason: dict[str, list[Path]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    lines = [f"skipped {len(skipped)} of the files under {folder}:"]
    for reason, paths in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        names = ", ".join(str(p.relative_to(folder)) for p in paths[:examples])
        more = ", ..." if len(paths) > examples else ""
        lines.append(f"  {len(paths)} {reason}: {names}{more}")
    return "\n".join(lines) + "\n"


def _from_database(uid: str, config: Path | None) -> tuple[list[Any], str | None]:
    """The decisions for ``uid``'s study, and ``uid`` itself when it names a series."""
    from sqlalchemy import select

    from agent.intake.stored import study_facts_from_db
    from agent.runtime import open_runtime
    from agent.series.explain import JobNote, decide_stored
    from storage.models import Job, Series, Study

    runtime = open_runtime(config, migrate=False, check_files=False)
    try:
        with runtime.sessions() as session:
            study_uid = session.scalar(
                select(Study.study_instance_uid)
                .join(Series, Series.study_id == Study.id)
                .where(Series.series_instance_uid == uid)
            )
            only_series = study_uid is not None
            facts = study_facts_from_db(session, study_uid or uid, runtime.settings.storage.root)
            if not facts:
                raise AgentError(f"no series or study with UID {uid!r} in the database")
            jobs = {
                row.series_instance_uid: JobNote(
                    str(getattr(row.state, "value", row.state)),
                    row.reason,
                    row.last_error,
                    row.image_check,
                    referral_words(
                        row.echo_referral, row.referral_tasks, row.referral_rule, row.referral_id
                    ),  # fmt: skip
                )
                for row in session.execute(
                    select(
                        Series.series_instance_uid,
                        Job.state,
                        Job.reason,
                        Job.last_error,
                        Job.image_check,
                        Job.echo_referral,
                        Job.referral_tasks,
                        Job.referral_rule,
                        Job.referral_id,
                    )
                    .join(Job, Job.series_id == Series.id)
                    .where(Series.series_instance_uid.in_([f.series_instance_uid for f in facts]))
                )
            }
        settings = runtime.settings
    finally:
        runtime.close()
    # The study's choice needs every series even when one is asked for.
    studies = decide_stored(
        facts, jobs, settings.completeness, settings.eligibility, datetime.now(UTC)
    )
    return studies, (uid if only_series else None)


def referral_words(
    echo: bool | None, tasks: list[str] | None, rule: dict[str, Any] | None, referral: int | None
) -> str | None:
    """The referral decided at screening, as every output words it; None before screening."""
    if echo is None:
        return None
    if not echo:
        return "no echocardiography referral"
    from agent.report.referral import ReferralDecision

    decision = ReferralDecision.from_stored(tasks, rule)
    episode = f" (referral {referral})" if referral is not None else ""
    fired = ", ".join(decision.fired)
    if decision.suppressed:
        return f"{decision.repeat_line()}{episode}; fired by {fired}"
    repeat = f"; {decision.repeat_line()}" if decision.repeat else ""
    return f"recommended{episode}, fired by {fired}{repeat}"
