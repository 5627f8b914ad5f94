"""Using a trained model: restore an image, score a corpus (PSNR, SSIM, LPIPS, MUSIQ), load metric weights.

Where to start reading: ``restore.py`` (the model on one image), then ``corpus_eval.py`` (``omnilv eval``).
"""

from omnilv.lazy import door

__all__, __getattr__ = door(__name__, {
    "Restorer": ".restore", "load_image": ".restore", "save_image": ".restore", "ImageFileError": ".restore",
    "DeviceError": ".restore", "resolve_device": ".restore",
    "evaluate": ".corpus_eval", "table_columns": ".corpus_eval",
    "psnr": ".metrics", "ssim": ".metrics",
    "evaluate_lumen": ".lumen_eval", "baseline_predict": ".lumen_eval", "coco_scores": ".lumen_eval",
    "grounding_accuracy": ".lumen_eval", "ciou": ".lumen_eval", "draw_prediction": ".lumen_eval",
    "LPIPS": ".lpips", "LpipsError": ".lpips", "MUSIQ": ".musiq", "MusiqError": ".musiq",
})
