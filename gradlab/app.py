"""The Hydra entry point behind `gradlab train` and `gradlab sweep` (launchers and sweepers included)."""

import hydra


@hydra.main(config_path="pkg://gradlab.conf", config_name="config", version_base="1.3")
def main(cfg) -> dict:
    from gradlab.train import train

    return train(cfg)
