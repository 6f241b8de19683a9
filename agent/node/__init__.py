"""The agent as a DICOM node: C-ECHO and C-STORE SCP (PS3.4 Annexes A and B)."""
