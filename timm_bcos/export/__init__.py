"""ONNX / torch.export graphs of a B-cos model and of its explanation, for runtimes without PyTorch."""
from .graphs import CLASSIFIER_OUTPUTS, EXPLAIN_OUTPUTS, ExplainingGraph
from .writer import ExportError, ExportedFiles, export_model

__all__ = ["CLASSIFIER_OUTPUTS", "EXPLAIN_OUTPUTS", "ExplainingGraph", "ExportError", "ExportedFiles", "export_model"]
