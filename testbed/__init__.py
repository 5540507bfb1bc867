"""Developer tools: synthetic inputs and real peers for the tests, the benches and the demo.

Why a package of its own: none of this is on the node's data flow. It writes synthetic DICOM
series from NIfTI volumes (series), runs a real Orthanc on loopback as the PACS (orthanc),
starts `dicom-node serve` as a child process (node_process), makes random-weight models
(tiny_model, nnunet_folder), a loopback Ray cluster (ray_cluster), and runs the whole demo
(demo: `dicom-node demo`). tests/ and bench/ use it; dicom_node/ and inference/ never import
it: the `dicom-node` script names `testbed.demo` and `testbed.series` in its command table and
loads them only when those commands run.
"""
