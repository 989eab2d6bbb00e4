"""Backends that run one seed attempt: a Ray node (torchrun) or a RunPod pod."""
