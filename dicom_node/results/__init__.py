"""Encoding of results for the PACS: DICOM SEG (``seg``), TID 1500 SR (``sr``), the dispatch gate
(``validate``: dciodvfy + highdicom read-back + atomic write), read-back helpers (``readback``),
the Secondary Capture fallback and PNG check (``secondary_capture``); codes in CODES.md.

Nothing is imported here so that importing the package at CLI start stays cheap (highdicom is
heavy); import the submodules where they are used.
"""
