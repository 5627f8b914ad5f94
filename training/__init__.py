"""OmniLV training, in four rooms, each with one door (its ``__init__``):

- ``training.model``: the network, presets, flow-matching objective, encoders, export format;
- ``training.data``: datasets from a corpus or latent cache, batches, the latent cache;
- ``training.run``: the config, the Ray Train driver, the worker loop, checkpoints, EMA, DeepSpeed config;
- ``training.eval``: restore, eval, metrics (PSNR/SSIM, LPIPS, MUSIQ).

``cli.py`` holds the commands (train, quickstart, cache-latents, restore, eval); ``quickstart.py`` the
end-to-end demo.
"""
