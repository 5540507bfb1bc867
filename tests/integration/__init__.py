"""Integration tests: the node with real peers (dcmtk, Orthanc, Chromium, Ray, nnU-Net's predictor) over loopback."""
