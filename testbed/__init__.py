"""Developer tools: synthetic inputs and real peers for the tests, the benches and the demo.

Why a package of its own: none of this is on the node's data flow. It writes synthetic DICOM
series from NIfTI volumes (series), runs a real Orthanc on loopback as the PACS (orthanc),
starts `dicom-node serve` as a child process (node_process), makes random-weight models
(tiny_model, nnunet_folder) and a loopback Ray cluster (ray_cluster). tests/, bench/ and
`dicom-node demo` use it; dicom_node/ and inference/ never import it (the demo command and
`dicom-node make-series` excepted, which load it lazily).
"""
