"""Conformance tests: what we write is valid DICOM (dciodvfy, dsrdump, highdicom read-back)."""
