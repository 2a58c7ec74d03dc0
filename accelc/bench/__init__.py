"""`accelc bench`: the artifact against its peers (ONNX Runtime, torch.compile, eager) in one run."""
