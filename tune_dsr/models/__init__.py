"""The networks: DSR (`dsr`), EdgeFace (`edgeface`) and every checkpoint file (`checkpoints`)."""

__all__: list[str] = []  # a namespace: import the modules
