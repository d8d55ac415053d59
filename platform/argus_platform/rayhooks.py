"""Worker-process setup hooks for the local Ray. Kept free of heavy imports: every Ray worker process
(Ray Data read tasks included) imports this module when it starts."""

import logging


def quiet_placement_group_cleaner() -> None:
    """Ray Train's placement-group cleaner asks the dashboard's state API whether its controller lives
    and, on a local Ray without a dashboard, warns every few seconds that it cannot. Locally the job's
    end frees its placement groups (and Tune trials use `argus_platform.tuning.release`)."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
