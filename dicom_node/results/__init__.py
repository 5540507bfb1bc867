"""Encoding of results for the PACS: ``build`` (one call: every file a job's destinations ask for,
validated, and what to send where), DICOM SEG (``seg``), TID 1500 SR (``sr``), the dispatch gate
(``validate``: dciodvfy + highdicom read-back + atomic write), read-back helpers (``readback``),
the Secondary Capture fallback and PNG check (``secondary_capture``); codes in CODES.md.

Nothing is imported here so that importing the package at CLI start stays cheap (highdicom is
heavy); import the submodules where they are used. Only the name of the overlay picture lives
here: the status page shows it without loading the encoders.
"""

THUMB_NAME = "thumb.png"  # overlay picture for the status page, in a job's results folder beside seg.dcm
