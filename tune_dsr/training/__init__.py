"""The training layer: the loop (`trainer`, which knows nothing of Ray), the losses, the paired
augmentation, and the in-loop validation galleries."""

__all__: list[str] = []  # a namespace: import the modules
