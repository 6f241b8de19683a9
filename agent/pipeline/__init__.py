"""The screening pipeline inside ``serve``: sweep, screen, report, deliver.

Data travels one way: series rows -> job decisions -> volumes -> probabilities
-> report files -> C-STORE. Each stage reads what the previous one committed,
so any stage can stop and resume across a restart.
"""
