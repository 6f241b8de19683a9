"""Echo outcomes in: echocardiogram results turned into labels and matched to screened CTs.

``measurements`` names what is read, ``labels`` turns it into the seven echo tasks'
labels, ``csv_rows`` reads an echo reporting system's export, ``echo_sr`` reads a
TID 5200 Echocardiography Procedure Report and ``intake`` stores a received one.
Matching to CTs lives in :mod:`storage.outcomes`.
"""
