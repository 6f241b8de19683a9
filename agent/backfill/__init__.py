"""Archive backfill: find eligible chest CTs in an archive, retrieve them paced, screen them.

A campaign is planned from C-FIND (or QIDO-RS) results judged with the
eligibility rules, stored in ``backfill_campaigns`` / ``backfill_series``,
then retrieved (C-MOVE, C-GET or WADO-RS) within the configured windows and
rates. Retrieved instances enter through the node like any other and are
screened after live series.
"""
