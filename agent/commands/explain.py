"""``hyperct-agent explain UID | --dir PATH``: why a series is (or is not) screened.

With a UID, the series or study is read from the agent's database and judged
now with the configured settings; the job row's stored state and reason are
shown too. With ``--dir``, a folder of DICOM files is judged the same way
without a running agent or database; the folder is taken as all there is, so
completeness timers do not apply.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="show the completeness, eligibility and selection decision with every reason",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("uid", nargs="?", help="a stored Series or Study Instance UID")
    what.add_argument("--dir", type=Path, help="a folder of DICOM files (no agent needed)")
    p.add_argument("--config", type=Path, help="agent.toml (default: the embedded defaults)")
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
    from agent.series.explain import decide_studies
    from agent.series.facts import read_folder

    settings = load_settings(config)
    if not folder.is_dir():
        raise AgentError(f"{folder}: not a folder")
    found = read_folder(folder)
    if not found.series:
        others = f" ({len(found.skipped)} other files)" if found.skipped else ""
        raise AgentError(f"{folder}: no DICOM files found{others}")
    if found.skipped:
        print(f"note: {len(found.skipped)} files under {folder} are not readable DICOM; ignored")
    return decide_studies(
        found.series,
        settings.completeness,
        settings.eligibility,
        datetime.now(UTC),
        final=True,
    )


def _from_database(uid: str, config: Path | None) -> tuple[list[Any], str | None]:
    """The decisions for ``uid``'s study, and ``uid`` itself when it names a series."""
    from sqlalchemy import select

    from agent.runtime import open_runtime
    from agent.series.explain import JobNote, decide_studies
    from agent.series.facts import study_facts_from_db
    from storage.models import Job, Series, Study

    runtime = open_runtime(config, migrate=False)
    try:
        with runtime.sessions() as session:
            study_uid = session.scalar(
                select(Study.study_instance_uid)
                .join(Series, Series.study_id == Study.id)
                .where(Series.series_instance_uid == uid)
            )
            only_series = study_uid is not None
            facts = study_facts_from_db(session, study_uid or uid)
            if not facts:
                raise AgentError(f"no series or study with UID {uid!r} in the database")
            jobs = {
                series_uid: JobNote(str(getattr(state, "value", state)), reason, error, image)
                for series_uid, state, reason, error, image in session.execute(
                    select(
                        Series.series_instance_uid,
                        Job.state,
                        Job.reason,
                        Job.last_error,
                        Job.image_check,
                    )
                    .join(Job, Job.series_id == Series.id)
                    .where(Series.series_instance_uid.in_([f.series_instance_uid for f in facts]))
                )
            }
        settings = runtime.settings
    finally:
        runtime.close()
    # Selection needs the whole study even when one series is asked for.
    studies = decide_studies(
        facts, settings.completeness, settings.eligibility, datetime.now(UTC), jobs=jobs
    )
    return studies, (uid if only_series else None)
