"""The evaluation tool built on the library: ``python -m torch_quant.eval``
(docs/evaluation.md). Nothing here is imported by ``import torch_quant``.

Modules, each importing only those before it: ``windows`` (the window plan,
scores, perplexity), ``corpus`` (Jane Austen's novels), ``inputs`` (models,
text, calibration batches), ``report`` (results, table, plot), ``peers``
(quantize_dynamic and torchao as modes), ``modes`` (each mode's model),
``digits`` (the relu-digits task), ``cli`` (the command line).
"""
