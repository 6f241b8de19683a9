"""From what was received to what storage and the series rules take.

The one place that knows both :mod:`agent.dicom` and :mod:`storage`: a read
header becomes the record the node stores (:mod:`agent.intake.record`), and
stored rows or a folder of files become the plain
:class:`~agent.series.facts.SeriesFacts` the series rules judge
(:mod:`agent.intake.stored`, :mod:`agent.intake.folder`).
"""
