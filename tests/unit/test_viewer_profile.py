"""The per-destination viewer profile: which SEG variant each viewer gets, and config errors naming the key."""
from __future__ import annotations

import pytest

from dicom_node.config import VIEWERS, ConfigError, DestinationSettings, load_config
from dicom_node.results.build import VARIANTS, seg_options, seg_variant


def _dest_yaml(body: str) -> str:
    return "destinations:\n  viewer:\n    ae_title: ORTHANC\n" + "".join(f"    {line}\n" for line in body.splitlines())


def test_each_viewer_and_option_maps_to_a_known_variant() -> None:
    seen = set()
    for viewer in VIEWERS:
        for sparse in (False, True):
            for fractional in ((False, True) if viewer == "generic" else (False,)):
                dest = DestinationSettings(viewer=viewer, seg_omit_empty_frames=sparse, seg_fractional=fractional)
                variant = seg_variant(dest)
                assert variant in VARIANTS
                options = seg_options(variant)
                assert options["omit_empty_frames"] is sparse and options["fractional"] is fractional
                assert options["byte_frames"] is (viewer == "ohif")
                seen.add(variant)
    assert seen == set(VARIANTS)  # every variant is reachable, none is left over
    assert seg_variant(DestinationSettings()) == "binary"  # generic PACS keep the BINARY SEG


def test_config_reads_the_viewer_and_names_the_key_when_wrong(tmp_path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(_dest_yaml("viewer: ohif"))
    assert load_config(path).destinations["viewer"].viewer == "ohif"
    path.write_text(_dest_yaml("viewer: weasis"))
    with pytest.raises(ConfigError, match=r"destinations\.viewer\.viewer: 'weasis' is not one of generic, ohif"):
        load_config(path)
    path.write_text(_dest_yaml("viewer: ohif\nseg_fractional: true"))
    with pytest.raises(ConfigError, match=r"destinations\.viewer\.seg_fractional: OHIF does not show a soft"):
        load_config(path)
