"""The words a cell's current label may be besides a class of the model: the vocabulary the
gallery, the differential, the report and the agreement figures share."""

from __future__ import annotations

# Under the model's threshold, or every cell of a flagged batch: waiting for a person.
UNIDENTIFIED = "unidentified"
# A reviewer's "none of these classes" (debris, a smudge): counted nowhere.
NOT_CLASSED = "not classed"
# A cell of a batch still being classified: no prediction yet, counted nowhere.
PENDING = "pending"
