"""Evaluation of the product, never imported by it: the robot user (robot.py), the click
evaluation (clicks.py), the comparison-only click methods (baselines.py) and `crossdomainseg eval
clicks` (cli.py). Users run `eval clicks` on their own labelled folders; benchmarks/ import it."""
