"""Command-line arguments shared by the scripts that write an experiment task from
../shared/datasets: the output file, and where the datasets are (an argument, else
SW2S_DATASETS, else ../shared/datasets beside the repository)."""
import os
import sys


def out_and_datasets(usage):
    """(OUT, DATASETS_DIR) from `script OUT [DATASETS_DIR]`; exits with `usage` without OUT."""
    if len(sys.argv) < 2:
        sys.exit(usage)
    here = os.path.dirname(os.path.abspath(__file__))
    data = sys.argv[2] if len(sys.argv) > 2 else os.environ.get(
        "SW2S_DATASETS", os.path.join(here, "..", "..", "shared", "datasets"))
    return sys.argv[1], data
