"""What a training worker eats: datasets from a corpus or a latent cache, batches, and their encoding.

Where to start reading: ``datasets.py`` (what a run reads), then ``batches.py`` (rows -> model inputs). The latent
cache is ``latent_cache.py`` (writer), ``latent_read.py`` (reader) and ``latent_format.py`` (what both agree on).
"""

from omnilv.lazy import door

__all__, __getattr__ = door(__name__, {
    "make_datasets": ".datasets",
    "Prepare": ".batches", "iter_batches": ".batches", "collate": ".batches", "to_tensor": ".batches",
    "cache_latents": ".latent_cache", "CacheResult": ".latent_cache",
    "LatentCacheError": ".latent_format", "load_npy": ".latent_format", "npy_bytes": ".latent_format",
    "training_dataset": ".latent_read", "read_latents": ".latent_read", "load_meta": ".latent_read",
    "check_fits": ".latent_read",
    "LumenPrepare": ".lumen_batches",
})
