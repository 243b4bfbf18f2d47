"""Evaluation: accuracy, and the grid pointing game (paper Sec. 4, "Evaluating explanations")."""
from .accuracy import accuracy_and_confidence, evaluate_accuracy
from .attribution import ATTRIBUTION_METHODS, attribution_maps
from .localisation import attribution_iou, energy_pointing_game, localisation_scores
from .pointing_game import GridSet, build_grids, confident_per_class, grid_pointing_game, pointing_scores
from .report import box_plot, markdown_table, summarise

__all__ = [
    "ATTRIBUTION_METHODS", "GridSet", "accuracy_and_confidence", "attribution_iou", "attribution_maps", "box_plot",
    "build_grids", "confident_per_class", "energy_pointing_game", "localisation_scores",
    "evaluate_accuracy", "grid_pointing_game", "markdown_table", "pointing_scores", "summarise",
]
