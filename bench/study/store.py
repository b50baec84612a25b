"""results.json: every number the report is generated from, written and read back."""

import json
import os

RESULTS = "results.json"


def write(out, data):
    """Write ``data`` (meta, config, init profiles, runs, summary) to out/results.json."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, RESULTS)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    return path


def read(out):
    """Read out/results.json back; config dicts keyed by T get int keys again."""
    with open(os.path.join(out, RESULTS)) as f:
        data = json.load(f)
    for lad in data["config"]["ladders"].values():
        lad["steps"] = {int(k): v for k, v in lad["steps"].items()}
    return data
