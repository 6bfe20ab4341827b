"""The Hydra entry point behind `gradlab train` and `gradlab sweep` (launchers and sweepers included)."""

import hydra


@hydra.main(config_path="pkg://gradlab.conf", config_name="config", version_base="1.3")
def main(cfg) -> float:
    """One job: the runs of its trial_seeds seeds; their mean objective (what a searching sweeper reads)."""
    from gradlab.search import trial

    return trial(cfg)
