"""How legible are real digits to the digit classifier, and how often would 200 of them meet the v2 model's
accuracy target (accuracy >= 0.99 and every class >= 0.95, 20 digits per class)?

The classifier never saw these digits: the 500 held out from the diffusion model (the reference of `edt-lab
eval`) and the other 500 of the classifier's held-out 1,000. A draw takes 20 digits of each class, without
replacement, from one of these sets, like the 200 samples of the targets.

    python benchmarks/real_digit_accuracy.py --json docs/bench/real-digit-accuracy.json
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from edt_lab.classifier import load_digit_classifier
from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from edt_lab.data import diffusion_split, load_digits, unseen_by_judges

sys.path.insert(0, str(Path(__file__).parent))
from options import at_least  # noqa: E402
from settings_sweep import MIN_ACCURACY, MIN_CLASS_ACCURACY  # noqa: E402  (the targets, in the sibling script)


def pass_rate(correct, labels, per_class: int, draws: int, seed: int) -> float:
    """The share of draws of `per_class` digits per class whose accuracy and every class's meet the targets.
    correct, labels (N,): whether the classifier read each digit right, and its class."""
    rng = np.random.default_rng(seed)
    pools = [correct[labels == c] for c in range(10)]
    passed = 0
    for _ in range(draws):
        per_class_right = np.array([rng.choice(pool, per_class, replace=False).sum() for pool in pools])
        passed += (per_class_right.sum() >= MIN_ACCURACY * 10 * per_class - 1e-9
                   and per_class_right.min() >= MIN_CLASS_ACCURACY * per_class - 1e-9)
    return passed / draws


def main(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=at_least(1), default=20)
    parser.add_argument("--draws", type=at_least(1), default=10000)
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")
    digits, labels = load_digits()
    sets = {"diffusion held-out (the reference)": diffusion_split(labels)[1],
            "unseen by the judges (trained on by the diffusion model)": unseen_by_judges(labels)}
    sets["both"] = torch.cat(list(sets.values()))
    fewest = min(int((labels[index] == c).sum()) for index in sets.values() for c in range(10))
    if args.per_class > fewest:  # a draw takes them without replacement
        parser.error(f"--per-class {args.per_class}: a set has only {fewest} digits of some class")
    classifier = load_digit_classifier().eval()
    rows = {}
    for name, index in sets.items():
        with torch.no_grad():
            correct = (classifier(digits[index]).argmax(dim=1) == labels[index]).numpy()
        set_labels = labels[index].numpy()
        per_class = [float(correct[set_labels == c].mean()) for c in range(10)]
        rows[name] = {"digits": len(index), "accuracy": float(correct.mean()), "per_class_accuracy": per_class,
                      "target_pass_rate": pass_rate(correct, set_labels, args.per_class, args.draws, args.seed)}
        print(f"{name}: {len(index)} digits, accuracy {correct.mean():.3f}, worst class {min(per_class):.2f}; "
              f"{args.per_class} per class meet the accuracy target in {rows[name]['target_pass_rate']:.1%} "
              f"of {args.draws} draws")
    if args.json:
        Path(args.json).write_text(json.dumps({"per_class": args.per_class, "draws": args.draws, "seed": args.seed,
                                               "sets": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(run_script(main))
