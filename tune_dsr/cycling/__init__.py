"""The guide's whole cycle as one resumable run: DSR, EdgeFace fine-tuned on its faces, DSR
retrained against that EdgeFace, and the test persons read by every recogniser.

`cycle` plans it (every input checked before any work) and runs it stage by stage, each stage
in its own folder and never re-run once finished. ``python -m tune_dsr.cycle`` is its command.
"""

__all__: list[str] = []
