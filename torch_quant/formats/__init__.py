"""Quantized models on disk: ``tq.save`` / ``tq.load`` (``serialization``,
safetensors), Hugging Face ``from_pretrained`` / ``save_pretrained``
(``hf``, imported on use: it needs transformers) and compressed-tensors W8A8
checkpoints (``compressed_tensors``)."""

from .serialization import load, save

__all__ = ["load", "save"]
