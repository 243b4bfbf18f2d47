"""Evaluation: accuracy, and the grid pointing game (paper Sec. 4, "Evaluating explanations"); `run`: an
evaluation of several models with its reports (what train_scripts/evaluate.py calls)."""
from .accuracy import accuracy_and_confidence, evaluate_accuracy
from .attribution import ATTRIBUTION_METHODS, attribution_maps
from .localisation import attribution_iou, energy_pointing_game, localisation_scores
from .pointing_game import GridSet, build_grids, confident_per_class, grid_pointing_game, pointing_scores
from .report import box_plot, markdown_table, summarise
from .run import EvalConfig, EvalError, evaluate_models

__all__ = [
    "ATTRIBUTION_METHODS", "EvalConfig", "EvalError", "GridSet", "accuracy_and_confidence", "attribution_iou", "attribution_maps", "box_plot",
    "build_grids", "confident_per_class", "energy_pointing_game", "localisation_scores",
    "evaluate_accuracy", "evaluate_models", "grid_pointing_game", "markdown_table", "pointing_scores", "summarise",
]
