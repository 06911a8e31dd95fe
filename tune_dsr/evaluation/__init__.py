"""The evaluation layer behind ``evaluate`` and ``compare``: the probe sets and what is loaded
for them (`probes`), the recognition protocols against bicubic upscaling (`protocols`), the text
and CSV report (`report`) and the picture grid (`grid`)."""

__all__: list[str] = []  # a namespace: import the modules
