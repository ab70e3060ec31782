"""Sample quality.

scores: FID, Inception score and precision/recall from features; digits: generated digits judged by the digit
classifier and the realism measures; bootstrap: intervals of those measures; npz: ADM-style .npz files and the
Inception-v3 file; evaluate: `edt-lab eval`'s scoring of an .npz.
"""

from .bootstrap import BOOTSTRAP_MEASURES, bootstrap_digit_measures, judge_digits, measures_of
from .digits import (class_accuracy, classify_digits, digit_labels, digit_metrics, nearest_distances,
                     realism_metrics, reference_split, to_digit_images)
from .evaluate import SFID_NOTE, evaluate_npz, format_table
from .npz import DEFAULT_INCEPTION_PATH, INCEPTION_FILE, inception_outputs, inception_path, load_inception, read_npz
from .scores import feature_statistics, frechet_distance, inception_score, precision_recall

__all__ = ["BOOTSTRAP_MEASURES", "bootstrap_digit_measures", "judge_digits", "measures_of", "class_accuracy",
           "classify_digits", "digit_labels", "digit_metrics", "nearest_distances", "realism_metrics",
           "reference_split", "to_digit_images", "SFID_NOTE", "evaluate_npz", "format_table",
           "DEFAULT_INCEPTION_PATH", "INCEPTION_FILE", "inception_outputs", "inception_path", "load_inception",
           "read_npz", "feature_statistics", "frechet_distance", "inception_score", "precision_recall"]
