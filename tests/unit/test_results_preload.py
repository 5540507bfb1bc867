"""results.build.preload_encoders: what highdicom reads on the first object it makes is read at start."""
from __future__ import annotations

from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map

from dicom_node.results.build import preload_encoders


def test_preload_encoders_reads_highdicoms_tables_of_the_standard():
    preload_encoders()
    # highdicom keeps them per process (lru_cache): the first SEG after a start no longer reads them
    assert get_module_attribute_map.cache_info().currsize == 1
    assert get_iod_module_map.cache_info().currsize == 1
