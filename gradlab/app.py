"""The Hydra entry point behind a sweep's parallel launchers (launcher=local, slurm): one job, one run."""

import hydra


@hydra.main(config_path="pkg://gradlab.conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    """One job of the launcher's multirun: its run, recorded in its folder."""
    from gradlab.train import train

    train(cfg)
