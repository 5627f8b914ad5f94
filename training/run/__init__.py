"""Running a training stage: the Ray Train driver, the DeepSpeed worker loop, checkpoints, EMA.

Where to start reading: ``driver.py`` (what ``omnilv train`` starts), then ``worker.py`` (one screen: the loop
every Ray Train worker runs), then ``checkpoint.py``.
"""

from omnilv.lazy import door

__all__, __getattr__ = door(__name__, {
    "run_stage": ".driver", "TrainResult": ".driver", "make_trainer": ".driver",
    "deepspeed_config": ".ds_config",
    "EMA": ".ema", "RankEMA": ".ema",
    "export_dir": ".export_final",
    "MARKER": ".checkpoint", "is_complete": ".checkpoint", "resume_plan": ".checkpoint",
    "committed_step": ".checkpoint",
    "build_flow": ".assemble",
    "absolute": ".record", "check_rerun": ".record", "RECORD": ".record",
    "build_model": ".assemble",
})
