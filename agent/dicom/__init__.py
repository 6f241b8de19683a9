"""DICOM instances as the agent reads them: headers, UIDs and the encoding checks.

Neutral ground: the node, ``explain --dir`` and the record of a received
instance all read a dataset through :mod:`agent.dicom.header`, and every UID
through the one rule in :mod:`agent.dicom.uid`. Nothing here knows the
database or the network.
"""
