"""Ray Data jobs: the corpus schema, sources, the build, read-back and training ingest.

This is the package's one door: other packages import only the names below (``from pipelines import Store``).
Where to start reading: ``schema.py`` (the sample, the manifest), then ``build.py`` (the corpus build), then
``ingest.py`` (what a training worker reads).
"""

from omnilv.lazy import door

__all__, __getattr__ = door(__name__, {
    # the config kit and the corpus config
    "ConfigError": ".configfile", "Section": ".configfile", "load_config": ".configfile",
    "apply_overrides": ".configfile", "config_digest": ".configfile", "find_config": ".configfile",
    "CorpusConfig": ".config", "S3Config": ".config", "load_corpus_config": ".config",
    # the sample schema
    "INPUT": ".schema", "TARGET": ".schema", "TXT": ".schema", "JSON": ".schema", "REF_INPUT": ".schema",
    "REF_TARGET": ".schema", "MANIFEST": ".schema", "Manifest": ".schema", "ShardRecord": ".schema",
    "Sample": ".schema", "SchemaError": ".schema", "shard_name": ".schema", "encode_png": ".schema",
    "decode_png": ".schema",
    # storage: local folders and s3:// prefixes behind one interface
    "Store": ".storage", "StorageError": ".storage", "s3_options": ".storage", "with_retries": ".storage",
    "join": ".storage", "inside": ".storage", "is_remote": ".storage", "exists": ".storage",
    "read_text": ".storage", "upload_dir": ".storage", "local_copy": ".storage", "filesystem": ".storage",
    "arrow_filesystem": ".storage", "arrow_path": ".storage",
    # writing and reading shards
    "tar_bytes": ".build", "build_corpus": ".build", "BuildError": ".build",
    "ensure_ray": ".runtime", "RayUnavailable": ".runtime",
    "load_manifest": ".read", "shard_urls": ".read", "iter_samples": ".read", "ReadStats": ".read",
    # pictures a person looks at
    "labelled_sheet": ".sheets",
    # training ingest
    "read_corpus": ".ingest", "crop_pair": ".ingest", "RowDecoder": ".ingest", "WhitelistDecoder": ".ingest",
    "SkipLedger": ".ingest",
    "intact_shards": ".ingest", "read_shards": ".ingest",
    # annotated sources (Lumen): COCO json read/written, and the sample's "annotations" both ways
    "CocoSet": ".coco", "CocoError": ".coco", "write_coco": ".coco", "annotations_to_json": ".coco",
    "annotations_from_json": ".coco",
    # the embedded default dataset of Lumen: shapes on the bundled photographs, as COCO json
    "make_scenes": ".scenes",
    "ScenesResult": ".scenes",
})
