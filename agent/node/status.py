"""DIMSE status codes the node answers with (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

SUCCESS = 0x0000
#: Refused: out of resources (disk full, storage watermark, write error).
OUT_OF_RESOURCES = 0xA700
#: Error: cannot understand (the dataset does not decode, lacks required UIDs, or its
#: Pixel Data does not match its Image Pixel Module or runs past the end of the data).
CANNOT_UNDERSTAND = 0xC210
#: Error: processing failure (the database did not record the instance).
PROCESSING_FAILURE = 0xC211
#: Error: invalid identifiers (a UID that is not a UID, or that disagrees with the
#: command's Affected SOP Instance UID). Within the implementation-specific C000-CFFF range.
INVALID_IDENTIFIER = 0xC212
#: Error: beyond the configured limits (pixels per frame, frames, inflated dataset size).
#: Within C000-CFFF: a permanent error, never "out of resources", which invites a retry.
BEYOND_LIMITS = 0xC213
